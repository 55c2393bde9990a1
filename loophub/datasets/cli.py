"""``loophub data``: offline ``convert`` and ``validate`` (no hub needed).

The online actions (import/export/commit/log/diff against a running platform) are
added to the same ``data`` sub-parser by the client CLI; ``register`` returns it.
"""

from __future__ import annotations

import argparse
import sys

from loophub.client.cli import client_from, guarded, online, when
from loophub.datasets.formats import FORMATS, convert, validate_source
from loophub.errors import NotFound


def _progress_printer(enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    bar = tqdm(unit=" records", file=sys.stderr, leave=False)

    def update(count: int) -> None:
        bar.n = count
        if count % 1000 == 0:
            bar.refresh()
    return update


def handle_convert(args: argparse.Namespace) -> int:
    count = convert(args.source_format, args.src, args.target_format, args.dst,
                    progress=_progress_printer(not args.quiet))
    print(f"converted {count} records from {args.source_format} {args.src} to "
          f"{args.target_format} {args.dst}")
    return 0


def handle_validate(args: argparse.Namespace) -> int:
    count = validate_source(args.format, args.src)
    print(f"{args.src}: {count} records, valid {args.format}")
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``data`` with ``convert`` and ``validate``; returns the ``data`` parser whose
    ``actions`` sub-parsers (``parser.actions``) can take more actions."""
    data = subparsers.add_parser("data", help="convert, validate and version datasets",
                                 description="Dataset tools. FMT is one of: "
                                 + ", ".join(FORMATS))
    actions = data.add_subparsers(dest="data_action", metavar="ACTION", required=True)
    data.actions = actions  # for the online actions added elsewhere
    conv = actions.add_parser("convert", help="convert between formats (offline)")
    conv.add_argument("--from", dest="source_format", required=True, choices=list(FORMATS),
                      metavar="FMT")
    conv.add_argument("--to", dest="target_format", required=True, choices=list(FORMATS),
                      metavar="FMT")
    conv.add_argument("src", help="file, folder or zip to read")
    conv.add_argument("dst", help="file or folder to write")
    conv.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    conv.set_defaults(func=guarded(handle_convert))
    val = actions.add_parser("validate", help="check a dataset file or folder (offline)")
    val.add_argument("--format", required=True, choices=list(FORMATS), metavar="FMT")
    val.add_argument("src")
    val.set_defaults(func=guarded(handle_validate))
    registeronline(actions)
    return data


# -- online actions: the same operations against a running platform ---------------------


def handle_import(args: argparse.Namespace) -> int:
    client = client_from(args)
    if args.create:
        client.datasets.create(args.name)
    try:
        report = client.datasets.import_(args.name, args.src, args.format,
                                         progress=not args.quiet)
    except NotFound:
        if args.create or _exists(client, args.name):
            raise
        raise NotFound(f"no dataset named {args.name!r}: add --create to create it "
                       f"(`loophub data import {args.name} {args.src} --format {args.format} "
                       "--create`), or check the name") from None
    print(f"imported {report['records']} records into {args.name} "
          f"({report['media_stored']} media files stored)")
    return 0


def handle_export(args: argparse.Namespace) -> int:
    path = client_from(args).datasets.export(args.name, args.dst, args.format, version=args.version,
                                             dense_ids=args.dense_ids)
    print(f"wrote {path}")
    return 0


def handle_commit(args: argparse.Namespace) -> int:
    version = client_from(args).datasets.commit(args.name, args.message)
    print(f"committed version {version['number']} of {args.name}")
    return 0


def _exists(client, name: str) -> bool:
    try:
        client.datasets.get(name)
    except NotFound:
        return False
    return True


def handle_log(args: argparse.Namespace) -> int:
    versions = client_from(args).datasets.log(args.name, limit=args.limit)
    if not versions:
        print(f"{args.name} has no versions yet: its records are in the draft; "
              f"`loophub data commit {args.name} -m MESSAGE` makes version 1")
    for v in versions:
        tags = f" [{', '.join(v.get('tags') or [])}]" if v.get("tags") else ""
        print(f"v{v['number']}{tags}  {when(v.get('created'))}  {v.get('author', '')}  "
              f"{v.get('records', '')} records  {v.get('message', '')}")
    return 0


def handle_diff(args: argparse.Namespace) -> int:
    diff = client_from(args).datasets.diff(args.name, args.base, args.target)
    target = "draft" if diff["target"] == "draft" else f"v{diff['target_number']}"
    print(f"v{diff['base_number']} -> {target}: "
          f"{len(diff['added_ids'])} added, {len(diff['removed_ids'])} removed, "
          f"{len(diff['changed_ids'])} changed")
    for label, change in sorted((diff.get("label_change") or {}).items()):
        print(f"  {label}: {change:+d}")
    return 0


def registeronline(actions) -> None:
    imp = online(actions.add_parser("import", help="import a file, folder or zip (online)"))
    imp.add_argument("name")
    imp.add_argument("src")
    imp.add_argument("--format", required=True, choices=list(FORMATS), metavar="FMT")
    imp.add_argument("--create", action="store_true", help="create the dataset first")
    imp.add_argument("-q", "--quiet", action="store_true")
    imp.set_defaults(func=guarded(handle_import))
    exp = online(actions.add_parser("export", help="export a version (online)"))
    exp.add_argument("name")
    exp.add_argument("dst")
    exp.add_argument("--format", default="loophub", choices=list(FORMATS), metavar="FMT")
    exp.add_argument("--version", default="head")
    exp.add_argument("--dense-ids", action="store_true",
                     help="yolo: class indices 0..n-1 instead of the class ids (e.g. COCO's "
                          "category ids, kept in data.yaml's category_ids)")
    exp.set_defaults(func=guarded(handle_export))
    com = online(actions.add_parser("commit", help="commit the draft (online)"))
    com.add_argument("name")
    com.add_argument("-m", "--message", required=True)
    com.set_defaults(func=guarded(handle_commit))
    log = online(actions.add_parser("log", help="list versions (online)"))
    log.add_argument("name")
    log.add_argument("--limit", type=int, default=50)
    log.set_defaults(func=guarded(handle_log))
    dif = online(actions.add_parser("diff", help="diff two versions (online)"))
    dif.add_argument("name")
    dif.add_argument("base")
    dif.add_argument("target", nargs="?", default="head",
                     help="a version, or 'draft' for the uncommitted changes (default: head)")
    dif.set_defaults(func=guarded(handle_diff))

