"""The feedback loop from a notebook: production inputs back to labeling."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from loophub.client.core import Client


class Loop:
    def __init__(self, client: Client) -> None:
        self.client = client

    def collect(self, release: Any, *, into: str, rule: str = "low_confidence",
                limit: int = 100, threshold: float | None = None,
                window_s: float | None = None, seed: int | None = None) -> dict:
        """Copy up to LIMIT of RELEASE's production inputs into dataset INTO's draft as
        unlabeled records (provenance in ``metadata``, the model's answer as a
        pre-annotation), chosen by RULE:

        - ``"low_confidence"``: top score under THRESHOLD (default 0.6), least sure first;
        - ``"flagged"``: answers callers flagged (``release.flag(...)``), with their label;
        - ``"drifted"``: inputs unlike the training data (a summary feature outside its
          middle 99%);
        - ``"random"``: a uniform sample (SEED), for an unbiased production estimate.

        Inputs already in the dataset are skipped (by content). Over the last WINDOW_S
        seconds of the request logs (default 7 days). The answer says how many were
        collected, matched, already there, and not kept by the log (pixel arrays).
        Labelers show them with the "from production" filter."""
        body: dict[str, Any] = {"dataset": into, "rule": rule, "limit": limit}
        for key, value in (("threshold", threshold), ("window_s", window_s), ("seed", seed)):
            if value is not None:
                body[key] = value
        return self.client.request("POST", _path(release, "collect"), json=body)

    def retrain(self, champion: str, *, dataset: str, params: dict | None = None,
                warm_start: bool = False, held_out: str | None = None, split: str = "test",
                register_as: str | None = None, progress: bool = True,
                timeout: float | None = None) -> Comparison:
        """Train a challenger with CHAMPION's training job spec (a model version, e.g.
        "digits@champion": same recipe or function, workers and parameters, PARAMS
        changed) on DATASET (the new version, NAME@vN), from the champion's own weights
        when WARM_START (fine-tuning: the recipe's ``init_from``; it keeps what the champion
        knew, so the challenger rarely loses on the old data), register it as a new version of
        REGISTER_AS (default: the champion's model), and evaluate both on the fixed
        held-out SPLIT of HELD_OUT (default: the dataset version the champion learnt
        from) and on the production slice of DATASET's SPLIT (records collected from a
        release and labeled since, that neither model trained on). Waits for the jobs;
        the two side by side."""
        from loophub import errors
        from loophub.loop.compare import PRODUCTION, scalar_metrics, side_by_side

        models, training = self.client.models, self.client.training
        champ = models.get(champion)
        if not champ.get("job"):
            raise errors.InvalidInput(f"retrain: {champ['ref']} was registered without a "
                                      "training job, so there is no spec to reuse; train "
                                      "it with client.training.run and register the job")
        spec = dict(training.view(champ["job"])["spec"])
        kept = dict(spec.get("params") or {})
        # a fine-tuned champion's own start is not a parameter to reuse
        start = {"init_from": champ["ref"]} if warm_start else (
            {"init_from": ""} if "init_from" in kept else {})
        spec.update(dataset=dataset,
                    params={**kept, **start, **(params or {})})
        spec.pop("name", None)
        job = training.submit(spec)
        job.wait(progress=progress, timeout=timeout)
        challenger = models.register(register_as or champ["model"], job=job)
        held_out = held_out or champ["dataset"]
        if not held_out:
            raise errors.InvalidInput("retrain: held_out= names the dataset version to "
                                      f"compare on ({champ['ref']} has no dataset lineage)")
        fixed, production = {}, {}
        for side, ref in (("champion", champ["ref"]), ("challenger", challenger["ref"])):
            fixed[side] = models.evaluate(ref, dataset=held_out, split=split,
                                          progress=progress, timeout=timeout)
            production[side] = models.evaluate(ref, dataset=dataset, split=split,
                                               slices=[PRODUCTION[0]], progress=progress,
                                               timeout=timeout)
        on_fixed, on_production = f"{held_out} {split}", f"{dataset} {split} from production"
        rows = side_by_side(on_fixed, *(scalar_metrics(_result(fixed[s]))
                                        for s in ("champion", "challenger")))
        rows += side_by_side(on_production, *(scalar_metrics(_result(production[s]), PRODUCTION)
                                              for s in ("champion", "challenger")))
        return Comparison(champion=champ["ref"], challenger=challenger["ref"], job=job.id,
                          held_out={"dataset": held_out, "split": split, **fixed},
                          production={"dataset": dataset, "slice": "/".join(PRODUCTION),
                                      **production}, rows=rows)

    def promote(self, release: Any, challenger: str, *, percent: float = 10,
                observe_s: float = 300, min_requests: int = 50, alias: str = "champion",
                replicas: int = 1, progress: bool = True, timeout: float | None = None
                ) -> dict:
        """Promote CHALLENGER (a model version) on RELEASE safely, in three gates:

        1. its tests pass (the champion's tests are given to it when it has none): else
           no traffic reaches it;
        2. it serves PERCENT of the release's requests as a canary (the platform's guard
           rolls it back by itself when its error rate or p99 is worse than the stable
           version's) until MIN_REQUESTS of them are answered, at most OBSERVE_S
           seconds: rolled back, or too little traffic to judge, stops here (the
           canary stays for you to promote or roll back later);
        3. the release moves to it (no request fails) and ALIAS points at it, which the
           model's alias history records with the canary's figures.

        Returns ``{"promoted": bool, "stage": "tests" | "canary" | "promoted", "why",
        "challenger", "canary": {"requests", "error_rate"}, "tests": ...}``."""
        from loophub import errors

        models = self.client.models
        version = models.get(challenger)
        exact, name = version["ref"], version["model"]
        outcome: dict[str, Any] = {"challenger": exact, "release": _name(release)}
        if not version["tests"]:
            champion = _alias_version(models, name, alias)
            if champion is None or not champion["tests"]:
                raise errors.Conflict(f"{exact} has no tests and {name}@{alias} none to "
                                      "lend it; set them with models.set_tests")
            models.set_tests(exact, champion["tests"], reason=f"the tests of {champion['ref']}")
        tests = models.test(exact, progress=progress, timeout=timeout)
        outcome["tests"] = tests
        if tests["status"] != "passed":
            failed = [r for r in tests["results"] if not r["passed"]]
            return {**outcome, "promoted": False, "stage": "tests",
                    "why": f"{len(failed)} of {len(tests['results'])} tests failed"}
        served = self.client.serving.get(_name(release))
        served.canary(exact, percent=percent, replicas=replicas,
                      timeout=timeout or 300)
        judged = self._observe(served, exact, observe_s, min_requests)
        outcome["canary"] = judged
        if judged.get("rolled_back"):
            return {**outcome, "promoted": False, "stage": "canary",
                    "why": f"the guard rolled the canary back: {judged['rolled_back']}"}
        if judged["requests"] < min_requests:
            return {**outcome, "promoted": False, "stage": "canary",
                    "why": f"{judged['requests']} canary requests in {observe_s:g} s, fewer "
                           f"than {min_requests}: too little to judge (the canary stays)"}
        served.promote(timeout=timeout or 300)
        models.alias(name, alias, version["version"], reason=(
            f"promoted on release {served.name} after a {percent:g}% canary: "
            f"{judged['requests']} requests, error rate {judged['error_rate']}"))
        return {**outcome, "promoted": True, "stage": "promoted",
                "why": f"{name}@{alias} is {exact}; release {served.name} serves it"}

    def _observe(self, served: Any, version: str, observe_s: float,
                 min_requests: int) -> dict:
        """The canary's requests and error rate once MIN_REQUESTS were answered or
        OBSERVE_S passed; with ``rolled_back`` (the reason) if the guard rolled it back."""
        started = time.monotonic()
        while True:
            served.refresh()
            if not served.canary_view or served.canary_view.get("version") != version:
                rollbacks = [h for h in served.history() if h["action"] == "rollback"]
                why = (rollbacks[-1]["detail"] or {}).get("reason", "") if rollbacks else ""
                return {"requests": 0, "error_rate": None, "rolled_back": why or "stopped"}
            elapsed = time.monotonic() - started
            report = served.monitoring(window=elapsed + 5)
            side = (report["summary"].get("versions") or {}).get(version) or {}
            seen = {"requests": side.get("requests", 0), "error_rate": side.get("error_rate")}
            if seen["requests"] >= min_requests or elapsed >= observe_s:
                return seen
            time.sleep(1.0)

    def lineage(self, release: Any) -> dict:
        """The chain behind RELEASE: model version -> training job -> dataset versions ->
        where their records and labels came from (imports, labelers, production)."""
        return self.client.request("GET", _path(release, "lineage"))

    def used_by(self, dataset: str, version: str | int = "head") -> dict:
        """The model versions trained or evaluated on DATASET@VERSION and the releases
        serving them."""
        return self.client.request("GET", f"datasets/{quote(dataset, safe='')}/used-by",
                                   params={"version": str(version)})

    def schedule(self, release: Any, *, into: str, rule: str, every_s: int,
                 limit: int = 100, threshold: float | None = None,
                 seed: int | None = None) -> dict:
        """Have the platform ``collect`` every EVERY_S seconds (over the last
        2 x max(EVERY_S, 1 h) of logs each time), as you by name; each run's outcome is
        in ``schedules()``."""
        body: dict[str, Any] = {"dataset": into, "rule": rule, "limit": limit,
                                "every_s": every_s}
        for key, value in (("threshold", threshold), ("seed", seed)):
            if value is not None:
                body[key] = value
        return self.client.request("POST", _path(release, "collect", "schedules"), json=body)

    def schedules(self, release: Any) -> list[dict]:
        return self.client.request("GET", _path(release, "collect", "schedules"))["schedules"]

    def unschedule(self, release: Any, schedule_id: str) -> dict:
        return self.client.request("DELETE", _path(release, "collect", "schedules",
                                                   schedule_id))


def _name(release: Any) -> str:
    return release if isinstance(release, str) else release.name


def _alias_version(models: Any, name: str, alias: str) -> dict | None:
    from loophub import errors

    try:
        return models.get(f"{name}@{alias}")
    except errors.NotFound:
        return None


def _result(evaluation: dict) -> dict:
    return evaluation.get("result") or {}


def _path(release: Any, *parts: str) -> str:
    return "/".join(["releases", *(quote(p, safe="") for p in (_name(release), *parts))])


class Comparison(dict):
    """What ``retrain`` gives back: a dict (champion, challenger, job, held_out,
    production, rows) that a notebook shows as a side-by-side table."""

    def _repr_html_(self) -> str:
        from loophub.loop.compare import comparison_html

        return comparison_html(self)

    def __repr__(self) -> str:
        """The rows as text (the evaluations themselves are in the dict)."""
        lines = [f"{self['champion']} (champion) against {self['challenger']} (challenger)"]
        lines += [f"  {r['on']:<40} {r['metric']:<16} {r['champion']:.4f} -> "
                  f"{r['challenger']:.4f} ({r['change']:+.4f})" for r in self["rows"]
                  if r["metric"] in ("accuracy", "macro_f1", "f1", "map", "count")]
        return "\n".join(lines)
