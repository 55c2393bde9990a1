"""The HTML pages the API service serves in a browser: the landing page (the platform's
front door) and the admins' fairness view.

They follow JupyterHub's look rather than inventing one: the templates use the hub's own
stylesheet (Bootstrap, served by the hub at /hub/static/) and the hub's navigation bar,
and their data comes from the same domain calls, with the same access rules, as the JSON
routes (a user's landing page lists what ``GET api/datasets`` etc. would answer them).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import plotly
from jinja2 import Environment, FileSystemLoader, select_autoescape
from jupyterhub.services.auth import HubOAuthenticated
from tornado import escape, web

from loophub.access import Actor
from loophub.errors import LoophubError
from loophub.releases.apps import TEMPLATES
from loophub.scheduler.fairshare import dominant_and_fair_shares

from .base import actor_from_model, in_thread

PAGES = Path(__file__).parent
# plotly.js ships inside the plotly package the platform already installs (the notebook
# widgets draw with it): the fairness charts need no CDN and no npm package.
PLOTLY_JS = Path(plotly.__file__).parent / "package_data"
LISTED = 50  # rows per section; the API's routes page through the rest
RECENT_JOBS = 10
# beside the platform's own JSONL, the format each task is most often taken elsewhere in
TASK_FORMAT = {"image_classification": "imagefolder", "object_detection": "coco",
               "text_classification": "csv", "ner": "conll"}


@cache
def templates() -> Environment:
    return Environment(loader=FileSystemLoader(PAGES), autoescape=select_autoescape(["html"]))


class PageHandler(HubOAuthenticated, web.RequestHandler):
    """A page in the hub's look, for a signed-in hub user (HubOAuth's cookie)."""

    title = "loophub"

    @property
    def ctx(self):
        return self.settings["loophub"]

    @property
    def actor(self) -> Actor:
        return actor_from_model(self.current_user)

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")

    def render_page(self, template: str, **values: Any) -> None:
        user = self.current_user
        hub_prefix = getattr(self.hub_auth, "hub_prefix", "/hub/") or "/hub/"
        self.finish(templates().get_template(template).render(
            title=self.title, prefix=self.ctx.prefix, hub=hub_prefix,
            base_url=hub_prefix.removesuffix("hub/"), user=user["name"], app_tasks=TEMPLATES,
            admin=bool(user.get("admin")), xsrf=escape.to_unicode(self.xsrf_token), **values))


class LandingHandler(PageHandler):
    """/services/loophub/: what the signed-in user has on the platform, each with its next
    step; for admins also the pool and the queue."""

    @web.authenticated
    async def get(self) -> None:
        actor = self.actor
        summary = await in_thread(front_door, self.ctx, actor)
        if actor.admin:
            summary["pool"] = pool_summary(self.ctx)
        self.render_page("landing.html", **summary)


class FairnessHandler(PageHandler):
    """The admins' fairness view: utilisation over time, dominant against fair shares, the
    queue with reasons, who stopped what, releases, usage."""

    title = "loophub · fairness"

    @web.authenticated
    def get(self) -> None:
        if not self.current_user.get("admin"):
            raise web.HTTPError(403, "the fairness view is for hub admins")
        self.render_page("fairness.html")


class ReleasesPageHandler(PageHandler):
    """/services/loophub/releases: every release the user may read (admins: all) with its
    health at a glance over the last five minutes, each linked to its dashboard."""

    title = "loophub · releases"

    @web.authenticated
    async def get(self) -> None:
        rows = await in_thread(release_health, self.ctx, self.actor)
        self.render_page("releases.html", releases=rows)


class DashboardHandler(PageHandler):
    """/services/loophub/releases/NAME/dashboard: a release's monitoring dashboard, for
    its owner and admins (charts drawn from ``api/releases/NAME/monitoring``)."""

    title = "loophub · dashboard"

    @web.authenticated
    async def get(self, name: str) -> None:
        try:
            view = await in_thread(self.ctx.releases.get, self.actor, name)
            await in_thread(self.ctx.releases.check, self.actor, name, "manage")
        except LoophubError as exc:  # unseen: 404; seen but not theirs to watch: 403
            raise web.HTTPError(exc.status, exc.message) from None
        self.render_page("dashboard.html", release=view,
                         public_url=f"{self.ctx.public_url}/services/models/{name}/")


class SharesHandler(PageHandler):
    """The fairness page's share chart: each tenant's dominant share beside its fair share.
    Fetched by the page's script: a missing identity is a 401, not a redirect to the hub's
    login that a fetch would follow in circles."""

    def get(self) -> None:
        if self.current_user is None:
            raise web.HTTPError(401, "sign in to the hub in this browser")
        if not self.current_user.get("admin"):
            raise web.HTTPError(403, "the fairness view is for hub admins")
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"tenants": tenant_shares(self.ctx.scheduler.service.state)}))


# --- what the pages show ------------------------------------------------------------------


def front_door(ctx, actor: Actor) -> dict:
    """The landing page's sections, each from the room's own listing for ACTOR (so a user
    sees exactly what the JSON routes would show them)."""
    return {
        "datasets": [dataset_row(ctx, actor, d)
                     for d in ctx.datasets.list_datasets(actor)[:LISTED]],
        "jobs": ctx.jobs.store.list(actor, limit=RECENT_JOBS),
        "models": ctx.models.list(actor, limit=LISTED),
        "releases": ctx.releases.list(actor)[:LISTED],
    }


def dataset_row(ctx, actor: Actor, dataset: dict) -> dict:
    """A dataset with its records and labeling progress (the labeling room's count)."""
    progress = ctx.labeling.progress(actor, dataset["name"])
    total = progress["total"]
    task = (dataset.get("label_schema") or {}).get("task", "")
    return {**dataset, "records": total, "done": progress["done"],
            "labeled": progress["labeled"], "mine": progress["mine"],
            "percent": round(100 * progress["done"] / total) if total else 0, "task": task,
            "export_formats": ["loophub", *([TASK_FORMAT[task]] if task in TASK_FORMAT else [])]}


def pool_summary(ctx) -> dict:
    """Nodes with what is used of each resource, and how many requests wait and run."""
    service = ctx.scheduler.service
    view = service.pool_view()
    nodes = [{"name": n["name"], "used": {k: used_fraction(n, k) for k in ("cpu", "mem", "gpu")},
              "capacity": n["capacity"]} for n in view["nodes"]]
    waiting = [r for r in service.queue() if r["state"] == "queued"]
    return {"policy": view["policy"], "nodes": nodes, "queued": view["queued"],
            "running": view["running"], "waiting": waiting[:RECENT_JOBS]}


def used_fraction(node: dict, key: str) -> float | None:
    capacity = node["capacity"].get(key, 0)
    if not capacity:
        return None
    return 1 - node["free"].get(key, 0) / capacity


def tenant_shares(state) -> list[dict]:
    """Each tenant with work (held or queued): its dominant share of the pool and the
    resource it is on, its weight, and its fair share as the scheduler reckons it
    (weighted, water-filled: none above what it holds and asks for)."""
    tenants = sorted(state.active_tenants())
    dominant, fair = dominant_and_fair_shares(state, tenants)
    out = []
    for tenant, share, fair_share in zip(tenants, dominant.tolist(), fair.tolist(),
                                         strict=True):
        held = state.shares(tenant)
        out.append({"tenant": tenant, "weight": state.tenant_weight(tenant),
                    "dominant_share": share, "fair_share": fair_share,
                    "dominant_resource": state.keys[int(held.argmax())] if share else ""})
    return sorted(out, key=lambda t: (-t["dominant_share"], t["tenant"]))


HEALTH_WINDOW_S = 300


def release_health(ctx, actor: Actor) -> list[dict]:
    """The releases ACTOR may read, each with its traffic, errors, p99 and drift flag over
    the last HEALTH_WINDOW_S seconds (the monitoring report's figures)."""
    out = []
    for release in ctx.releases.list(actor)[:LISTED]:
        report = ctx.monitor.report(release, HEALTH_WINDOW_S, with_series=False)
        summary, drift = report["summary"], report["drift"]
        flags = [d.get("drifted") for d in drift.values()]
        out.append({**release, "requests_per_s": summary["requests_per_s"],
                    "error_rate": summary["error_rate"],
                    "p99_ms": summary["latency_ms"]["p99"],
                    "drifted": True if any(flags) else (None if all(
                        f is None for f in flags) else False)})
    return out


def page_routes(prefix: str) -> list[tuple]:
    return [
        (prefix, LandingHandler),
        (prefix + "releases", ReleasesPageHandler),
        (prefix + "releases/([^/]+)/dashboard", DashboardHandler),
        (prefix + r"static/(pages\.js)", web.StaticFileHandler, {"path": str(PAGES)}),
        (prefix + "fairness", FairnessHandler),
        (prefix + "fairness/shares", SharesHandler),
        (prefix + r"static/(plotly\.min\.js)", web.StaticFileHandler, {"path": str(PLOTLY_JS)}),
    ]
