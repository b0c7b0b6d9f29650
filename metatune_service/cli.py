"""The service's commands: ``serve``, ``worker``, ``submit``, ``jobs``, ``db upgrade``,
``db export-optuna``, ``token create``, and ``compare --server``.

``metatune`` finds this module through the ``metatune.commands`` entry point (see
:mod:`metatune.cli`): it calls :func:`add_commands` and, for ``compare --server``,
:func:`compare_on_server`. The service's own modules are imported inside the commands, so
that listing them costs nothing. User mistakes are :class:`metatune.errors.UserError`s: one
line on stderr, exit code 2, and so are settings it cannot use (a ``METATUNE_*`` value that
does not parse, a database it cannot open, or one at a revision it does not know).

``serve`` and ``worker`` end on SIGTERM or SIGINT with exit code 0: a running job is handed back
to the queue (its lease released: another worker claims it at once), the database's connections
closed, and the embedded Ray stopped with its session folder removed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import IO, TYPE_CHECKING, Callable, Iterator

from metatune.errors import UserError
from metatune_service.status import JobStatus

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from metatune_service.client import Client
    from metatune_service.core.config import Settings
    from metatune_service.core.db import Database


def bounded_int(what: str, low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer ``low``–``high``, else argparse exits 2 with one line
    naming ``what`` and the range (a port past 65535 used to make uvicorn fail after the URL
    was printed)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} (an integer {low}-{high})") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not {what} ({low}-{high})")
        return value

    parse.__name__ = what  # argparse names the type in its own messages
    return parse


port_number = bounded_int("a port number", 1, 65535)
MAX_PROCESSES = 64
"""The most API processes ``serve --processes`` starts."""
process_count = bounded_int("a number of API processes", 1, MAX_PROCESSES)


def add_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="run the REST API with an embedded worker")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=port_number, default=8000, help="TCP port, 1-65535 (default 8000)")
    serve.add_argument("--no-worker", action="store_true", help="API only (run `metatune worker` apart)")
    serve.add_argument("--processes", type=process_count, default=1,
                       help="API processes sharing the port (default 1; the embedded worker, if any, runs in "
                            "the parent): one process answers with one core at most")
    serve.set_defaults(handler=serve_command)
    worker = commands.add_parser("worker", help="run jobs from the database (several may share one)")
    worker.set_defaults(handler=worker_command)
    submit = commands.add_parser("submit", help="submit a job spec (JSON file) to the server")
    submit.add_argument("spec", help="path to a JSON job spec (see examples/)")
    submit.add_argument("--wait", action="store_true", help="follow the job with a progress bar until it ends")
    _client_arguments(submit)
    submit.set_defaults(handler=submit_command)
    jobs = commands.add_parser("jobs", help="list your jobs on the server")
    jobs.add_argument("--status", default=None, choices=[s.value for s in JobStatus])
    jobs.add_argument("--limit", type=int, default=20)
    _client_arguments(jobs)
    jobs.set_defaults(handler=jobs_command)
    db = commands.add_parser("db", help="database schema; export jobs as Optuna studies")
    db.add_argument("action", choices=["upgrade", "current", "export-optuna"])
    db.add_argument("--storage", default=None, help="export-optuna: an Optuna storage URL (default "
                    "METATUNE_OPTUNA_STORAGE, else beside the database)")
    db.add_argument("--job", action="append", default=None, metavar="ID",
                    help="export-optuna: this job only (repeatable; default every job that has started)")
    db.set_defaults(handler=db_command)
    token = commands.add_parser("token", help="API tokens")
    token.add_argument("action", choices=["create", "list", "revoke"],
                       help="create: a new token for --owner (shown once); list: stored tokens (of --owner), "
                            "never their values; revoke: token --id, or every token of --owner")
    token.add_argument("--owner", default=None)
    token.add_argument("--id", type=int, default=None, dest="token_id", help="the token to revoke (from list)")
    token.set_defaults(handler=token_command)


def _client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=None, help="service URL (default METATUNE_SERVER or http://127.0.0.1:8000)")
    parser.add_argument("--token", default=None, help="API token (default METATUNE_TOKEN)")


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    from metatune_service.core.config import load_settings
    from metatune_service.core.migrations import prepare
    from metatune_service.main import create_app

    settings = load_settings()
    db = open_database(settings)
    try:  # an outdated database is refused here, as one line, before the server starts
        prepare(db.engine, db.url)
        if no_token(db, settings):
            print(NO_TOKENS, file=sys.stderr, flush=True)
    finally:
        db.dispose()
    with embedded_ray(settings, start=not args.no_worker):
        exit_on_signals()  # what uvicorn re-raises once it has shut down: exit code 0
        processes = f", {args.processes} processes" if args.processes > 1 else ""
        print(f"metatune serve: http://{args.host}:{args.port} (docs at /docs), database "
              f"{_shown(settings.database_url)}, Optuna studies {_optuna_shown(settings)}{processes}", flush=True)
        if args.processes == 1:
            uvicorn.run(create_app(settings, embedded_worker=not args.no_worker), host=args.host, port=args.port,
                        log_level="warning", timeout_graceful_shutdown=GRACEFUL_SECONDS)
        else:
            serve_processes(settings, args)
    return 0


def serve_processes(settings: Settings, args: argparse.Namespace) -> None:
    """``args.processes`` API processes on one listening socket (uvicorn's supervisor: the
    kernel spreads connections over them, and one that dies is started again), each building
    its app from the same ``METATUNE_*`` environment (:func:`metatune_service.main.app_from_environment`);
    the embedded worker runs in this, the parent, process, and hands back its job when the
    supervisor has stopped the API processes."""
    import uvicorn

    from metatune_service.worker import start_embedded

    worker = db = None
    if not args.no_worker:
        db = open_database(settings)
        worker = start_embedded(db, settings)
    try:
        uvicorn.run("metatune_service.main:app_from_environment", factory=True, workers=args.processes,
                    host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=GRACEFUL_SECONDS)
    finally:
        if worker is not None and db is not None:
            thread, stop = worker
            stop.set()
            thread.join(timeout=30)
            db.dispose()


GRACEFUL_SECONDS = 5
"""How long ``serve`` waits, on SIGTERM or SIGINT, for open requests (event streams) to end
before it closes them; the embedded worker then hands back its job (``main.create_app``)."""


def worker_command(args: argparse.Namespace) -> int:
    from metatune_service.core.config import load_settings
    from metatune_service.core.migrations import prepare
    from metatune_service.worker import Worker

    settings = load_settings()
    db = open_database(settings)
    try:
        prepare(db.engine, db.url)
        with embedded_ray(settings, start=True):
            stop = stop_on_signals()
            worker = Worker(db, settings)
            print(f"metatune worker {worker.name}: database {_shown(settings.database_url)}, Optuna studies "
                  f"{_optuna_shown(settings)}", flush=True)
            worker.run(stop)  # on stop, a running job is handed back to the queue (its lease released)
    finally:
        db.dispose()
    return 0


def exit_on_signals() -> None:
    """SIGTERM and SIGINT end the process with exit code 0 (uvicorn replaces these handlers
    while it serves, shuts down gracefully, then raises the signal again: it lands here). Set
    after :func:`~metatune.distributed.ensure_ray`, whose ``ray.init`` makes SIGTERM exit 15."""
    def leave(signum: int, frame: object) -> None:
        raise SystemExit(0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, leave)


def stop_on_signals() -> threading.Event:
    """An event that the first SIGTERM or SIGINT sets (the worker hands back its job and ends,
    exit code 0); a second one ends the process at once (its Ray ends with it)."""
    stop = threading.Event()

    def handle(signum: int, frame: object) -> None:
        if stop.is_set():
            raise SystemExit(128 + signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handle)
    return stop


@contextmanager
def embedded_ray(settings: Settings, *, start: bool) -> Iterator[None]:
    """While the command runs, when ``start``: the embedded Ray (on 127.0.0.1 unless
    METATUNE_RAY_HOST says otherwise); then Ray stopped (its session folder removed) and Ray
    Tune's result folders under ``output_dir/ray`` removed once no other serve or worker on
    this machine uses them (:func:`ray_results`)."""
    if not start:
        yield
        return
    from metatune.distributed import ensure_ray, shutdown

    with ray_results(settings.output_dir / "ray"):
        try:  # before uvicorn's signal handlers and ours: ray.init replaces SIGTERM's
            try:
                ensure_ray(settings.ray_address, host=settings.ray_host)
            except SystemExit as leaving:  # SIGTERM while Ray starts: ray.init's handler exits 15
                raise SystemExit(0 if leaving.code == signal.SIGTERM else leaving.code) from None
            yield
        finally:
            shutdown()


@contextmanager
def ray_results(folder: Path) -> Iterator[None]:
    """Hold ``folder`` (Ray Tune's result folders) for as long as the block runs: a shared
    ``flock`` on ``folder.lock``, which the kernel drops when a process ends, killed or not.
    Whoever finds no other holder (at start: what a killed process left; at the end: the last
    one out) removes the folder. Nothing reads it once a job has ended (its trials are in the
    database); without ``fcntl`` the folder is left alone."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        yield
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "a") as lock:
        _remove_unless_held(lock, folder, fcntl)
        fcntl.flock(lock, fcntl.LOCK_SH)
        try:
            yield
        finally:
            _remove_unless_held(lock, folder, fcntl)


