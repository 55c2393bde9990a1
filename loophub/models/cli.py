"""``loophub models``: the registry from a terminal. Every command that prints data takes
``--json`` (one JSON document on stdout).

    loophub models list
    loophub models show digits                 # the model: task, labels, aliases
    loophub models show digits@champion        # a version
    loophub models register digits --job ID    # from a training job that succeeded
    loophub models alias digits champion 3 --reason "best on v2" [--force]
    loophub models history digits [--subject alias:champion]
    loophub models lineage digits@3
    loophub models delete digits@v1 --reason "trained on bad labels"
    loophub models evaluate digits@3 --dataset digits@v2 --split test --slice label
    loophub models test digits@3               # run its tests: what gates champion
    loophub models compare digits              # versions side by side
"""

from __future__ import annotations

import argparse
import json

from loophub.client.cli import client_from, guarded, online


def _print(args: argparse.Namespace, data, lines) -> int:
    if args.json:
        print(json.dumps(data, indent=None, sort_keys=True))
    else:
        for line in lines(data):
            print(line)
    return 0


def _version_lines(v: dict):
    yield f"{v['ref']}  {v['task']}  {v['state']}  tests: {v['test_status']}"
    yield f"  aliases: {', '.join(v['aliases']) or '-'}"
    yield f"  trained on: {v['dataset'] or '-'}  job: {v['job'] or '-'}"
    yield f"  artifact: {v['artifact']['blob']} ({v['artifact']['size']} bytes, " \
          f"{v['artifact']['format']})"
    for name, value in sorted((v.get("metrics") or {}).items()):
        yield f"  {name} = {value}"


def handle_list(args: argparse.Namespace) -> int:
    models = client_from(args).models.list(owner=args.owner, task=args.task)
    return _print(args, models, lambda ms: [
        f"{m['name']:<30} {m['task']:<22} v{m['latest'] or '-':<4} {m['owner']:<12} "
        + " ".join(f"{a}->v{n}" for a, n in sorted(m["aliases"].items())) for m in ms]
        or ["no models you can read; register one with `loophub models register`"])


def handle_show(args: argparse.Namespace) -> int:
    client = client_from(args)
    if "@" in args.ref:
        return _print(args, client.models.get(args.ref), _version_lines)
    model = client.models.show(args.ref)
    return _print(args, model, lambda m: [
        f"{m['name']}  {m['task']}  owner {m['owner']} ({m['visibility']})",
        f"  labels: {', '.join(m['labels'])}",
        f"  versions: {m['versions']}  latest: v{m['latest']}",
        "  aliases: " + (", ".join(f"{a} -> v{n}" for a, n in sorted(m["aliases"].items()))
                         or "-")])


def handle_register(args: argparse.Namespace) -> int:
    client = client_from(args)
    extra = {k: v for k, v in (("description", args.description),
                               ("visibility", args.visibility), ("group", args.group)) if v}
    view = client.models.register(args.name, job=args.job, **extra)
    return _print(args, view, _version_lines)


def handle_alias(args: argparse.Namespace) -> int:
    client = client_from(args)
    if args.remove:
        model = client.models.remove_alias(args.name, args.alias, reason=args.reason)
    else:
        if args.version is None:
            raise SystemExit("loophub models alias: give the VERSION (or --remove)")
        model = client.models.alias(args.name, args.alias, args.version, reason=args.reason,
                                    force=args.force)
    return _print(args, model, lambda m: [
        f"{m['name']}: " + (", ".join(f"{a} -> v{n}" for a, n in sorted(
            m["aliases"].items())) or "no aliases")])


def handle_history(args: argparse.Namespace) -> int:
    events = client_from(args).models.history(args.name, subject=args.subject)
    return _print(args, events, lambda es: [
        f"{e['at'][:19]}  {e['actor']:<12} {e['action']:<16} {e['subject']:<20} "
        f"{json.dumps(e['from'])} -> {json.dumps(e['to'])}"
        + (f"  ({e['reason']})" if e["reason"] else "") for e in es])


def handle_lineage(args: argparse.Namespace) -> int:
    lineage = client_from(args).models.lineage(args.ref)
    return _print(args, lineage, lambda v: [
        f"{v['model']}  job: {v['job'] or '-'}",
        *[f"  {d['relation']}: {d['dataset']}@v{d['number']}" for d in v["datasets"]]])


def handle_delete(args: argparse.Namespace) -> int:
    gone = client_from(args).models.delete(args.ref, reason=args.reason)
    return _print(args, gone, lambda g: [f"deleted {args.ref}"])


HEADLINE = ("accuracy", "macro_f1", "ece", "f1", "map", "map_50")


def _metric_lines(result: dict):
    metrics = result.get("metrics") or {}
    for name in ("count", *HEADLINE):
        if isinstance(metrics.get(name), int | float):
            yield f"  {name} = {metrics[name]:.4f}" if isinstance(metrics[name], float) \
                else f"  {name} = {metrics[name]}"
    for field, values in (result.get("slices") or {}).items():
        for value, sliced in sorted(values.items()):
            shown = {k: sliced[k] for k in HEADLINE if isinstance(sliced.get(k), float)}
            yield f"  {field}={value}: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items())


