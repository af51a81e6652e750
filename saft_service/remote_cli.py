"""Remote commands of ``saft``: drive a running service through the Python client (``saft_client``).

    saft datasets upload DIR|ARCHIVE [--name N] [--no-resume]
                                                     large ones in resumable parts, with bytes, rate and ETA
    saft datasets import --path P [--name N]         a folder or archive on the server (in the import roots)
    saft datasets list | show ID | delete ID
    saft usage                                       your storage: bytes used and the quota
    saft jobs create --dataset ID [finetune options] [--follow]
    saft jobs list [--status S] | show ID | follow ID | cancel ID | delete ID
    saft jobs download ID --out FILE [--mask]        SHA-256 verified, written atomically
    saft jobs classify ID IMAGE... [--alpha A|recommended]   with the job's model, on the server

The local commands (``saft finetune``, ``saft classify --checkpoint``) run the model in this process; these
run nothing locally and need no torch. Server and key: ``--url``/``--api-key`` or ``SAFT_URL``/``SAFT_API_KEY``.
``--json`` prints one JSON document on stdout. Exit status: 0; 2 for an error answer or an unreachable
server (the problem's code and detail on stderr); ``jobs follow`` (and ``create --follow``) 1 for a failed
job and 130 for a cancelled one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from saft_core.cli import Subcommands, add_model_options, add_training_options, alpha_arg, frontier_table
from saft_core.config import TrainConfig
from saft_core.flags import config_values

if TYPE_CHECKING:
    from saft_client import Client, Dataset, Job, JobEvent

EXIT_FAILED = 1
EXIT_ERROR = 2
EXIT_CANCELLED = 130


# ---------------------------------------------------------------------------------------------- helpers
def _client(args: argparse.Namespace) -> Client:
    from saft_client import Client

    return Client(args.url, args.api_key)


def _print_json(obj: Any) -> None:
    from pydantic import BaseModel

    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    elif isinstance(obj, list):
        obj = [o.model_dump(mode="json") if isinstance(o, BaseModel) else o for o in obj]
    print(json.dumps(obj))


def _remote(func: Callable[[argparse.Namespace, Client], int]) -> Callable[[argparse.Namespace], int]:
    """Run ``func`` with a client; turn the client's errors into a message (and the problem with --json)."""

    def run(args: argparse.Namespace) -> int:
        from saft_client import APIError, SaftClientError

        try:
            with _client(args) as client:
                return func(args, client)
        except APIError as e:
            print(f"error: {e.status} {e.code}: {e.detail}", file=sys.stderr)
            for err in e.errors:
                print(f"  {'.'.join(str(p) for p in err.get('loc', []))}: {err.get('msg')}", file=sys.stderr)
            if args.json:
                _print_json({"error": e.problem})
            return EXIT_ERROR
        except KeyboardInterrupt:
            # Only this command stops: a job keeps running on the server (`saft jobs cancel ID` stops it).
            print("interrupted (nothing was cancelled on the server)", file=sys.stderr)
            return EXIT_CANCELLED
        except SaftClientError as e:
            print(f"error: {e}", file=sys.stderr)
            if args.json:
                _print_json({"error": {"code": type(e).__name__, "detail": str(e)}})
            return EXIT_ERROR

    return run


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


def _progress_bar(quiet: bool) -> tuple[Callable[[JobEvent], None], Callable[[], None]]:
    """An ``on_event`` that draws a tqdm bar per stage on stderr (step/total, loss) and prints messages."""
    state: dict[str, Any] = {"bar": None}

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()
            state["bar"] = None

    def on_event(e: JobEvent) -> None:
        if quiet:
            return
        from tqdm import tqdm

        if e.kind == "progress":
            stage, step, total = e.data.get("stage"), int(e.data.get("step", 0)), int(e.data.get("total_steps", 0))
            bar = state["bar"]
            if bar is None or bar.desc != stage:
                close()
                bar = state["bar"] = tqdm(total=total, desc=stage, file=sys.stderr, leave=False, dynamic_ncols=True,
                                          bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} {postfix}")
            bar.total = total
            bar.n = step
            if "train_loss" in e.data:
                bar.set_postfix(loss=f"{e.data['train_loss']:.4f}", refresh=False)
            bar.refresh()
        elif e.kind == "stage":
            close()
            print(f"[{e.data.get('stage', e.message)}]", file=sys.stderr, flush=True)
        elif e.kind in ("status", "message", "error") or e.level != "info":
            close()
            print(f"{e.created_at:%H:%M:%S} {e.message}", file=sys.stderr, flush=True)

    return on_event, close


