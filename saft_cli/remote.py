"""Remote commands of ``saft``: drive a running service through the Python client (``saft_client``).

    saft datasets upload DIR|ARCHIVE [--name N] [--no-resume]
                                                     large ones in resumable parts, with bytes, rate and ETA
    saft datasets import --path P [--name N]         a folder or archive on the server (in the import roots)
    saft datasets list | show ID | delete ID
    saft usage                                       your storage: bytes used and the quota
    saft jobs create --dataset ID [finetune options] [--follow]
    saft jobs list [--status S] | show ID | follow ID | cancel ID | delete ID
    saft jobs download ID [--mask] [--out FILE]      SHA-256 verified, written atomically; never replaces a
                                                     file without --force (default: ID[-mask].safetensors)
    saft jobs classify ID IMAGE... [--alpha A|recommended]   with the job's model, on the server

The local commands (``saft finetune``, ``saft classify --checkpoint``) run the model in this process; these
run nothing locally and need no torch. Server and key: ``--url``/``--api-key`` or ``SAFT_URL``/``SAFT_API_KEY``.
``--json`` prints one JSON document on stdout. Exit status: 0; 2 for an error answer or an unreachable
server (the problem's code and detail on stderr, once, with what to do); ``jobs follow`` (and ``create
--follow``) 1 for a failed job and 130 for a cancelled one. ``jobs follow`` and ``jobs show`` end with a summary
(status, duration, loss, top-1 per set at zero-shot, fine-tuned and the recommended alpha, the checkpoint, the
job's warnings).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saft_core.cli import Subcommands, frontier_table
from saft_core.flags import add_model_options, add_training_options, alpha_arg, method_values, train_values

if TYPE_CHECKING:
    from saft_client import Client, Dataset, Evaluation, Job, JobEvent

EXIT_FAILED = 1
EXIT_ERROR = 2
EXIT_CANCELLED = 130


# ---------------------------------------------------------------------------------------------- helpers
def _client(args: argparse.Namespace) -> Client:
    from saft_client import Client, RetryPolicy

    # Nothing listening at the URL is said at once (a wrong port, a service not started); a service that has
    # answered and then drops is retried as usual.
    return Client(args.url, args.api_key, retry=RetryPolicy(retry_unreached=False))


def _print_json(obj: Any) -> None:
    from pydantic import BaseModel

    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    elif isinstance(obj, list):
        obj = [o.model_dump(mode="json") if isinstance(o, BaseModel) else o for o in obj]
    print(json.dumps(obj))


START_HINT = "start it with `make run` (or `saft serve`) in the project's folder, or point --url or SAFT_URL at it"
KEY_HINT = "set SAFT_API_KEY (export SAFT_API_KEY=saft_...) or pass --api-key"
WHERE_KEYS = "`make run` (`saft serve`) prints a key for tenant 'default'; `saft keys create --tenant NAME` makes one"


def _error_lines(e: Exception, url: str) -> list[str]:
    """What to tell a person about a failed remote command: the problem once, and what to do about it."""
    from saft_client import APIError, ConnectionFailed, Unauthorized

    if isinstance(e, ConnectionFailed):
        reason = f" ({e.reason})" if e.reason else ""
        return [f"error: no SAFT service answers at {e.url or url}{reason}", f"  {START_HINT}"]
    if isinstance(e, FileExistsError):
        return [f"error: {e}; pass --force to replace it, or --out another file"]
    if not isinstance(e, APIError):
        return [f"error: {e}"]
    head = f"error: {e.status} {e.code}"
    # A refused request lists each field once (the detail repeats the first), without pydantic's prefixes.
    fields = [f"{'.'.join(str(p) for p in err.get('loc', []) if p != 'body') or 'request'}: "
              f"{str(err.get('msg', '')).removeprefix('Value error, ')}" for err in e.errors]
    if len(fields) == 1:
        lines = [f"{head}: {fields[0]}"]
    elif fields:
        lines = [f"{head}:", *(f"  {f}" for f in fields)]
    else:
        lines = [f"{head}: {e.detail}"]
    if isinstance(e, Unauthorized):
        lines += ["  the key is the one in --api-key or, without it, SAFT_API_KEY", f"  {WHERE_KEYS}"]
    return lines


def _remote(func: Callable[[argparse.Namespace, Client], int]) -> Callable[[argparse.Namespace], int]:
    """Run ``func`` with a client; turn the client's errors into a message (and the problem with --json)."""

    def run(args: argparse.Namespace) -> int:
        from saft_client import APIError, SaftClientError

        client = _client(args)  # opens no connection yet
        url = client.base_url
        if not client.api_key:
            client.close()
            lines = [f"error: no API key: {KEY_HINT}", f"  {WHERE_KEYS}"]
            return _fail(args, lines, {"code": "no_api_key", "detail": f"no API key: {KEY_HINT}"})
        try:
            with client:
                return func(args, client)
        except KeyboardInterrupt:
            # Only this command stops: a job keeps running on the server (`saft jobs cancel ID` stops it).
            print("interrupted (nothing was cancelled on the server)", file=sys.stderr)
            return EXIT_CANCELLED
        except APIError as e:
            return _fail(args, _error_lines(e, url), e.problem)
        except (SaftClientError, FileExistsError) as e:
            return _fail(args, _error_lines(e, url), {"code": type(e).__name__, "detail": str(e)})

    return run