def _remove_unless_held(lock: IO[str], folder: Path, fcntl: ModuleType) -> None:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another serve or worker uses the folder
        return
    shutil.rmtree(folder, ignore_errors=True)


def checked_url(settings: Settings) -> URL:
    """The settings' database URL, parsed, with its driver loaded and, for a SQLite file, its
    folder there; else a :class:`UserError` naming METATUNE_DATABASE_URL (one line)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(settings.database_url)
        url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ImportError, ValueError) as error:
        raise UserError(f"METATUNE_DATABASE_URL is not a database URL this metatune can open "
                        f"({_first_line(error)}): use sqlite:///PATH or "
                        f"postgresql://USER[:PASSWORD]@HOST[:PORT]/NAME") from None
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        folder = Path(url.database).parent
        if not folder.is_dir():
            shown = url.render_as_string(hide_password=True)
            raise UserError(f"METATUNE_DATABASE_URL={shown}: the folder {folder} does not exist (create it, "
                            f"or point METATUNE_DATABASE_URL at a file in a folder that does)")
    return url


def open_database(settings: Settings) -> Database:
    """The settings' database, once a connection to it has been made. A URL that does not
    parse, an unknown or missing driver, a SQLite file in a folder that does not exist
    (:func:`checked_url`), or a server that does not answer is a :class:`UserError` naming
    METATUNE_DATABASE_URL (one line), not a traceback."""
    from sqlalchemy.exc import DBAPIError

    from metatune_service.core.db import Database

    shown = checked_url(settings).render_as_string(hide_password=True)
    db = Database(settings.database_url)
    try:
        with db.engine.connect():
            pass
    except DBAPIError as error:
        db.dispose()
        raise UserError(f"cannot open the database METATUNE_DATABASE_URL={shown}: "
                        f"{_first_line(error.orig)}") from None
    return db


def _first_line(error: BaseException | None) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


NO_TOKENS = ("metatune serve: warning: no API token is set (METATUNE_API_TOKENS) or stored: every request "
             "gets a 401 until `metatune token create --owner NAME` makes one")


def no_token(db: Database, settings: Settings) -> bool:
    """Whether no request could be let in: no METATUNE_API_TOKENS and no stored, unrevoked token."""
    from metatune_service import crud

    return not settings.tokens() and crud.count_tokens(db) == 0


def sqlite_file_missing(url: str) -> str | None:
    """The path of a SQLite database file that does not exist yet, else None (an in-memory
    database, another kind of database, or a file that exists)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return None if Path(parsed.database).exists() else parsed.database


