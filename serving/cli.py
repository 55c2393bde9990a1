"""``loophub serve``: releases (models served as REST services) from a terminal. Every
command takes ``--json`` (one JSON document on stdout); errors are one line on stderr
and exit code 2.

    loophub serve release digits digits@champion --replicas 2 --cpu 1 --mem 1G
    loophub serve list [--all]
    loophub serve status digits              # its replicas: state, node, restarts, message
    loophub serve scale digits 3
    loophub serve rollout digits digits@v4   # no downtime: waits until v4 serves alone
    loophub serve canary digits digits@v5 --percent 10
    loophub serve canary digits --percent 25 # change the canary's share
    loophub serve promote digits             # or: loophub serve rollback digits --reason R
    loophub serve keys digits --create "shop front-end"   # printed this once
    loophub serve history digits
    loophub serve log digits REPLICA
    loophub serve stop digits
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from loophub.client.cli import client_from, guarded, online, when
from loophub.client.serving import Release
from loophub.pool import readable_bytes


def _print(args: argparse.Namespace, data: Any,
           lines: Callable[[Any], Iterable[str]]) -> int:
    if args.json:
        print(json.dumps(data, sort_keys=True))
    else:
        for line in lines(data):
            print(line)
    return 0


def table(columns: list[str], rows: list[list[Any]]) -> Iterator[str]:
    """ROWS under COLUMNS, each column as wide as its widest cell ('-' for empty ones)."""
    cells = [[str(c) if c not in (None, "") else "-" for c in row] for row in rows]
    widths = [max(len(col), *(len(row[i]) for row in cells)) if cells else len(col)
              for i, col in enumerate(columns)]
    for row in [columns, *cells]:
        yield "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()


def canary_text(view: dict) -> str:
    canary = view.get("canary")
    if not canary:
        return ""
    return f"{canary['version']} at {canary['percent']:g}%"


def summary_lines(view: dict) -> Iterator[str]:
    """What a change left: the release in one line, its canary, where to call it."""
    yield (f"{view['name']}  {view['version']}  {view['status']}  "
           f"{view['ready']}/{view['replicas']} ready  (access {view['access']})")
    if view.get("canary"):
        yield f"  canary: {canary_text(view)} ({view['canary']['replicas']} replicas)"
    if view["status"] != "stopped":
        yield f"  url: {view.get('url') or '-'}"
        yield f"  app: {view.get('app') or '-'}"
        yield f"  dashboard: {view.get('dashboard') or '-'}"


def _per_replica(view: dict) -> str:
    size = view.get("per_replica") or {}
    parts = [f"cpu {size.get('cpu', 0):g}"]
    if isinstance(size.get("mem"), int | float):
        parts.append(f"mem {readable_bytes(size['mem'])}")
    if size.get("gpu"):
        parts.append(f"gpu {size['gpu']:g}")
    return ", ".join(parts)


def status_lines(view: dict) -> Iterator[str]:
    yield from summary_lines(view)
    yield f"  model: {view['model']}  owner: {view['owner']}  each replica: " \
          f"{_per_replica(view)}"
    if view.get("options"):
        yield "  options: " + ", ".join(f"{k}={v}" for k, v in sorted(view["options"].items()))
    yield f"  created: {when(view.get('created'))}  updated: {when(view.get('updated'))}"
    replicas = view["replica_list"]
    if not replicas:
        yield "  no replicas" + (" (stopped)" if view["status"] == "stopped" else "")
        return
    yield ""
    yield from table(["REPLICA", "ROLE", "VERSION", "STATE", "NODE", "RESTARTS", "SINCE",
                      "MESSAGE"],
                     [[r["id"], r["role"], r["version"], r["state"], r.get("node"),
                       r["restarts"], when(r.get("updated")), r["message"]]
                      for r in replicas])


# -- handlers -----------------------------------------------------------------------------


def handle_release(args: argparse.Namespace) -> int:
    per_replica = {k: v for k, v in (("cpu", args.cpu), ("mem", args.mem), ("gpu", args.gpu))
                   if v is not None}
    release = client_from(args).serving.release(
        args.name, args.model, replicas=args.replicas, per_replica=per_replica or None,
        access=args.access, options={"batching": False} if args.no_batching else None,
        wait=not args.no_wait, timeout=args.timeout)
    return _print(args, release.view, summary_lines)


def handle_list(args: argparse.Namespace) -> int:
    views = [r.view for r in client_from(args).serving.list(owner=args.owner,
                                                           stopped=args.all)]

    def lines(views: list[dict]) -> Iterator[str]:
        if not views:
            yield "no releases you can call; serve a model with `loophub serve release`"
            return
        yield from table(["NAME", "VERSION", "STATUS", "READY", "ACCESS", "OWNER", "CANARY",
                          "URL"],
                         [[v["name"], v["version"], v["status"],
                           f"{v['ready']}/{v['replicas']}", v["access"], v["owner"],
                           canary_text(v), v.get("url") if v["status"] != "stopped" else ""]
                          for v in views])

    return _print(args, views, lines)


def handle_status(args: argparse.Namespace) -> int:
    return _print(args, client_from(args).serving.view(args.name), status_lines)


def _release(args: argparse.Namespace) -> Release:
    return client_from(args).serving.get(args.name)


def handle_scale(args: argparse.Namespace) -> int:
    release = _release(args).scale(args.replicas, wait=not args.no_wait, timeout=args.timeout)
    return _print(args, release.view, summary_lines)


def handle_rollout(args: argparse.Namespace) -> int:
    release = _release(args).rollout(args.model, wait=not args.no_wait, timeout=args.timeout)
    return _print(args, release.view, summary_lines)


def handle_canary(args: argparse.Namespace) -> int:
    release = _release(args)
    if args.model:
        release.canary(args.model, percent=args.percent, replicas=args.replicas,
                       guard=False if args.no_guard else None, wait=not args.no_wait,
                       timeout=args.timeout)
    else:
        release.set_canary(args.percent)
    return _print(args, release.view, summary_lines)


def handle_promote(args: argparse.Namespace) -> int:
    release = _release(args).promote(wait=not args.no_wait, timeout=args.timeout)
    return _print(args, release.view, summary_lines)


def handle_rollback(args: argparse.Namespace) -> int:
    view = client_from(args).serving.rollback(args.name, args.reason)
    return _print(args, view, summary_lines)


def handle_stop(args: argparse.Namespace) -> int:
    view = client_from(args).serving.stop(args.name)
    return _print(args, view, lambda v: [
        f"stopped release {v['name']}: its replicas drained; the name stays "
        f"{v['owner']}'s (serve it again with `loophub serve release`)"])


def _key_rows(keys: list[dict]) -> list[list[Any]]:
    return [[k["id"], k["prefix"] + "...", k["note"], k["created_by"], when(k["created"]),
             when(k["revoked"]) if k.get("revoked") else "active"] for k in keys]


def handle_keys(args: argparse.Namespace) -> int:
    serving = client_from(args).serving
    if args.create is not None:
        key = serving.create_key(args.name, args.create)
        print(f"warning: API key {key['id']} of release {args.name} is shown this once and "
              "will not be shown again: store it now. Send it as 'Authorization: Bearer "
              "KEY'; revoke it with `loophub serve keys "
              f"{args.name} --revoke {key['id']}`", file=sys.stderr)
        return _print(args, key, lambda k: [k["key"]])
    if args.revoke is not None:
        key = serving.revoke_key(args.name, args.revoke)
        return _print(args, key, lambda k: [
            f"revoked key {k['id']} ({k['prefix']}...) of release {args.name}: the gateway "
            "refuses it within seconds"])
    keys = serving.keys(args.name)
    return _print(args, keys, lambda ks: table(
        ["ID", "PREFIX", "NOTE", "CREATED BY", "CREATED", "REVOKED"], _key_rows(ks))
        if ks else [f"release {args.name} has no API keys; make one with --create NOTE"])


def _detail(detail: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in detail.items() if v not in (None, ""))


def handle_history(args: argparse.Namespace) -> int:
    events = client_from(args).serving.history(args.name)
    return _print(args, events, lambda es: table(
        ["AT", "ACTOR", "ACTION", "DETAIL"],
        [[when(e["at"]), e["actor"], e["action"], _detail(e.get("detail") or {})]
         for e in es]))


def handle_monitor(args: argparse.Namespace) -> int:
    report = client_from(args).serving.monitoring(args.name, args.window)
    return _print(args, report, _monitor_lines)


def _monitor_lines(report: dict) -> list[str]:
    summary = report["summary"]
    lines = [f"{report['release']}: {summary['requests']} requests in the last "
             f"{report['window_s']:g} s"]
    rows = []
    for version, part in sorted((summary.get("versions") or {}).items()):
        latency = part.get("latency_ms") or {}
        drift = (report.get("drift") or {}).get(version) or {}
        flag = {True: "DRIFT", False: "no drift"}.get(drift.get("drifted"),
                                                      drift.get("insufficient") or "-")
        rows.append([version, part["requests"], _num(part.get("requests_per_s")),
                     _num(latency.get("p50")), _num(latency.get("p99")),
                     _num(part.get("error_rate")), flag])
    lines += table(["VERSION", "REQUESTS", "REQ/S", "P50 MS", "P99 MS", "ERROR RATE",
                    "INPUTS"], rows)
    return lines


def _num(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def handle_log(args: argparse.Namespace) -> int:
    text = client_from(args).serving.log(args.name, args.replica)
    if args.json:
        return _print(args, {"release": args.name, "replica": args.replica, "log": text},
                      lambda _: [])
    sys.stdout.write(text if not text or text.endswith("\n") else text + "\n")
    return 0


# -- the parser ---------------------------------------------------------------------------


def _waits(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--no-wait", action="store_true",
                        help=f"return once accepted (default: wait until {what})")
    parser.add_argument("--timeout", type=float, default=300,
                        help="seconds to wait at most (default 300)")


def register(subparsers) -> None:
    serve = subparsers.add_parser("serve", help="releases: models served as REST services "
                                                "behind the hub")
    actions = serve.add_subparsers(dest="serve_action", metavar="ACTION", required=True)

    def action(name: str, handler, help: str) -> argparse.ArgumentParser:
        parser = online(actions.add_parser(name, help=help, description=help))
        parser.add_argument("--json", action="store_true", help="print one JSON document")
        parser.set_defaults(func=guarded(handler))
        return parser

    release = action("release", handle_release, "serve a model version as release NAME")
    release.add_argument("name", help="1-63 lower-case letters, digits, '-' (in its URL)")
    release.add_argument("model", help="NAME@VERSION or NAME@ALIAS, e.g. digits@champion")
    release.add_argument("--replicas", type=int, default=1)
    release.add_argument("--cpu", type=float, help="cores per replica (default 1)")
    release.add_argument("--mem", help="memory per replica, e.g. 1G (default 1G)")
    release.add_argument("--gpu", type=float, help="GPUs per replica (default 0)")
    release.add_argument("--access", default="hub",
                         help="hub (every hub user), group:NAME, or public-token (API keys "
                              "only, besides you)")
    release.add_argument("--no-batching", action="store_true",
                         help="one forward pass per request")
    _waits(release, "every replica serves")

    listing = action("list", handle_list, "the releases you can call")
    listing.add_argument("--all", action="store_true", help="stopped ones too")
    listing.add_argument("--owner")
    status = action("status", handle_status, "a release and its replicas: state, node, "
                                             "restarts, message")
    status.add_argument("name")
    scale = action("scale", handle_scale, "change the number of replicas (the surplus "
                                          "drains)")
    scale.add_argument("name")
    scale.add_argument("replicas", type=int)
    _waits(scale, "every replica serves")
    rollout = action("rollout", handle_rollout, "move to another version without downtime")
    rollout.add_argument("name")
    rollout.add_argument("model", help="NAME@VERSION or NAME@ALIAS")
    _waits(rollout, "only the new version serves")
    canary = action("canary", handle_canary, "start a canary (NAME MODEL --percent P) or "
                                             "change its share (NAME --percent P)")
    canary.add_argument("name")
    canary.add_argument("model", nargs="?", help="the canary's version (omit to change the "
                                                 "share of the running canary)")
    canary.add_argument("--percent", type=float, required=True,
                        help="share of requests, above 0 and below 100")
    canary.add_argument("--replicas", type=int, default=1, help="the canary's replicas")
    canary.add_argument("--no-guard", action="store_true",
                        help="no automatic rollback when the canary does worse than the "
                             "stable version")
    _waits(canary, "the canary's replicas are ready")
    promote = action("promote", handle_promote, "make the canary's version the release's")
    promote.add_argument("name")
    _waits(promote, "only the promoted version serves")
    rollback = action("rollback", handle_rollback, "roll the canary back (it stops at once)")
    rollback.add_argument("name")
    rollback.add_argument("--reason", default="", help="kept in the history")
    stop = action("stop", handle_stop, "stop a release (the name stays yours)")
    stop.add_argument("name")
    keys = action("keys", handle_keys, "a release's API keys: list, --create, --revoke")
    keys.add_argument("name")
    which = keys.add_mutually_exclusive_group()
    which.add_argument("--create", metavar="NOTE", help="a new key (printed this once)")
    which.add_argument("--revoke", metavar="ID", help="revoke key ID")
    history = action("history", handle_history, "every change to a release, oldest first")
    history.add_argument("name")
    monitor = action("monitor", handle_monitor, "traffic, latency, errors and input drift "
                                                "per version over a window")
    monitor.add_argument("name")
    monitor.add_argument("--window", type=float, default=3600, help="seconds back (3600)")
    log = action("log", handle_log, "a replica's model-server output (the last 256 KB)")
    log.add_argument("name")
    log.add_argument("replica", help="its id (`loophub serve status NAME`)")