def _fail(args: argparse.Namespace, lines: list[str], problem: dict[str, Any]) -> int:
    for line in lines:
        print(line, file=sys.stderr)
    if args.json:
        _print_json({"error": problem})
    return EXIT_ERROR


def _size(n: int) -> str:
    """Bytes for people: 1023 B, 1.5 KiB, 20.0 MiB, 3.2 GiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _dataset_line(ds: Dataset) -> str:
    counts = ", ".join(f"{c} {n}" for c, n in ds.counts.items())
    where = f"  (read from {ds.source_path} on the server)" if ds.external else ""
    return f"{ds.id}  {ds.name}: {ds.num_images} images, {len(ds.classes)} classes ({counts}){where}"


def _job_line(job: Job) -> str:
    p = job.progress
    where = f" {p.stage} {p.step}/{p.total_steps}" if job.status == "running" and p.stage else ""
    err = f" ({job.error.code}: {job.error.message})" if job.error else ""
    return f"{job.id}  {job.status}{where}{err}  dataset={job.dataset_id}  created {job.created_at:%Y-%m-%d %H:%M:%S}"


class _Progress:
    """``on_event`` for ``jobs.wait``: a tqdm bar per stage on stderr (step/total, loss), left on screen when the
    stage ends; messages and warnings as lines. Keeps the warning events for the summary (a server without
    the job's ``warnings`` field still reports them as events)."""

    BAR = "{desc}: {percentage:3.0f}%|{bar}| {n}/{total}{postfix}"  # tqdm's postfix brings its own ", "

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None
        self.warnings: list[dict[str, Any]] = []

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __call__(self, e: JobEvent) -> None:
        if e.level == "warning" and "code" in e.data:
            self.warnings.append({"code": e.data["code"], "message": e.message, "hint": e.data.get("hint")})
        if self.quiet:
            return
        from tqdm import tqdm

        if e.kind == "progress":
            stage, step, total = e.data.get("stage"), int(e.data.get("step", 0)), int(e.data.get("total_steps", 0))
            if self.bar is None or self.bar.desc != stage:
                self.close()
                self.bar = tqdm(total=total, desc=stage, file=sys.stderr, leave=True, dynamic_ncols=True,
                                bar_format=self.BAR)
            self.bar.total = total
            self.bar.n = step
            if "train_loss" in e.data:
                self.bar.set_postfix(loss=f"{e.data['train_loss']:.4f}", refresh=False)
            self.bar.refresh()
        elif e.kind == "stage":
            self.close()
            print(f"[{e.data.get('stage', e.message)}]", file=sys.stderr, flush=True)
        elif e.kind in ("status", "message", "error") or e.level != "info":
            self.close()
            print(f"{e.created_at:%H:%M:%S} {e.message}", file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    """Seconds for people: 41 s, 3 min 12 s, 2 h 05 min."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _warnings_of(job: Job, seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The job's training-health warnings ``{code, message, hint}``: its ``warnings`` field where the server
    and client have it, else the warning events seen while following."""
    listed = getattr(job, "warnings", None)
    if listed is None:
        return seen
    return [w if isinstance(w, dict) else {k: getattr(w, k, None) for k in ("code", "message", "hint")}
            for w in listed]


def job_summary(job: Job, evaluations: list[Evaluation], warnings: list[dict[str, Any]], *,
                every_alpha: bool = False) -> str:
    """A finished job on one screen: status and duration, the training loss, top-1 per evaluated set at
    zero-shot, fine-tuned and the recommended alpha (``every_alpha``: the whole frontier), the checkpoint, and
    the job's training-health warnings."""
    took = job.finished_at - job.started_at if job.started_at and job.finished_at else None
    lines = [f"job {job.id} {job.status}" + (f" in {_duration(took.total_seconds())}" if took else "")]
    if job.error:
        lines.append(f"  {job.error.code}: {job.error.message}")
    m = job.metrics
    last = m.get("train_loss_last_epoch", m.get("train_loss_last", m.get("train_loss")))
    if last is not None:
        first = f"{m['train_loss_first']:.4f} -> " if "train_loss_first" in m else ""
        mean = " (mean of the last epoch)" if "train_loss_last_epoch" in m else ""
        steps = f" over {int(m['train_steps'])} steps" if "train_steps" in m else ""
        lines.append(f"training loss {first}{last:.4f}{mean}{steps}")
    ckpt = job.checkpoint
    rec = ckpt.recommended_alpha if ckpt else None
    if every_alpha and evaluations:
        lines.append(frontier_table([(e.dataset_name, e.alpha, e.top1, e.n) for e in evaluations],
                                    rec, ckpt.alpha_rule if ckpt else None))
    elif evaluations:
        top1 = {(e.dataset_name, e.alpha): e.top1 for e in evaluations}
        sizes = {e.dataset_name: e.n for e in evaluations}
        columns = [(0.0, "zero-shot"), (1.0, "fine-tuned")] + ([(rec, f"alpha {rec:g}*")] if rec is not None else [])
        width = max(len("top-1"), *(len(name) for name in sizes)) + 2
        lines.append(f"{'top-1':<{width}}" + "".join(f"{label:>13}" for _, label in columns))
        for name, n in sizes.items():
            cells = "".join(f"{top1[(name, a)]:>13.1%}" if (name, a) in top1 else f"{'-':>13}" for a, _ in columns)
            lines.append(f"{name:<{width}}{cells}  (n={n})")
        if ckpt is not None and rec is not None:
            lines += [f"* recommended alpha {rec:g} ({ckpt.alpha_rule} rule on the validation split)",
                      f"  classify with it: saft jobs classify {job.id} IMAGE --alpha recommended"]
    if job.status == "succeeded" and rec is None:
        lines.append("no recommended alpha: the job had no validation split (--validation-fraction)")
    if ckpt:
        lines.append(f"checkpoint: {_size(ckpt.size_bytes)} (sha256 {ckpt.sha256[:12]}...); "
                     f"download: saft jobs download {job.id}")
    for w in warnings:
        lines.append(f"warning [{w.get('code')}]: {w.get('message')}")
        if w.get("hint"):
            lines.append(f"  try: {w['hint']}")
    return "\n".join(lines)


def _finish(job: Job, client: Client, args: argparse.Namespace, seen: list[dict[str, Any]] | None = None,
            *, every_alpha: bool = False) -> int:
    """Print a finished job (its summary) and return the exit status for its outcome."""
    evaluations = client.jobs.evaluations(job) if job.status == "succeeded" else []
    if args.json:
        _print_json({"job": job.model_dump(mode="json"), "evaluations": [e.model_dump(mode="json") for e in evaluations]})
    else:
        print(job_summary(job, evaluations, _warnings_of(job, seen or []), every_alpha=every_alpha))
    if job.status == "failed":
        return EXIT_FAILED
    return EXIT_CANCELLED if job.status == "cancelled" else 0


def _follow(job_id: str, client: Client, args: argparse.Namespace) -> int:
    progress = _Progress(args.quiet or args.json)
    try:
        job = client.jobs.wait(job_id, on_event=progress)
    finally:
        progress.close()
    return _finish(job, client, args, progress.warnings)


# ---------------------------------------------------------------------------------------------- datasets
def cmd_datasets_upload(args: argparse.Namespace, client: Client) -> int:
    # The client's defaults stand unless the options were given (saft_client is imported only when a command runs).
    given = {"multipart_threshold": args.multipart_threshold, "parallel": args.parallel}
    try:
        ds = client.datasets.upload(
            args.path,
            name=args.name,
            progress=not (args.quiet or args.json),
            resume=not args.no_resume,
            **{k: v for k, v in given.items() if v is not None},
        )
    except KeyboardInterrupt:
        # The parts sent stay on the server until the upload expires, and the state in the cache says which.
        print("upload interrupted: run the same command again to resume it", file=sys.stderr)
        return EXIT_CANCELLED
    _print_json(ds) if args.json else print(_dataset_line(ds))
    return 0


def cmd_datasets_import(args: argparse.Namespace, client: Client) -> int:
    ds = client.datasets.import_path(args.source_path, args.name)
    _print_json(ds) if args.json else print(_dataset_line(ds))
    return 0


def cmd_usage(args: argparse.Namespace, client: Client) -> int:
    u = client.usage()
    if args.json:
        _print_json(u)
        return 0
    if u.storage_quota_bytes is None:
        print(f"storage: {_size(u.storage_bytes)} used (no quota)")
    else:
        share = u.storage_bytes / u.storage_quota_bytes if u.storage_quota_bytes else 1.0
        print(f"storage: {_size(u.storage_bytes)} used of {_size(u.storage_quota_bytes)} ({share:.0%})")
    print(f"  datasets {_size(u.datasets_bytes)}, pending uploads {_size(u.uploads_bytes)}, jobs {_size(u.jobs_bytes)}")
    return 0


def cmd_datasets_list(args: argparse.Namespace, client: Client) -> int:
    rows = list(client.datasets.list(limit=args.limit))
    if args.json:
        _print_json(rows)
        return 0
    for ds in rows:
        print(f"{ds.id}  {ds.name}  {ds.num_images} images  {len(ds.classes)} classes  created {ds.created_at:%Y-%m-%d %H:%M:%S}")
    if not rows:
        print("no datasets", file=sys.stderr)
    return 0


def cmd_datasets_show(args: argparse.Namespace, client: Client) -> int:
    ds = client.datasets.get(args.id)
    if args.json:
        _print_json(ds)
    else:
        where = f", read from {ds.source_path} on the server" if ds.external else ""
        print(f"{ds.id}  {ds.name}: {ds.num_images} images, {ds.size_bytes:,} bytes{where}")
        for c, name in zip(ds.classes, ds.class_names, strict=True):
            print(f"  {c} ({name}): {ds.counts.get(c, 0)}")
    return 0


def cmd_datasets_delete(args: argparse.Namespace, client: Client) -> int:
    client.datasets.delete(args.id)
    _print_json({"deleted": args.id}) if args.json else print(f"deleted {args.id}")
    return 0


# ---------------------------------------------------------------------------------------------- jobs
def job_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``saft finetune`` options of ``args`` as ``client.jobs.create`` keywords, read as ``saft finetune``
    reads them (``saft_core.flags``): the job spec's ``method`` is the method's config, its ``hyperparameters``
    the training loop's and the shots."""
    opts: dict[str, Any] = {
        "model": args.model,
        "pretrained": args.pretrained,
        "method": method_values(args),
        "hyperparameters": {**train_values(args), "shots": args.shots},
        "validation_fraction": args.validation_fraction,
    }
    if args.template:
        opts["templates"] = args.template
    return opts


def cmd_jobs_create(args: argparse.Namespace, client: Client) -> int:
    from saft_client import SaftClientError

    try:
        metadata = json.loads(args.metadata) if args.metadata else None
    except ValueError as e:
        raise SaftClientError(f"--metadata is not JSON: {e}") from e
    job = client.jobs.create(
        args.dataset, eval_datasets=args.eval_dataset, metadata=metadata, priority=args.priority, **job_options(args)
    )
    if args.follow:
        if not (args.json or args.quiet):
            print(f"created {job.id}", file=sys.stderr)
        return _follow(job.id, client, args)
    _print_json(job) if args.json else print(_job_line(job))
    return 0


def cmd_jobs_list(args: argparse.Namespace, client: Client) -> int:
    rows = list(client.jobs.list(status=args.status, limit=args.limit))
    if args.json:
        _print_json(rows)
        return 0
    for job in rows:
        print(_job_line(job))
    if not rows:
        print("no jobs", file=sys.stderr)
    return 0


def cmd_jobs_show(args: argparse.Namespace, client: Client) -> int:
    job = client.jobs.get(args.id)
    if not job.done:
        _print_json(job) if args.json else print(_job_line(job))
        return 0
    _finish(job, client, args, every_alpha=True)
    return 0  # show reports; it does not judge the outcome (follow does)


def cmd_jobs_follow(args: argparse.Namespace, client: Client) -> int:
    return _follow(args.id, client, args)


def cmd_jobs_cancel(args: argparse.Namespace, client: Client) -> int:
    job = client.jobs.cancel(args.id)
    _print_json(job) if args.json else print(_job_line(job) + ("  (cancel requested)" if job.cancel_requested else ""))
    return 0


def cmd_jobs_delete(args: argparse.Namespace, client: Client) -> int:
    client.jobs.delete(args.id)
    _print_json({"deleted": args.id}) if args.json else print(f"deleted {args.id}")
    return 0


def download_name(job_id: str, mask: bool) -> str:
    """The default file of ``saft jobs download``: ``JOB.safetensors``, or ``JOB-mask.safetensors``."""
    return f"{job_id}-mask.safetensors" if mask else f"{job_id}.safetensors"


def cmd_jobs_download(args: argparse.Namespace, client: Client) -> int:
    out = Path(args.out or download_name(args.id, args.mask))
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} exists")  # before anything is fetched
    get = client.jobs.download_mask if args.mask else client.jobs.download_checkpoint
    path = get(args.id, out, progress=not (args.quiet or args.json), overwrite=args.force)
    import hashlib

    with path.open("rb") as f:  # streamed: a full fine-tuning checkpoint is hundreds of MB
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if args.json:
        _print_json({"path": str(path), "sha256": digest, "size_bytes": path.stat().st_size})
    else:
        print(f"wrote {path} ({path.stat().st_size:,} bytes, sha256 {digest}, verified)")
    return 0


def cmd_jobs_classify(args: argparse.Namespace, client: Client) -> int:
    labels = [s.strip() for s in args.labels.split(",") if s.strip()] if args.labels else None
    result = client.classify(args.images, job=args.id, alpha=args.alpha, labels=labels, top_k=args.top_k)
    if args.json:
        _print_json(result)
        return 0
    if args.alpha == "recommended" and result.alpha is not None:
        print(f"at the job's recommended alpha {result.alpha:g}", file=sys.stderr)
    for path, r in zip(args.images, result.results, strict=True):
        print(f"{path}: " + ", ".join(f"{p.label} {p.score:.3f}" for p in r.predictions))
    return 0


# ---------------------------------------------------------------------------------------------- parser
def _connection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help="service URL (default: $SAFT_URL, else http://127.0.0.1:8000)")
    p.add_argument("--api-key", default=None, help="API key (default: $SAFT_API_KEY)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def _add(sub: Subcommands, name: str, func: Callable[..., int], help: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help)
    _connection(p)
    p.set_defaults(func=_remote(func))
    return p


def _byte_count(text: str) -> int:
    """A size in bytes, with an optional binary suffix: 1048576, 512K, 64M, 2G."""
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        n = int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (bytes, or with K, M, G)") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"a size is not negative: {text!r}")
    return n


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"at least 1, not {n}")
    return n