def db_command(args: argparse.Namespace) -> int:
    from metatune_service.core.config import load_settings
    from metatune_service.core.migrations import current_revision, head_revision, known, refuse_newer, upgrade

    settings = load_settings()
    checked_url(settings)
    missing = sqlite_file_missing(settings.database_url)
    if args.action != "upgrade" and missing is not None:  # reading must not create an empty database
        raise UserError(f"no database at {missing}: `metatune db upgrade` or `metatune serve` creates it")
    db = open_database(settings)
    try:
        if args.action == "export-optuna":
            return export_optuna(db, load_settings(optuna_storage=args.storage) if args.storage else settings,
                                 args.job)
        if args.action == "upgrade":
            refuse_newer(db.engine)
            upgrade(db.url)
        current = current_revision(db.engine)
        newer = "; newer than this metatune" if current is not None and not known(current) else ""
        shown = _shown(settings.database_url)
        print(f"database {shown} at revision {current} (head {head_revision()}{newer})")
    finally:
        db.dispose()
    return 0


def export_optuna(db: Database, settings: Settings, job_ids: list[str] | None) -> int:
    """``metatune db export-optuna``: write the jobs' studies (those missing, and the trials
    they lack) and print how to open them."""
    from metatune_service import crud, optuna_storage
    from metatune_service.core.migrations import prepare

    url = optuna_storage.storage_url(settings)
    if url is None:
        raise UserError("the Optuna export is off here (METATUNE_OPTUNA_STORAGE=off, or a database with no "
                        "default place): pass --storage URL")
    prepare(db.engine, db.url)
    missing = [job_id for job_id in job_ids or () if crud.get_job(db, job_id=job_id) is None]
    if missing:
        raise UserError(f"no job {', '.join(missing)} in {_shown(settings.database_url)}")
    studies, trials = optuna_storage.export_jobs(db, url, job_ids)
    print(f"wrote {studies} stud{'y' if studies == 1 else 'ies'} ({trials} new trial{'' if trials == 1 else 's'}) "
          f"to {optuna_storage.shown(url)}")
    print(f"open them: optuna-dashboard {shlex.quote(optuna_storage.shown(url))}")
    return 0