def handle_evaluate(args: argparse.Namespace) -> int:
    evaluation = client_from(args).models.evaluate(
        args.ref, dataset=args.dataset, split=args.split or None,
        slices=args.slice or ["label"], progress=not args.json)
    return _print(args, evaluation, lambda e: [
        f"{e['ref']} on {e['dataset']} ({e['split'] or 'every split'}): {e['state']}",
        *_metric_lines(e["result"] or {})])


def handle_test(args: argparse.Namespace) -> int:
    outcome = client_from(args).models.test(args.ref, progress=not args.json)
    _print(args, outcome, lambda o: [f"{args.ref}: {o['status']}", *[
        f"  {'pass' if r['passed'] else 'FAIL'}  {r['name']}"
        + (f"  ({r['value']:.4f})" if isinstance(r.get("value"), float) else "")
        + (f"  {r['why']}" if r.get("why") else "") for r in o["results"]]])
    return 0 if outcome["status"] == "passed" else 1


def compare_rows(versions: list[dict], evaluations: list[dict]) -> list[dict]:
    """One row per version: aliases, data, tests, and the headline numbers of its latest
    evaluation on each dataset version and split (column "DATASET/SPLIT METRIC")."""
    latest: dict[tuple[int, str, str | None], dict] = {}
    for e in evaluations:
        if e["state"] == "succeeded" and e.get("result"):
            latest[(e["version"], e["dataset"], e["split"])] = e["result"]
    rows = []
    for v in versions:
        row = {"version": v["version"], "aliases": ",".join(v["aliases"]),
               "trained_on": v["dataset"] or "-", "tests": v["test_status"]}
        for (number, dataset, split), result in sorted(latest.items(), key=str):
            if number == v["version"]:
                for name in HEADLINE:
                    value = (result.get("metrics") or {}).get(name)
                    if isinstance(value, float):
                        row[f"{dataset}/{split or 'all'} {name}"] = round(value, 4)
        rows.append(row)
    return rows


def handle_compare(args: argparse.Namespace) -> int:
    client = client_from(args)
    rows = compare_rows(client.models.versions(args.name), client.models.evaluations(args.name))

    def table(rows: list[dict]):
        columns = list(dict.fromkeys(k for row in rows for k in row))
        widths = {c: max(len(c), *(len(str(r.get(c, "-"))) for r in rows)) for c in columns}
        yield "  ".join(c.ljust(widths[c]) for c in columns)
        for row in rows:
            yield "  ".join(str(row.get(c, "-")).ljust(widths[c]) for c in columns)

    return _print(args, rows, lambda r: table(r) if r else [f"{args.name} has no versions"])


def register(subparsers) -> None:
    models = subparsers.add_parser("models", help="the model registry: versions, aliases, "
                                                  "history, lineage")
    actions = models.add_subparsers(dest="models_action", metavar="ACTION", required=True)

    def action(name: str, handler, help: str) -> argparse.ArgumentParser:
        parser = online(actions.add_parser(name, help=help))
        parser.add_argument("--json", action="store_true", help="print one JSON document")
        parser.set_defaults(func=guarded(handler))
        return parser

    listing = action("list", handle_list, "the models you can read")
    listing.add_argument("--owner")
    listing.add_argument("--task")
    show = action("show", handle_show, "a model (NAME) or a version (NAME@3, NAME@champion)")
    show.add_argument("ref")
    reg = action("register", handle_register, "register a training job's model as a new "
                                              "version (from a notebook: client.models."
                                              "register(name, module, ...))")
    reg.add_argument("name")
    reg.add_argument("--job", required=True, help="a training job that succeeded")
    reg.add_argument("--description")
    reg.add_argument("--visibility", choices=("private", "group", "public"))
    reg.add_argument("--group")
    alias = action("alias", handle_alias, "point an alias at a version (or --remove it)")
    alias.add_argument("name")
    alias.add_argument("alias")
    alias.add_argument("version", nargs="?", help="3 or v3")
    alias.add_argument("--reason", default="")
    alias.add_argument("--force", action="store_true",
                       help="move champion to a version whose tests have not passed")
    alias.add_argument("--remove", action="store_true")
    history = action("history", handle_history, "every change: alias moves, tags, states")
    history.add_argument("name")
    history.add_argument("--subject", help="alias:NAME or vN")
    lineage = action("lineage", handle_lineage, "the job and dataset versions behind a "
                                                "version")
    lineage.add_argument("ref")
    evaluate = action("evaluate", handle_evaluate, "evaluate a version on a dataset version "
                                                   "(a fairly scheduled job)")
    evaluate.add_argument("ref")
    evaluate.add_argument("--dataset", required=True, help="NAME@VERSION")
    evaluate.add_argument("--split", default="test", help="'' for every record")
    evaluate.add_argument("--slice", action="append", help="label, split or metadata.KEY")
    test = action("test", handle_test, "run a version's tests (exit 1 when one fails)")
    test.add_argument("ref")
    compare = action("compare", handle_compare, "a model's versions side by side")
    compare.add_argument("name")
    delete = action("delete", handle_delete, "delete a version (NAME@v3) or a model (NAME)")
    delete.add_argument("ref")
    delete.add_argument("--reason", default="")
