"""``saft serve``: the whole service in one command, the API in this process and one worker beside it.

It composes the API and the worker, so it lives here, above both (they never import each other).
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from saft_core.cli import Subcommands
from saft_service.service_commands import safe_url, settings_from_env
from worker.worker_command import POOLS

if TYPE_CHECKING:
    import uvicorn

    from saft_service.settings import Settings

log = logging.getLogger("saft_cli.serve")

DEFAULT_TENANT = "default"


def _activate_line() -> str | None:
    """``. .venv/bin/activate`` when this runs from a virtual environment whose ``saft`` is not on PATH (as
    under ``make run``), so that another shell can use ``saft`` and the client; else None."""
    if sys.prefix == sys.base_prefix:
        return None
    bin_dir = Path(sys.prefix) / "bin"
    on_path = shutil.which("saft")
    if on_path and Path(on_path).resolve().parent == bin_dir.resolve():
        return None
    activate = bin_dir / "activate"
    try:
        shown = activate.relative_to(Path.cwd())
    except ValueError:
        shown = activate
    return f". {shown}"


def banner(settings: Settings, host: str, port: int, key: str | None, *, worker_ready: bool = True) -> str:
    """What ``saft serve`` prints once the API and the worker are up: where it runs, the key, and the lines to
    paste into another shell, last (the key on the export line)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{shown}:{port}"
    where = (
        f"embedded default (SQLite for the store and the queue, under {settings.resolved_data_dir})"
        if settings.embedded_database and settings.embedded_broker
        else f"database {safe_url(settings.sqlalchemy_url)}, broker {safe_url(settings.celery_broker_url)}"
    )
    lines = ["", f"SAFT service on the {where}"]
    if not worker_ready:
        lines.append("The worker is still starting: jobs wait in the queue until it is ready.")
    lines += [f"Console: {url}/console", f"OpenAPI docs: {url}/docs"]
    if key is None:
        lines.append(
            f"Tenant '{DEFAULT_TENANT}' already has a key (keys are shown once); print a new one with "
            f"`saft serve --new-key` or `saft keys create --tenant {DEFAULT_TENANT}`"
        )
    else:
        lines.append(f"API key (tenant '{DEFAULT_TENANT}', shown once): {key}")
    lines += [f"URL: {url}", "In another shell, for `saft` and the client:"]
    if (activate := _activate_line()) is not None:
        lines.append(f"  {activate}")
    lines.append(f"  export SAFT_URL={url}" + (f" SAFT_API_KEY={key}" if key else ""))
    return "\n".join(lines)


def _announce(
    server: uvicorn.Server, worker: subprocess.Popen[bytes], ready_fd: int, timeout: float, text: Callable[[bool], str]
) -> None:
    """Print ``text`` once the API listens and the worker is ready (or after ``timeout`` seconds of waiting for
    it), so that it comes after the worker's start-up output; nothing if the service stops first."""
    deadline = time.monotonic() + timeout
    ready = False
    with os.fdopen(ready_fd, "rb") as pipe:
        while not ready and worker.poll() is None and time.monotonic() < deadline:
            if select.select([pipe], [], [], 0.5)[0]:
                ready = pipe.readline() == b"ready\n"
                if not ready:  # the worker closed the pipe without a word: it is exiting
                    break
    if ready:
        time.sleep(0.3)  # Celery logs its own "ready." line just after telling us: let it come first
    while not server.started:
        if server.should_exit or worker.poll() is not None:
            return
        time.sleep(0.05)
    if worker.poll() is None and not server.should_exit:
        print(text(ready), flush=True)


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Stop the worker: TERM to its main process (Celery's warm shutdown lets a running job finish), then,
    after ``grace`` seconds, KILL its whole process group. A job cut off that way goes back to the queue at
    the next ``saft serve`` and resumes from its last snapshot (see ``jobs.recover_after_restart``)."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        log.warning("worker did not stop within %.0f s; killing it", grace)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.main import create_app
    from saft_service import db, jobs, keys
    from saft_service.dispatch import dispatch

    settings = settings_from_env()
    # 1. Schema, a key for the default tenant, and jobs a previous run left behind.
    db.upgrade(settings, quiet=True)
    with db.session_scope(settings) as session:
        key = None
        if args.new_key or not keys.tenant_has_keys(session, DEFAULT_TENANT):
            _, key = keys.create_key(session, tenant_name=DEFAULT_TENANT)
        queued = jobs.recover_after_restart(session, max_attempts=settings.max_attempts)
    # 2. One worker process (its own process group, so stopping it also stops its pool child); it writes to
    #    the pipe once it is ready for jobs. It ends with this process however this one ends (a kill -9, an OOM
    #    kill): a restart never finds an old worker on the queue beside the new one.
    ready_r, ready_w = os.pipe()
    worker = subprocess.Popen(
        [sys.executable, "-m", "saft_cli.serve_worker", str(ready_w), "--pool", args.pool,
         "--exit-with-parent", str(os.getpid())],
        start_new_session=True,
        stdout=sys.stderr,  # keep stdout for the banner (URL and key)
        pass_fds=(ready_w,),
    )
    os.close(ready_w)
    if queued:
        dispatch(settings)  # those waiting in the store; a dispatched one's lost message is the reaper's
    # 3. The API in this process; if the worker dies, the service stops rather than queueing forever.
    config = uvicorn.Config(create_app(settings), host=args.host, port=args.port, log_config=None)
    server = uvicorn.Server(config)

    def watch() -> None:
        code = worker.wait()
        if not server.should_exit:
            log.error("the worker exited (code %s); stopping the service", code)
            server.should_exit = True

    threading.Thread(target=watch, name="worker-watch", daemon=True).start()
    # uvicorn re-raises SIGTERM after its graceful shutdown; turn it into SystemExit so `finally` still stops
    # the worker (SIGINT already arrives as KeyboardInterrupt).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # 4. The banner last, after the worker's start-up output (its own banner, its warnings).
    threading.Thread(
        target=_announce,
        args=(server, worker, ready_r, args.ready_timeout,
              lambda ready: banner(settings, args.host, args.port, key, worker_ready=ready)),
        name="banner",
        daemon=True,
    ).start()
    try:
        server.run()
    finally:
        server.should_exit = True
        _stop(worker, grace=args.stop_grace)
    return 0 if worker.returncode in (0, -signal.SIGTERM, None) else 1


def register(sub: Subcommands) -> None:
    """Add ``serve`` to the ``saft`` parser's sub-commands."""
    p = sub.add_parser(
        "serve", help="run the web service: the API and one worker (embedded default: no servers)"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--new-key", action="store_true", help="print a new key for tenant 'default' even if one exists"
    )
    p.add_argument(
        "--pool",
        choices=POOLS,
        default="prefork",
        help="worker pool: prefork runs each job in a child process (default)",
    )
    p.add_argument("--stop-grace", type=float, default=30.0, help="seconds the worker gets to stop on exit")
    p.add_argument("--ready-timeout", type=float, default=180.0,
                   help="seconds to wait for the worker before printing the URL and key anyway")
    p.set_defaults(func=cmd_serve)