def token_command(args: argparse.Namespace) -> int:
    from metatune_service import crud
    from metatune_service.core.config import load_settings
    from metatune_service.core.migrations import prepare

    if args.action == "create" and not args.owner:
        raise UserError("metatune token create needs --owner NAME")
    if args.action == "revoke" and (args.owner is None) == (args.token_id is None):
        raise UserError("metatune token revoke needs --id N (from `metatune token list`) or --owner NAME")
    db = open_database(load_settings())
    try:
        prepare(db.engine, db.url)
        if args.action == "create":
            print(crud.create_token(db, owner=args.owner))
            print(f"(the token of {args.owner!r}: it is shown once and stored only as a hash)", file=sys.stderr)
        elif args.action == "list":
            print(shown_tokens(crud.list_tokens(db, owner=args.owner)))
        else:
            revoked = crud.revoke_tokens(db, token_id=args.token_id, owner=args.owner)
            which = f"token {args.token_id}" if args.token_id is not None else f"the tokens of {args.owner!r}"
            print(f"revoked {revoked} ({which}; already revoked or missing ones are not counted)")
    finally:
        db.dispose()
    return 0


def shown_tokens(rows: list) -> str:
    """A table of stored tokens: id, owner, state, created, last used (UTC). No token or hash."""
    lines = [f"{'id':>4}  {'owner':<20} {'state':<8} {'created (UTC)':<20} last used (UTC)"]
    for row in rows:
        used = row.last_used_at.strftime("%Y-%m-%d %H:%M:%S") if row.last_used_at else "never"
        lines.append(f"{row.id:>4}  {row.owner[:20]:<20} {'revoked' if row.revoked else 'active':<8} "
                     f"{row.created_at.strftime('%Y-%m-%d %H:%M:%S'):<20} {used}")
    return "\n".join(lines)


def submit_command(args: argparse.Namespace) -> int:
    from metatune_service.client import Client

    try:
        with open(args.spec) as source:
            spec = json.load(source)
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read the job spec {args.spec}: {error}") from None
    client = Client(args.server, args.token)
    job = client.submit(spec)
    print(f"job {job['id']} {job['status']}: {job['method']} on {job['objective']}, budget {job['budget']:g}")
    if args.wait:
        job = follow(client, job)
        best = job["best_trial"]
        shown = f", {shown_best(best)}" if best else ""
        print(f"job {job['id']} {job['status']}: {job['trials']} trials, {job['gradient_evals']:.0f} gradient "
              f"evaluations" + shown + (f", error: {job['error']}" if job["error"] else ""))
        return 0 if job["status"] == JobStatus.SUCCEEDED else 1
    return 0


def shown_best(best: dict) -> str:
    """A job's best trial as printed: its point (with a warm-up + cosine point's fractions) and value.

    Example:
        >>> shown_best({"lr": 0.5, "momentum": 0.9, "value": 0.25,
        ...             "schedule": {"shape": "warmup-cosine", "warmup": 0.1, "final": 0.01}})
        'best lr 0.5 momentum 0.900 (warmup-cosine: warmup 0.100, final 0.01) value 0.25'
    """
    shape = best.get("schedule")
    fractions = f"({shape['shape']}: warmup {shape['warmup']:.3f}, final {shape['final']:.3g}) " if shape else ""
    return (f"best lr {shown_hyper(best['lr'], '.4g')} momentum {shown_hyper(best['momentum'], '.3f')} "
            f"{fractions}value {best['value']:.4g}")


