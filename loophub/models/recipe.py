"""The ``evaluate`` recipe: how the training runner runs an evaluation, so evaluations are
queued, placed and accounted like every job (no second executor).

Its rank (one: an evaluation is not split) loads the version's artifact as the job's owner
(TorchScript, no user code), predicts the materialized dataset version's split, reports
the result to the registry, and keeps the headline numbers as the job's final metrics.
Submitted only through POST models/NAME/versions/V/evaluations (it is not a training
recipe: training/jobs refuses it).
"""

from __future__ import annotations

from typing import Any

from loophub.training.recipes import Recipe

TASKS = ("image_classification", "text_classification", "ner", "object_detection")
EVALUATE = "evaluate"
HEADLINE = ("accuracy", "macro_f1", "micro_f1", "ece", "precision", "recall", "f1", "map",
            "map_50", "map_75")


def run_evaluation(ctx) -> dict[str, Any]:
    from loophub.client import Client
    from loophub.models.evaluation import evaluate_version
    from loophub.models.predictor import Predictor

    p = ctx.params
    client = Client(patience=60)  # as the job's owner: the runner gave the rank its token
    view = client.models.get(p["model"])
    predictor = Predictor.load(client.models.artifact(p["model"]), view["meta"])
    split = p.get("split") or None
    if split and not ctx.version.count(split):
        raise ValueError(f"dataset {p.get('dataset', '')} has no records in split {split!r}; "
                         f"its splits: {', '.join(ctx.version.splits()) or 'none'}")
    ctx.log(f"evaluating {view['ref']} on {split or 'every split'} "
            f"({ctx.version.count(split)} records)")
    slices = [field for field in (p.get("slices") or "").split(",") if field]
    result = evaluate_version(predictor, ctx.version, split, slices)
    if p.get("checks"):
        import json

        from loophub.models.checks import run_checks

        result["checks"] = run_checks(predictor, json.loads(p["checks"]))
        ctx.log(f"checks: {sum(c['passed'] for c in result['checks'])} of "
                f"{len(result['checks'])} passed")
    client.models.put_evaluation(p["model"], p["evaluation"], job=ctx.job_id, result=result)
    metrics = result.get("metrics") or {}
    ctx.final(**{k: float(metrics[k]) for k in HEADLINE
                 if isinstance(metrics.get(k), int | float)},
              count=float(result["count"]), **{f"{k}_s": float(v) for k, v in
                                                 (result.get("timing") or {}).items()})
    ctx.log(f"evaluated {result['count']} records ({result['skipped']} skipped)")
    return {}


RECIPE = Recipe(EVALUATE, TASKS,
                "evaluate a registered model version on a dataset version (submitted with "
                "POST models/NAME/versions/V/evaluations)",
                params={"model": ("", "the version, NAME@vN"),
                        "evaluation": ("", "the evaluation's id"),
                        "split": ("test", "the split to evaluate ('' for every record)"),
                        "slices": ("", "slice fields, comma-separated"),
                        "dataset": ("", "NAME@vN, for messages"),
                        "checks": ("", "the version's example and invariance tests (JSON)")},
                train=run_evaluation, internal=True)
