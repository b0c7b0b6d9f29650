"""Submit a job to a running metatune service and follow it, with plain httpx.

    METATUNE_TOKEN=s3cret python examples/rest_client.py examples/job-mlp-tpe.json [http://127.0.0.1:8000]
"""

import json
import os
import sys

import httpx

spec = json.load(open(sys.argv[1]))
server = sys.argv[2] if len(sys.argv) > 2 else "http://127.0.0.1:8000"
client = httpx.Client(base_url=server, headers={"Authorization": f"Bearer {os.environ['METATUNE_TOKEN']}"})
job = client.post("/v1/jobs", json=spec)
if job.status_code != 202:
    sys.exit(f"{job.status_code}: {job.json()['detail']}")
job_id = job.json()["id"]
with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=None) as events:  # server-sent events
    for line in events.iter_lines():
        if line.startswith("data: "):
            data = json.loads(line[6:])
            if "number" in data:
                print(f"trial {data['number']}: lr {data['lr']:.4g} momentum {data['momentum']:.3f} value {data['value']}")
            else:
                print("status:", data["status"])
print(json.dumps(client.get(f"/v1/jobs/{job_id}").json()["best_trial"], indent=2))