def shown_hyper(value: float | list[float] | dict[str, float] | dict[str, list[float]], spec: str) -> str:
    """η or β as printed: one number, ``[knot, …]`` for a schedule's knots, or ``{prefix: …}``
    of those per group.

    Example:
        >>> shown_hyper({"0": 0.1, "2": 0.25}, ".2f"), shown_hyper(0.5, ".1f"), shown_hyper({"0": [0.1, 0.2]}, ".1f")
        ('{0: 0.10, 2: 0.25}', '0.5', '{0: [0.1, 0.2]}')
    """
    if isinstance(value, dict):
        return "{" + ", ".join(f"{group}: {shown_hyper(v, spec)}" for group, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:{spec}}" for v in value) + "]"
    return f"{value:{spec}}"


def follow(client: Client, job: dict) -> dict:
    """A progress bar over the job's gradient evaluations, fed by its event stream."""
    from tqdm import tqdm

    with tqdm(total=job["budget"], unit="grad", unit_scale=True, desc=job["method"]) as bar:
        for event, data in client.events(job["id"]):
            if event == "trial":
                bar.update(max(data["cumulative_evals"] - bar.n, 0))
                if data.get("value") is not None:
                    bar.set_postfix_str(f"trial {data['number']} value {data['value']:.4g}")
            elif event == "status":
                bar.set_description(f"{job['method']} {data['status']}")
    return client.job(job["id"])


def jobs_command(args: argparse.Namespace) -> int:
    from metatune_service.client import Client

    page = Client(args.server, args.token).jobs(status=args.status, limit=args.limit)
    print(f"{'id':32s}  {'status':9s}  {'method':8s}  {'objective':12s}  trials  best value")
    for job in page["items"]:
        best = job["best_trial"]["value"] if job["best_trial"] else None
        print(f"{job['id']:32s}  {job['status']:9s}  {job['method']:8s}  {job['objective']:12s}  {job['trials']:6d}  "
              f"{'' if best is None else f'{best:.4g}'}")
    print(f"({len(page['items'])} of {page['total']})")
    return 0


def compare_on_server(args: argparse.Namespace, params: dict, methods: list[str]) -> int:
    """``metatune compare … --server URL``: the same comparison, run by the service."""
    from metatune_service.client import Client

    with Client(args.server, args.token) as client:
        return _compare_with(client, args, params, methods)


def _compare_with(client: Client, args: argparse.Namespace, params: dict, methods: list[str]) -> int:
    from tqdm import tqdm

    body = {"objective": args.objective, "objective_params": params, "methods": methods, "seeds": args.seeds,
            "budget": {"gradient_evals": args.budget}, "resources": {"cpu": args.cpu, "gpu": args.gpu},
            "concurrency": args.concurrency, "space": {"groups": args.groups, "schedule": args.schedule.to_json()}}
    if args.metagrad_mode and "metagrad" in methods:
        body["options"] = {"metagrad": {"mode": args.metagrad_mode}}
    created = client.compare(body)
    total = sum(job["budget"] for job in created["jobs"])
    print(f"comparison {created['id']}: {len(created['jobs'])} jobs on {client.url}")
    with tqdm(total=total, unit="grad", unit_scale=True, desc="compare") as bar:
        def progress(state: dict) -> None:
            done = sum(j["budget"] if JobStatus(j["status"]).final else j["gradient_evals"]
                       for j in state["jobs"])
            bar.update(max(done - bar.n, 0))
            shown = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED)
            counts = {s: sum(j["status"] == s for j in state["jobs"]) for s in shown}
            bar.set_postfix_str(", ".join(f"{s}: {n}" for s, n in counts.items()))

        state = client.wait_comparison(created["id"], progress)
    if state["table"] is None and state["status"] == JobStatus.SUCCEEDED:
        raise UserError(f"comparison {state['id']} ended, but no worker built its table: is `metatune serve` "
                        f"(without --no-worker) or a `metatune worker` running on its database?")
    if state["table"] is None:
        errors = {j["error"] for j in state["jobs"] if j["error"]}
        raise UserError(f"comparison {state['id']} ended {state['status']} without results: {errors}")
    print(state["table"]["markdown"])
    os.makedirs(args.out, exist_ok=True)
    written = [client.download(path, os.path.join(args.out, f"compare-{args.objective}-{path.rsplit('/', 1)[-1]}"))
               for path in state["plots"]]
    print("plots: " + ", ".join(written) + f" (also at {client.url}{state['plots'][0]})")
    return 0


def _optuna_shown(settings: Settings) -> str:
    """Where the jobs' Optuna studies go, as printed (``off`` when nowhere), once Optuna's schema
    is ready there (:func:`metatune_service.optuna_storage.prepare`)."""
    from metatune_service.optuna_storage import prepare

    url = prepare(settings)
    return "off" if url is None else _shown(url)


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