def register(sub: Subcommands) -> None:
    """Add ``datasets``, ``jobs`` and ``usage`` (commands against a running service) to the ``saft`` parser's
    sub-commands."""
    p = sub.add_parser("datasets", help="datasets on a SAFT service (upload, import, list, show, delete)")
    ds = p.add_subparsers(dest="datasets_command", required=True, metavar="ACTION")
    d = _add(ds, "upload", cmd_datasets_upload,
             "upload an ImageFolder: a folder or an archive; a large one in resumable parts (run the same command "
             "again after an interruption: the parts the server holds are not sent again)")
    d.add_argument("path", metavar="DIR|ARCHIVE", help="a folder with one sub-folder per class, or a .zip/.tar/.tar.gz")
    d.add_argument("--name", help="a name for people (default: the folder or file name)")
    d.add_argument("--no-resume", action="store_true",
                   help="start anew, abandoning an interrupted upload of the same source")
    d.add_argument("--multipart-threshold", type=_byte_count, default=None, metavar="SIZE",
                   help="above this size, upload in resumable parts (bytes, or with K, M, G; default: the client's, 64M)")
    d.add_argument("--parallel", type=_positive, default=None, metavar="N",
                   help="parts sent at once (default: the client's, 4)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d = _add(ds, "import", cmd_datasets_import,
             "make a dataset of a folder (read in place) or an archive already on the server, inside the "
             "operator's import roots; nothing is sent")
    d.add_argument("--path", dest="source_path", required=True, metavar="PATH",
                   help="absolute path of the folder or archive on the server")
    d.add_argument("--name", help="a name for people (default: the folder's name)")
    d = _add(ds, "list", cmd_datasets_list, "list datasets, newest first")
    d.add_argument("--limit", type=int, default=None, help="at most this many")
    d = _add(ds, "show", cmd_datasets_show, "show a dataset's classes and counts")
    d.add_argument("id")
    d = _add(ds, "delete", cmd_datasets_delete, "delete a dataset and its files")
    d.add_argument("id")

    p = sub.add_parser("jobs", help="fine-tuning jobs on a SAFT service (create, list, follow, download, ...)")
    js = p.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    j = _add(js, "create", cmd_jobs_create, "start a fine-tuning job (the options of `saft finetune`)")
    j.add_argument("--dataset", required=True, help="training dataset id (from `saft datasets upload`)")
    j.add_argument("--eval-dataset", action="append", default=[], metavar="ID", help="evaluation dataset id (repeatable)")
    add_model_options(j)
    add_training_options(j, check_bounds=False)  # the service judges them, with the ranges of its own core
    j.add_argument("--metadata", help="a JSON object stored with the job and echoed back")
    j.add_argument("--priority", choices=["low", "normal", "high"], default=None,
                   help="order among your own queued jobs (default: normal); tenants take turns regardless")
    j.add_argument("--follow", action="store_true", help="then follow it as `saft jobs follow` does")
    j.add_argument("--quiet", action="store_true", help="with --follow: no progress bar")
    j = _add(js, "list", cmd_jobs_list, "list jobs, newest first")
    j.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    j.add_argument("--limit", type=int, default=None, help="at most this many")
    j = _add(js, "show", cmd_jobs_show, "show a job (and its evaluations once it has finished)")
    j.add_argument("id")
    j = _add(js, "follow", cmd_jobs_follow,
             "follow a job to its end with a progress bar (stage, step, loss); exit 1 if it fails, 130 if cancelled")
    j.add_argument("id")
    j.add_argument("--quiet", action="store_true", help="no progress bar")
    j = _add(js, "cancel", cmd_jobs_cancel, "cancel a job (a running one stops at its next step)")
    j.add_argument("id")
    j = _add(js, "delete", cmd_jobs_delete, "delete a finished job and its files")
    j.add_argument("id")
    j = _add(js, "download", cmd_jobs_download,
             "download the sparse checkpoint (or --mask), SHA-256 verified, written atomically")
    j.add_argument("id")
    j.add_argument("--out", help="file to write (default: ID.safetensors, or ID-mask.safetensors with --mask)")
    j.add_argument("--force", action="store_true", help="replace --out if it exists (once the download is verified)")
    j.add_argument("--mask", action="store_true", help="the mask file instead of the checkpoint")
    j.add_argument("--quiet", action="store_true", help="no progress bar")
    j = _add(js, "classify", cmd_jobs_classify, "classify images on the server with a succeeded job's model")
    j.add_argument("id")
    j.add_argument("images", nargs="+", metavar="IMAGE")
    j.add_argument("--alpha", type=alpha_arg, default=None,
                   help="0 = base, 1 = fine-tuned, between = interpolated, 'recommended' = the job's recommended "
                        "alpha (default: the server's, 1)")
    j.add_argument("--labels", help="comma-separated labels (default: the job's classes)")
    j.add_argument("--top-k", type=int, default=None, help="labels per image (default: the server's, 5)")

    _add(sub, "usage", cmd_usage, "your storage on a SAFT service: bytes used (datasets, uploads, jobs) and the quota")
