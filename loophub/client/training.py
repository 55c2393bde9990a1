"""``Client().training``: train a model on a dataset version, fairly scheduled, on Dask.

    job = client.training.run("image-cnn", dataset="digits@v1", workers=2,
                              per_worker={"cpu": 1, "mem": "2G"}, params={"epochs": 20})
    job                  # in a notebook: live curves, state, queue position, log, Stop
    job.wait()           # a progress bar; returns the result (metrics, artifact, lineage)

or with the analyst's own function, shipped from the notebook (cloudpickle)::

    def train(ctx):
        ...                                  # see loophub.training.context.TrainContext
    job = client.training.run(train, dataset="digits@v1", workers=2)
"""

from __future__ import annotations

import hashlib
import inspect
import io
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from loophub import errors
from loophub.client.jobs import finished

if TYPE_CHECKING:
    from loophub.client.core import Client

ACTIVE = ("queued", "starting", "running", "preempted", "retrying")


class Training:
    def __init__(self, client: Client) -> None:
        self.client = client

    def _job(self, job_id: str, *parts: str) -> str:
        return "/".join(["training/jobs", quote(job_id, safe=""), *parts])

    # -- submitting ------------------------------------------------------------------------

    def recipes(self) -> list[dict]:
        return self.client.request("GET", "training/recipes")["recipes"]

    def run(self, what: str | Callable, *, dataset: str, workers: int = 1,
            per_worker: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None,
            preemptible: bool = False, max_retries: int = 2,
            checkpoint_every: int | None = None, keep_checkpoints: int = 2,
            max_runtime: float | None = None, name: str | None = None) -> Job:
        """Submit a training job: WHAT is a recipe's name or your own function (it gets a
        TrainContext); DATASET is NAME@VERSION. Returns at once with the queued job."""
        spec: dict[str, Any] = {
            "dataset": dataset, "workers": workers, "per_worker": dict(per_worker or {}),
            "params": dict(params or {}), "preemptible": preemptible,
            "max_retries": max_retries, "checkpoint_every": checkpoint_every,
            "keep_checkpoints": keep_checkpoints, "max_runtime": max_runtime, "name": name}
        if isinstance(what, str):
            spec["recipe"] = what
        elif callable(what):
            spec["function"] = self._ship(what)
        else:
            raise errors.InvalidInput("run(what): a recipe name or a function taking a ctx")
        return self.submit(spec)

    def submit(self, spec: Mapping[str, Any]) -> Job:
        """Submit a job spec as the API takes it (a job view's ``spec``: what ``run``
        builds, or an earlier job's, changed); the queued job."""
        view = self.client.request("POST", "training/jobs",
                                   json={k: v for k, v in spec.items() if v is not None})
        return Job(self, view)

    def _ship(self, function: Callable) -> dict:
        """The function, cloudpickled by value (so the notebook's own code travels with
        it), uploaded; only the job's workers, acting as you, ever load it."""
        import cloudpickle

        module = inspect.getmodule(function)
        if module is not None and module.__name__ not in ("__main__", "builtins"):
            cloudpickle.register_pickle_by_value(module)
        try:
            payload = cloudpickle.dumps(function)
        except Exception as exc:
            raise errors.InvalidInput(f"your function cannot be pickled: {exc}; define it "
                                      "in the notebook and use only what it can import") from exc
        finally:
            if module is not None and module.__name__ not in ("__main__", "builtins"):
                cloudpickle.unregister_pickle_by_value(module)
        try:
            source = inspect.getsource(function)
        except (OSError, TypeError):
            source = ""
        digest = self.client.datasets.upload(io.BytesIO(payload))["digest"]
        return {"blob": digest, "sha256": hashlib.sha256(payload).hexdigest(),
                "name": getattr(function, "__qualname__", "function"), "source": source}

    # -- reading ---------------------------------------------------------------------------

    def jobs(self, *, state: str | None = None, limit: int = 50) -> list[Job]:
        params = {"limit": limit, **({"state": state} if state else {})}
        return [Job(self, view) for view in
                self.client.request("GET", "training/jobs", params=params)["jobs"]]

    def get(self, job_id: str) -> Job:
        return Job(self, self.client.request("GET", self._job(job_id)))

    def view(self, job_id: str) -> dict:
        return self.client.request("GET", self._job(job_id))

    def cancel(self, job_id: str) -> dict:
        return self.client.request("DELETE", self._job(job_id))

    def metrics(self, job_id: str, after: int = 0) -> dict:
        return self.client.request("GET", self._job(job_id, "metrics"), params={"after": after})

    def logs(self, job_id: str, after: int = 0) -> dict:
        return self.client.request("GET", self._job(job_id, "logs"), params={"after": after})

    def events(self, job_id: str) -> list[dict]:
        return self.client.request("GET", self._job(job_id, "events"))["events"]

    def checkpoints(self, job_id: str) -> list[dict]:
        return self.client.request("GET", self._job(job_id, "checkpoints"))["checkpoints"]

    def blob(self, job_id: str, digest: str) -> bytes:
        return self.client.raw("GET", self._job(job_id, "blobs", digest), timeout=None).content

    # -- the ranks' side (as the job's owner) -------------------------------------------------

    def post_metrics(self, job_id: str, rows: list[dict]) -> None:
        self.client.request("POST", self._job(job_id, "metrics"), json={"metrics": rows})

    def post_logs(self, job_id: str, rank: int, lines: list[str]) -> None:
        self.client.request("POST", self._job(job_id, "logs"),
                            json={"rank": rank, "lines": lines})

    def put_checkpoint(self, job_id: str, data: bytes, step: int, epoch: float | None,
                       metric: float | None) -> str:
        digest = self.client.datasets.upload(io.BytesIO(data))["digest"]
        body = {"blob": digest, "step": step, "epoch": epoch, "metric": metric}
        self.client.request("POST", self._job(job_id, "checkpoints"),
                            json={k: v for k, v in body.items() if v is not None})
        return digest

    def latest_checkpoint(self, job_id: str) -> bytes | None:
        latest = self.client.request("GET", self._job(job_id, "checkpoints"))["checkpoints"]
        if not latest:
            return None
        return self.blob(job_id, latest[-1]["digest"])

    def put_artifact(self, job_id: str, data: bytes, meta: dict) -> str:
        digest = self.client.datasets.upload(io.BytesIO(data))["digest"]
        self.client.request("POST", self._job(job_id, "artifact"),
                            json={"blob": digest, "meta": meta})
        return digest


