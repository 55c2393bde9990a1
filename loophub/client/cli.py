"""What every online `loophub` command shares: the --url/--token/--home options, the
Client they give, and errors printed as one line with exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from loophub.client.core import Client
from loophub.errors import InvalidInput, LoophubError, Unauthenticated

TOKEN_HELP = "pass --token or set LOOPHUB_TOKEN to a token from `loophub token NAME`"


def online(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--url", help="API root, e.g. http://127.0.0.1:8000/services/loophub/api")
    parser.add_argument("--token", help="hub API token (default: $LOOPHUB_TOKEN; "
                                        "`loophub token NAME` makes one)")
    parser.add_argument("--home", help="LOOPHUB_HOME of a local `loophub up`")
    return parser


def client_from(args: argparse.Namespace) -> Client:
    """A Client from --url/--token, else LOOPHUB_API_URL / LOOPHUB_TOKEN, else the
    platform `loophub up` runs in --home (its run.json)."""
    from loophub.settings import Settings

    url = args.url or os.environ.get("LOOPHUB_API_URL")
    if not url:
        run = Settings.from_env(args.home).home / "run.json"
        if not run.exists():
            raise InvalidInput("no running platform found: pass --url, set LOOPHUB_API_URL, or "
                               "start one with `loophub up`")
        url = json.loads(Path(run).read_text())["url"] + "/services/loophub/api"
    token = (args.token or os.environ.get("LOOPHUB_TOKEN")
             or os.environ.get("JUPYTERHUB_API_TOKEN"))
    if not token:
        raise Unauthenticated(f"no API token: {TOKEN_HELP}")
    return Client(url, token)


def when(text: str | None) -> str:
    """An API time (ISO 8601) for a terminal: '2026-12-06 14:03:07 UTC', always with
    its zone (a time without one is UTC, as the API stores it)."""
    if not text:
        return ""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """HANDLER with errors as one line on stderr and exit code 2. A token the API
    refuses is explained for the terminal (the API's own message speaks of headers,
    notebooks and browsers)."""
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except Unauthenticated as exc:
            message = exc.message if exc.message.startswith("no API token") else (
                f"the hub did not accept the API token (from --token, else $LOOPHUB_TOKEN): "
                f"it may be mistyped, expired or revoked; {TOKEN_HELP}")
            print(f"error: {message}", file=sys.stderr)
            return 2
        except LoophubError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return run