def _finish(job: Job, client: Client, args: argparse.Namespace) -> int:
    """Print a finished job (with its evaluations) and return the exit status for its outcome."""
    evaluations = client.jobs.evaluations(job) if job.status == "succeeded" else []
    if args.json:
        _print_json({"job": job.model_dump(mode="json"), "evaluations": [e.model_dump(mode="json") for e in evaluations]})
    else:
        print(_job_line(job))
        if evaluations:
            ckpt = job.checkpoint
            print(frontier_table([(e.dataset_name, e.alpha, e.top1, e.n) for e in evaluations],
                                 ckpt.recommended_alpha if ckpt else None, ckpt.alpha_rule if ckpt else None))
        if job.checkpoint:
            print(f"checkpoint: {job.checkpoint.size_bytes:,} bytes, sha256 {job.checkpoint.sha256}")
    if job.status == "failed":
        return EXIT_FAILED
    return EXIT_CANCELLED if job.status == "cancelled" else 0


def _follow(job_id: str, client: Client, args: argparse.Namespace) -> int:
    on_event, close = _progress_bar(args.quiet or args.json)
    try:
        job = client.jobs.wait(job_id, on_event=on_event)
    finally:
        close()
    return _finish(job, client, args)


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
    """The ``saft finetune`` options of ``args`` as ``client.jobs.create`` keywords (the same meaning: a grad
    clip of 0 disables it, the scoring batch defaults to the training batch). The training loop's options are
    ``TrainConfig``'s fields by name, as in the job spec's ``hyperparameters``."""
    opts: dict[str, Any] = {
        "model": args.model,
        "pretrained": args.pretrained,
        **config_values(args, TrainConfig, skip=("method", "ratio", "grad_clip")),
        "grad_clip": args.grad_clip if args.grad_clip > 0 else None,
        "shots": args.shots,
        "scoring_batch_size": args.score_batch_size or args.batch_size,
        "validation_fraction": args.validation_fraction,
    }
    if args.template:
        opts["templates"] = args.template
    if args.method == "saft":
        opts.update(
            ratio=args.ratio,
            towers=args.towers,
            score_reduction=args.score_reduction,
            exclude_embeddings=args.exclude_embeddings,
            exclude_norms=args.exclude_norms,
            exclude_biases=args.exclude_biases,
        )
    return opts


def cmd_jobs_create(args: argparse.Namespace, client: Client) -> int:
    from saft_client import SaftClientError

    try:
        metadata = json.loads(args.metadata) if args.metadata else None
    except ValueError as e:
        raise SaftClientError(f"--metadata is not JSON: {e}") from e
    job = client.jobs.create(
        args.dataset, method=args.method, eval_datasets=args.eval_dataset, metadata=metadata,
        priority=args.priority, **job_options(args),
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
    _finish(job, client, args)
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


def cmd_jobs_download(args: argparse.Namespace, client: Client) -> int:
    get = client.jobs.download_mask if args.mask else client.jobs.download_checkpoint
    path = get(args.id, args.out, progress=not (args.quiet or args.json))
    import hashlib

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
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
    j = _add(js, "download", cmd_jobs_download, "download the sparse checkpoint (or --mask), SHA-256 verified")
    j.add_argument("id")
    j.add_argument("--out", required=True, help="file to write (replaced only once the download is verified)")
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