class ApiChannel:
    """A rank's channel to the platform (loophub.training.context.Channel), as the owner."""

    def __init__(self, training: Training, job_id: str, poll: float = 1.0) -> None:
        self.training, self.job_id, self.poll = training, job_id, poll
        self._checked, self._stop = 0.0, None

    def metrics(self, rows: list[dict]) -> None:
        self.training.post_metrics(self.job_id, rows)

    def log(self, rank: int, lines: list[str]) -> None:
        self.training.post_logs(self.job_id, rank, lines)

    def put_checkpoint(self, data: bytes, step: int, epoch: float | None,
                       metric: float | None) -> str:
        return self.training.put_checkpoint(self.job_id, data, step, epoch, metric)

    def latest_checkpoint(self) -> bytes | None:
        return self.training.latest_checkpoint(self.job_id)

    def put_artifact(self, data: bytes, meta: dict) -> str:
        return self.training.put_artifact(self.job_id, data, meta)

    def model_artifact(self, ref: str) -> tuple[bytes, dict]:
        models = self.training.client.models  # read as the job's owner
        return models.artifact(ref), models.get(ref)["meta"]

    def stop_requested(self) -> str | None:
        if time.monotonic() - self._checked >= self.poll:
            self._checked = time.monotonic()
            self._stop = self.training.view(self.job_id).get("stop_requested")
        return self._stop


class Job:
    """A training job as a notebook shows it (``job.widget()``, or the cell's output)."""

    def __init__(self, training: Training, view: dict) -> None:
        self.training, self.view = training, view

    @property
    def id(self) -> str:
        return self.view["id"]

    @property
    def state(self) -> str:
        return self.view["state"]

    def __repr__(self) -> str:
        return (f"<training job {self.id[:8]} {self.view['spec'].get('recipe') or 'function'} "
                f"on {self.view.get('dataset')}: {self.state} — {self.view.get('message', '')}>")

    def refresh(self) -> Job:
        self.view = self.training.view(self.id)
        return self

    def cancel(self) -> dict:
        self.view = self.training.cancel(self.id)
        return self.view

    def metrics(self) -> list[dict]:
        """Every metric point so far (step, epoch, name, value)."""
        points, after = [], 0
        while True:
            page = self.training.metrics(self.id, after)
            points += page["metrics"]
            if page["next"] == after or not page["metrics"]:
                return points
            after = page["next"]

    def logs(self) -> str:
        out, after = [], 0
        while True:
            page = self.training.logs(self.id, after)
            out += [f"[{x['rank']}] {x['line']}" for x in page["lines"]]
            if not page["lines"]:
                return "\n".join(out)
            after = page["next"]

    def wait(self, *, progress: bool = True, poll: float = 1.0,
             timeout: float | None = None) -> dict:
        """Wait for the job to end (a progress bar of steps); its result, or its error."""
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=0, desc=f"train {self.id[:8]}", unit="step")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                self.refresh()
                if bar is not None:
                    bar.n = self.view.get("step") or 0
                    bar.set_postfix_str(f"{self.state}: {self.view.get('message', '')}"[:80],
                                        refresh=False)
                    bar.refresh()
                if self.state not in ACTIVE:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise errors.Unavailable(f"job {self.id} still {self.state} after "
                                             f"{timeout:g} s")
                time.sleep(poll)
        finally:
            if bar is not None:
                bar.close()
        return finished(self.view)

    def widget(self):
        """Live curves, state, queue position and reason, log tail, and a Stop button (the
        ``job`` entry point of ``loophub.notebook_widgets``)."""
        from importlib.metadata import entry_points

        found = [e for e in entry_points(group="loophub.notebook_widgets") if e.name == "job"]
        if not found:
            raise errors.InvalidInput("the job widget is not installed (loophub's widgets)")
        return found[0].load()(self)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget())
