"""``Client().serving``: model versions served as REST services behind the hub.

    rel = client.serving.release("digits", "digits@champion", replicas=2,
                                 per_replica={"cpu": 1, "mem": "1G"}, access="hub")
    rel                                  # in a notebook: version, status, replicas, URL
    rel.predict([{"pixels": image}])     # through the hub, as you (numpy arrays welcome)
    rel.rollout("digits@v4")             # new replicas beside the old, then the switch
    rel.canary("digits@v5", percent=10)  # then rel.promote() or rel.rollback("why")
    rel.create_key("shop front-end")     # for applications outside the hub: shown once

A change that starts replicas (release, scale, rollout, canary, promote) waits by default
until it serves, polling the release; a replica that stops on the way (its model cannot
load, it kept crashing) ends the wait with the replica's own words, so a notebook never
waits out the timeout for something that will not come. ``wait=False`` returns as soon as
the API has accepted the change.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urljoin

from loophub import errors

if TYPE_CHECKING:
    from loophub.client.core import Client

POLL = 0.5  # seconds between looks at a release while waiting


class Serving:
    def __init__(self, client: Client) -> None:
        self.client = client

    def _path(self, name: str, *parts: str) -> str:
        return "/".join(["releases", quote(name, safe=""), *parts])

    def _post(self, name: str, part: str, body: dict | None = None) -> dict:
        if body is None:  # a route without a body refuses even an empty one
            return self.client.request("POST", self._path(name, part))
        return self.client.request("POST", self._path(name, part), json=body)

    # -- releasing and reading ---------------------------------------------------------------

    def release(self, name: str, model: str, *, replicas: int = 1,
                per_replica: Mapping[str, Any] | None = None, access: str = "hub",
                options: Mapping[str, Any] | None = None, wait: bool = True,
                timeout: float = 300) -> Release:
        """Serve MODEL (NAME@VERSION or NAME@ALIAS, resolved now) as release NAME at
        /services/models/NAME/. PER_REPLICA: {"cpu": 1, "mem": "1G", "gpu": 0} each;
        ACCESS: "hub" (every hub user), "group:NAME" or "public-token" (API keys only,
        besides you); OPTIONS: batching, max_batch_size, max_wait_ms, log_sample_rate,
        sticky_header. WAIT: until every replica serves (each first waits its turn in
        the fair queue)."""
        body: dict[str, Any] = {"name": name, "model": model, "replicas": replicas,
                                "access": access}
        if per_replica is not None:
            body["per_replica"] = dict(per_replica)
        if options is not None:
            body["options"] = dict(options)
        release = Release(self, self.client.request("POST", "releases", json=body))
        if wait:
            release.wait_serving(timeout=timeout)
        return release

    def get(self, name: str) -> Release:
        return Release(self, self.view(name))

    def view(self, name: str) -> dict:
        """The release's view: version, status, ready/replicas, replica_list, canary."""
        return self.client.request("GET", self._path(name))

    def list(self, owner: str | None = None, stopped: bool = False) -> list[Release]:
        """The releases you can call (yours, your groups', hub-wide ones); STOPPED: the
        stopped ones too."""
        params: dict[str, Any] = {"stopped": "true" if stopped else "false"}
        if owner:
            params["owner"] = owner
        views = self.client.request("GET", "releases", params=params)["releases"]
        return [Release(self, view) for view in views]

    # -- changing (each returns the release's view) ----------------------------------------

    def scale(self, name: str, replicas: int) -> dict:
        return self._post(name, "scale", {"replicas": replicas})

    def rollout(self, name: str, model: str) -> dict:
        return self._post(name, "rollout", {"model": model})

    def canary(self, name: str, model: str, *, percent: float = 10, replicas: int = 1,
               guard: bool | Mapping[str, float] | None = None) -> dict:
        body: dict[str, Any] = {"model": model, "percent": percent, "replicas": replicas}
        if guard is not None:
            body["guard"] = guard if isinstance(guard, bool) else dict(guard)
        return self._post(name, "canary", body)

    def set_canary(self, name: str, percent: float) -> dict:
        return self.client.request("PATCH", self._path(name, "canary"),
                                   json={"percent": percent})

    def promote(self, name: str) -> dict:
        return self._post(name, "promote")

    def rollback(self, name: str, reason: str = "") -> dict:
        return self._post(name, "rollback", {"reason": reason})

    def stop(self, name: str) -> dict:
        return self.client.request("DELETE", self._path(name))

    # -- history, keys, logs ---------------------------------------------------------------

    def history(self, name: str) -> list[dict]:
        return self.client.request("GET", self._path(name, "history"))["history"]

    def keys(self, name: str) -> list[dict]:
        return self.client.request("GET", self._path(name, "keys"))["keys"]

    def create_key(self, name: str, note: str = "") -> dict:
        return self.client.request("POST", self._path(name, "keys"), json={"note": note})

    def revoke_key(self, name: str, key_id: str) -> dict:
        return self.client.request("DELETE", self._path(name, "keys", quote(key_id, safe="")))

    def monitoring(self, name: str, window: float = 3600) -> dict:
        """Traffic, latency, errors, classes, confidence and drift over the last WINDOW
        seconds (``GET releases/NAME/monitoring``)."""
        return self.client.request("GET", self._path(name, "monitoring"),
                                   params={"window": window})

    def log(self, name: str, replica_id: str) -> str:
        return self.client.raw("GET", self._path(name, "replicas",
                                                 quote(replica_id, safe=""), "log")).text

    # -- calling ---------------------------------------------------------------------------

    def predict(self, url: str, instances: Any, *, full: bool = False) -> list | dict:
        """POST {"instances": INSTANCES} to the release at URL (its view's, relative to the
        API's host when the platform runs without a public URL), as this client's user.
        The predictions; FULL: the whole answer (predictions, model, request_id)."""
        from loophub.client.core import retrying

        if not url:
            raise errors.InvalidInput("predict: the release has no URL; refresh() it")
        instances = jsonable(instances)
        if not isinstance(instances, list):
            raise errors.InvalidInput("predict: instances is a list (or an array) of "
                                      'instances, e.g. [{"pixels": image}]')
        target = urljoin(self.client.url + "/", url).rstrip("/") + "/predict"
        body = {"instances": instances}
        resp = retrying(lambda: self.client.session.post(target, json=body,
                                                         timeout=self.client.timeout),
                        self.client.patience)
        if resp.status_code >= 400:
            raise self.client.error(resp)
        return resp.json() if full else resp.json()["predictions"]

    def flag(self, name: str, request_id: str, *, label: str | None = None,
             instance: int = 0, note: str = "") -> dict:
        body = {"request_id": request_id, "instance": instance, "note": note}
        if label is not None:
            body["label"] = label
        return self.client.request("POST", self._path(name, "feedback"), json=body)

    def feedback(self, name: str, limit: int = 1000) -> list[dict]:
        return self.client.request("GET", self._path(name, "feedback"),
                                   params={"limit": limit})["feedback"]


