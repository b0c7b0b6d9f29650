"""A small REST client for the service (httpx): submit, follow, list, compare."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Iterator

import httpx

from metatune.errors import UserError
from metatune_service.status import JobStatus


class ClientError(UserError):
    """The server refused the request (4xx) or could not be reached; ``str()`` says why."""


class Client:
    """``Client(url, token)``; defaults from ``METATUNE_SERVER`` and ``METATUNE_TOKEN``."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0) -> None:
        self.url = (url or os.environ.get("METATUNE_SERVER") or "http://127.0.0.1:8000").rstrip("/")
        token = token or os.environ.get("METATUNE_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise ClientError(f"cannot reach the metatune server at {self.url} ({type(error).__name__}): "
                              f"start it with `metatune serve` or pass --server") from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            if isinstance(detail, list):  # pydantic's list of errors: field and message
                detail = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', [])[1:])}: {e.get('msg')}" for e in detail)
            raise ClientError(f"{response.status_code} from {method} {path}: {detail}")
        return response.json() if response.headers.get("content-type", "").startswith("application/json") else response

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/v1/jobs", json=spec)

    def job(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/jobs/{job_id}")

    def jobs(self, **filters: Any) -> dict[str, Any]:
        return self.request("GET", "/v1/jobs", params={k: v for k, v in filters.items() if v is not None})

    def events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event, data) from the job's server-sent events until it ends."""
        try:
            with self.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ClientError(f"{response.status_code}: {response.text}")
                event = None
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event:
                        yield event, json.loads(line[6:])
        except httpx.TransportError as error:
            raise ClientError(f"lost the event stream from {self.url}: {error}") from None

    def compare(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/v1/comparisons", json=body)

    def comparison(self, comparison_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/comparisons/{comparison_id}")

    def wait_comparison(self, comparison_id: str, on_progress: Callable[[dict], None] | None = None,
                        interval: float = 1.0, table_timeout: float = 600.0) -> dict[str, Any]:
        """The comparison once every job has ended and, if one succeeded, a worker has built its
        table and plots (or ``table_timeout`` seconds after the end without them)."""
        ended = None
        while True:
            state = self.comparison(comparison_id)
            if on_progress is not None:
                on_progress(state)
            status = JobStatus(state["status"])
            if status.final:
                ended = time.monotonic() if ended is None else ended
                if (state["table"] is not None or status is not JobStatus.SUCCEEDED
                        or time.monotonic() - ended > table_timeout):
                    return state
            time.sleep(interval)

    def download(self, path: str, target: str) -> str:
        response = self.request("GET", path)
        with open(target, "wb") as out:
            out.write(response.content)
        return target
