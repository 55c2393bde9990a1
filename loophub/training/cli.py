"""``loophub train`` and ``loophub jobs``: training from a terminal, and every job.

    loophub train image-cnn --dataset digits@v1 --workers 2 --param epochs=20 --wait
    loophub train image-cnn --dataset digits@v1 --wait --json    # one JSON object at the end
    loophub jobs                      # your jobs: imports, exports, commits, training
    loophub jobs logs ID              # a training job's log (or any job's)
    loophub jobs cancel ID
"""

from __future__ import annotations

import argparse
import json
import sys

from loophub.client.cli import client_from, guarded, online, when
from loophub.errors import InvalidInput
from loophub.training.spec import parse_param


def _per_worker(text: str | None) -> dict:
    """'cpu=2,mem=8G,gpu=1,gpu_type=a100'"""
    out: dict = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or key not in ("cpu", "mem", "gpu", "gpu_type"):
            raise InvalidInput(f"--per-worker {text!r}: expected cpu=N,mem=SIZE,gpu=N,gpu_type=T")
        out[key] = float(value) if key == "cpu" else int(value) if key == "gpu" else value
    return out


def handle_train(args: argparse.Namespace) -> int:
    client = client_from(args)
    params = dict(parse_param(p) for p in args.param or [])
    job = client.training.run(args.recipe, dataset=args.dataset, workers=args.workers,
                              per_worker=_per_worker(args.per_worker), params=params,
                              preemptible=args.preemptible, max_retries=args.max_retries,
                              checkpoint_every=args.checkpoint_every, name=args.name)
    if not args.wait:
        print(json.dumps(job.view) if args.json else f"submitted training job {job.id} "
              f"({job.state}); follow it with `loophub jobs logs {job.id}`")
        return 0
    try:
        job.wait(progress=not args.json)
        failed = None
    except Exception as exc:  # the job ended badly: still one answer
        failed = str(getattr(exc, "message", exc))
    job.refresh()
    result = job.view.get("result") or {}
    if args.json:
        print(json.dumps({"id": job.id, "state": job.state, "error": failed,
                          "metrics": result.get("metrics"), "best": result.get("best"),
                          "artifact": result.get("artifact"),
                          "dataset": job.view.get("dataset")}))
    else:
        print(f"training job {job.id}: {job.state}" + (f": {failed}" if failed else ""))
        for name, value in sorted((result.get("metrics") or {}).items()):
            print(f"  {name} = {value:.4f}")
    return 0 if job.state == "succeeded" else 1


def handle_jobs(args: argparse.Namespace) -> int:
    client = client_from(args)
    for job in client.jobs.list(kind=args.kind, state=args.state, limit=args.limit):
        print(f"{job['id']}  {job['kind']:<7} {job['state']:<11} {when(job['created_at'])}  "
              f"{job.get('target', '')}  {job.get('message', '')}")
    return 0


def handle_logs(args: argparse.Namespace) -> int:
    client = client_from(args)
    job = client.jobs.get(args.id)
    if job["kind"] == "train":
        print(client.training.get(args.id).logs())
    else:
        sys.stdout.write(client.jobs.log(args.id))
    return 0


def handle_cancel(args: argparse.Namespace) -> int:
    view = client_from(args).jobs.cancel(args.id)
    print(f"job {args.id}: {view['state']} ({view.get('message', '')})")
    return 0


def register(subparsers) -> None:
    train = online(subparsers.add_parser(
        "train", help="train a recipe on a dataset version (fairly scheduled, on Dask)"))
    train.add_argument("recipe", help="a recipe's name (GET training/recipes)")
    train.add_argument("--dataset", required=True, help="NAME@VERSION, e.g. digits@v1")
    train.add_argument("--workers", type=int, default=1, help="DDP ranks (one per worker)")
    train.add_argument("--per-worker", help="each worker's size: cpu=1,mem=2G,gpu=0")
    train.add_argument("--param", action="append", metavar="K=V", help="a recipe parameter")
    train.add_argument("--preemptible", action="store_true")
    train.add_argument("--max-retries", type=int, default=2)
    train.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    train.add_argument("--name", help="a name for the job's result")
    train.add_argument("--wait", action="store_true", help="wait for it, with a progress bar")
    train.add_argument("--json", action="store_true", help="print one JSON object")
    train.set_defaults(func=guarded(handle_train))

    jobs = online(subparsers.add_parser("jobs", help="your jobs: imports, exports, commits, "
                                                     "training"))
    jobs.add_argument("--kind", help="import, export, commit or train")
    jobs.add_argument("--state")
    jobs.add_argument("--limit", type=int, default=50)
    jobs.set_defaults(func=guarded(handle_jobs))
    actions = jobs.add_subparsers(dest="jobs_action", metavar="ACTION")
    logs = online(actions.add_parser("logs", help="a job's log"))
    logs.add_argument("id")
    logs.set_defaults(func=guarded(handle_logs))
    cancel = online(actions.add_parser("cancel", help="cancel a job"))
    cancel.add_argument("id")
    cancel.set_defaults(func=guarded(handle_cancel))