def jsonable(value: Any) -> Any:
    """VALUE with numpy arrays and scalars (and torch tensors) as plain lists and numbers,
    so a notebook can send what it holds; anything else is left to the JSON encoder."""
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    tolist = getattr(value, "tolist", None)
    if callable(tolist) and not isinstance(value, str | bytes):
        return tolist()
    return value


class Release:
    """A release as a notebook shows it: its view (``release.view``, as the API gave it
    last; ``refresh()`` reads it again) and what can be done with it."""

    def __init__(self, serving: Serving, view: dict) -> None:
        self.serving, self.view = serving, view

    # -- what it is ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.view["name"]

    @property
    def url(self) -> str:
        return self.view.get("url", "")

    @property
    def dashboard_url(self) -> str:
        """Its monitoring dashboard in a browser (owner and admins)."""
        return self.view.get("dashboard", "")

    @property
    def app_url(self) -> str:
        """Its web app for end users (anyone who may call the release; empty for a task
        without an app)."""
        return self.view.get("app", "")

    @property
    def status(self) -> str:
        """stopped, waiting (nothing ready), serving, updating (a rollout) or degraded."""
        return self.view["status"]

    @property
    def version(self) -> str:
        return self.view["version"]

    @property
    def ready(self) -> int:
        return self.view.get("ready", 0)

    @property
    def replicas(self) -> int:
        return self.view.get("replicas", 0)

    @property
    def canary_view(self) -> dict | None:
        """The canary in progress (model, version, percent, replicas, since), or None."""
        return self.view.get("canary")

    def __repr__(self) -> str:
        canary = self.canary_view
        extra = f", canary {canary['version']} at {canary['percent']:g}%" if canary else ""
        return (f"<release {self.name} {self.version}: {self.status}, {self.ready}/"
                f"{self.replicas} ready{extra} at {self.url or '-'}>")

    def _repr_html_(self) -> str:
        canary = self.canary_view
        rows = [("release", self.name), ("version", self.version), ("status", self.status),
                ("ready", f"{self.ready}/{self.replicas}"),
                ("canary", f"{canary['version']} at {canary['percent']:g}%" if canary
                 else "-"), ("access", self.view.get("access", ""))]
        cells = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                        f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>"
                        for k, v in rows)
        links = "".join(
            f"<tr><th style='text-align:left'>{name}</th><td style='text-align:left'>"
            + (f"<a href='{html.escape(href)}' target='_blank'>{html.escape(href)}</a>"
               if href else "-") + "</td></tr>"
            for name, href in (("URL", self.url), ("app", self.app_url),
                               ("dashboard", self.dashboard_url)))
        return f"<table>{cells}{links}</table>"

    def refresh(self) -> Release:
        self.view = self.serving.view(self.name)
        return self

    # -- calling ---------------------------------------------------------------------------

    def predict(self, instances: Any, *, full: bool = False) -> list | dict:
        """The predictions for INSTANCES (e.g. [{"pixels": array}] or [{"text": ...}]),
        through the hub's gateway as you; numpy arrays become lists on the way. FULL:
        the whole answer, with the ``request_id`` a wrong answer is flagged by."""
        return self.serving.predict(self.url, instances, full=full)

    def flag(self, request_id: str, *, label: str | None = None, instance: int = 0,
             note: str = "") -> dict:
        """Say an answer was wrong (REQUEST_ID from ``predict(..., full=True)``), and
        which LABEL is right: the feedback loop collects flagged inputs for labeling
        (``Client().loop.collect(release, into=..., rule="flagged")``)."""
        return self.serving.flag(self.name, request_id, label=label, instance=instance,
                                 note=note)

    def feedback(self, limit: int = 1000) -> list[dict]:
        """The flags on this release's answers, newest first (owner and admins)."""
        return self.serving.feedback(self.name, limit)

    # -- changing --------------------------------------------------------------------------

    def _changed(self, view: dict) -> Release:
        self.view = view
        return self

    def scale(self, replicas: int, *, wait: bool = True, timeout: float = 300) -> Release:
        """REPLICAS replicas: new ones queue in the fair scheduler (WAIT: until they
        serve), the surplus drains before this returns."""
        self._changed(self.serving.scale(self.name, replicas))
        if wait:
            self.wait_serving(timeout=timeout)
        return self

    def rollout(self, model: str, *, wait: bool = True, timeout: float = 300) -> Release:
        """Move to MODEL without downtime (WAIT: until it serves the new version only)."""
        self._changed(self.serving.rollout(self.name, model))
        if wait:
            self.wait_serving(timeout=timeout)
        return self

    def canary(self, model: str, *, percent: float = 10, replicas: int = 1,
               guard: bool | Mapping[str, float] | None = None, wait: bool = True,
               timeout: float = 300) -> Release:
        """MODEL takes PERCENT of the requests (WAIT: until its replicas are ready).
        GUARD: the platform rolls the canary back by itself when it is worse than the
        stable version (the API's defaults; a dict of error_margin, latency_ratio,
        latency_floor_ms, min_requests; False: never)."""
        self._changed(self.serving.canary(self.name, model, percent=percent,
                                          replicas=replicas, guard=guard))
        if wait:
            self.wait_canary(timeout=timeout)
        return self

    def set_canary(self, percent: float) -> Release:
        return self._changed(self.serving.set_canary(self.name, percent))

    def promote(self, *, wait: bool = True, timeout: float = 300) -> Release:
        """The canary's version becomes the release's (WAIT: until only it serves)."""
        self._changed(self.serving.promote(self.name))
        if wait:
            self.wait_serving(timeout=timeout)
        return self

    def rollback(self, reason: str = "") -> Release:
        """The canary leaves the route at once and stops; REASON goes to the history."""
        return self._changed(self.serving.rollback(self.name, reason))

    def stop(self) -> Release:
        return self._changed(self.serving.stop(self.name))

    # -- history, keys, logs ---------------------------------------------------------------

    def history(self) -> list[dict]:
        """Every change, oldest first: at, actor, action, detail."""
        return self.serving.history(self.name)

    def keys(self) -> list[dict]:
        """The API keys (id, prefix, note, created, revoked), never the keys themselves."""
        return self.serving.keys(self.name)

    def create_key(self, note: str = "") -> dict:
        """A new API key for applications outside the hub ('Authorization: Bearer KEY');
        ``["key"]`` is shown this once: keep it now."""
        return self.serving.create_key(self.name, note)

    def revoke_key(self, key_id: str) -> dict:
        return self.serving.revoke_key(self.name, key_id)

    def monitoring(self, window: float = 3600) -> dict:
        """The release's figures over the last WINDOW seconds, per version, and the drift
        of its inputs against each version's training data."""
        return self.serving.monitoring(self.name, window)

    def log(self, replica_id: str) -> str:
        """A replica's model-server output, the last 256 KB (ids: ``view["replica_list"]``)."""
        return self.serving.log(self.name, replica_id)

    # -- waiting ---------------------------------------------------------------------------

    def wait_serving(self, *, timeout: float = 300) -> Release:
        """Until the release serves its version with every replica it wants."""
        version = self.version
        return self._wait(lambda v: v["status"] == "serving" and v["version"] == version,
                          lambda r: r["role"] == "stable" and r["version"] == version,
                          f"serving {version}", timeout)

    def wait_canary(self, *, timeout: float = 300) -> Release:
        """Until the canary's replicas are ready."""
        canary = self.canary_view
        if not canary:
            raise errors.Conflict(f"release {self.name!r} has no canary")
        version = canary["version"]

        def done(view: dict) -> bool:
            ready = [r for r in view["replica_list"]
                     if r["role"] == "canary" and r["state"] == "ready"]
            return len(ready) >= canary["replicas"]

        def still_canary(view: dict) -> None:
            if (view.get("canary") or {}).get("version") != version:
                raise errors.Conflict(f"release {self.name!r}: the canary {version} ended "
                                      "while it started (rolled back or promoted)")

        return self._wait(done, lambda r: r["role"] == "canary" and r["version"] == version,
                          f"canary {version} ready", timeout, check=still_canary)

    def _wait(self, done: Callable[[dict], bool], watched: Callable[[dict], bool],
              what: str, timeout: float, check: Callable[[dict], None] | None = None
              ) -> Release:
        """Poll until DONE. A WATCHED replica that leaves the release (it stopped: the
        view lists live replicas only) ends the wait with its last words."""
        deadline = time.monotonic() + timeout
        seen: dict[str, dict] = {}
        while True:
            view = self.view
            if done(view):
                return self
            if view["status"] == "stopped":
                raise errors.Conflict(f"release {self.name!r} was stopped before {what}")
            if check is not None:
                check(view)
            live = {r["id"]: r for r in view["replica_list"] if watched(r)}
            if gone := [r for rid, r in seen.items() if rid not in live]:
                raise errors.Unavailable(self._stopped_message(gone[0], what))
            seen.update(live)
            if time.monotonic() > deadline:
                raise errors.Unavailable(self._late_message(what, timeout))
            time.sleep(POLL)
            self.refresh()

    def _stopped_message(self, replica: dict, what: str) -> str:
        """Why a replica stopped: the view no longer lists it, so its log's last lines."""
        try:
            lines = self.log(replica["id"]).strip().splitlines()[-3:]
            tail = " | ".join(lines) or "its log is empty"
        except errors.NotFound:
            tail = "it left no log (it never started)"
        except errors.LoophubError as exc:  # e.g. a group member, who may not read logs
            tail = f"its log is not readable here ({exc.message})"
        return (f"release {self.name!r} is not {what}: replica {replica['id']} "
                f"({replica['version']}) stopped; last seen {replica['state']}: "
                f"{replica['message']}; {tail}. `loophub serve status {self.name}` shows "
                "the others")

    def _late_message(self, what: str, timeout: float) -> str:
        waiting = [f"{r['id']} {r['version']} {r['state']}: {r['message']}"
                   for r in self.view["replica_list"] if r["state"] != "ready"]
        return (f"release {self.name!r} is not {what} after {timeout:g} s (status "
                f"{self.status}, {self.ready}/{self.replicas} ready)"
                + ("; " + "; ".join(waiting) if waiting else ""))
