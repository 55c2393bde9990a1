"""Which production inputs go back to labeling: pure rules over a release's request-log
records (serving/requestlog.py) and the flags its callers set (releases/NAME/feedback).

An input is a *candidate* per instance of a logged request. The rules:

- ``low_confidence``: the model's top score under ``threshold``, least sure first;
- ``flagged``: a caller flagged the answer (the label they say is right travels along);
- ``drifted``: a summary feature (brightness, ink, length, oov ...) outside the middle
  99% of the training data's reference sample, farthest out first;
- ``random``: a uniform sample (``seed``), for an unbiased estimate of production
  accuracy.

A candidate is *collectable* when the log kept its content: an image stored in the blob
store, or a text shorter than the log's cut. Pixel arrays are logged as hashes only.
Candidates are deduplicated by content (the first request wins).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from loophub.errors import InvalidInput
from loophub.releases.logformat import MAX_TEXT

RULES = ("low_confidence", "flagged", "drifted", "random")
REFERENCE_QUANTILES = (0.005, 0.995)  # "unlike the training data": outside these


@dataclass
class Candidate:
    request_id: str | None
    time: float
    version: str | None
    instance: int
    input: dict
    output: dict
    features: dict
    feedback: dict | None = None
    why: dict = field(default_factory=dict)  # what the rule saw (score, feature, flag)

    @property
    def content_sha(self) -> str | None:
        """The content's sha256 (an image's as logged; a text's computed), None when
        the log did not keep the content."""
        if self.input.get("image_sha256") and self.input.get("stored"):
            return self.input["image_sha256"]
        text = self.input.get("text")
        if isinstance(text, str) and len(text) < MAX_TEXT:
            return hashlib.sha256(text.encode()).hexdigest()
        return None

    @property
    def score(self) -> float | None:
        score = self.output.get("score")
        if score is None and self.output.get("scores"):
            score = min(self.output["scores"])
        return float(score) if isinstance(score, (int, float)) else None


def candidates(records: Iterable[dict], feedback: Iterable[dict] = ()) -> list[Candidate]:
    """One candidate per answered instance of the successful requests, with the flags of
    FEEDBACK (``{"request_id", "instance", "label", "by", "note"}``) attached."""
    flags = {(f["request_id"], f.get("instance", 0)): f for f in feedback}
    out = []
    for record in records:
        if record.get("status") != 200:
            continue
        inputs, outputs = record.get("inputs") or [], record.get("outputs") or []
        features = record.get("features") or [{}] * len(inputs)
        for n, (given, answer) in enumerate(zip(inputs, outputs, strict=False)):
            rid = record.get("id")
            out.append(Candidate(rid, float(record.get("time", 0)), record.get("version"), n,
                                 given, answer, features[n] if n < len(features) else {},
                                 flags.get((rid, n))))
    return out


def choose(found: list[Candidate], rule: str, *, limit: int = 100, threshold: float = 0.6,
           reference: Mapping[str, Any] | None = None, seed: int = 0) -> list[Candidate]:
    """Up to LIMIT collectable candidates by RULE, best first, one per content."""
    if rule not in RULES:
        raise InvalidInput(f"rule: {rule!r} is not a rule; choose one of {', '.join(RULES)}",
                           detail={"field": "rule"})
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10000:
        raise InvalidInput("limit: a whole number of inputs from 1 to 10000",
                           detail={"field": "limit"})
    pool = [c for c in found if c.content_sha is not None]
    if rule == "low_confidence":
        if not 0 < threshold <= 1:
            raise InvalidInput("threshold: a score between 0 and 1", detail={
                "field": "threshold"})
        picked = [replace(c, why={"score": c.score, "threshold": threshold}) for c in sorted(
            (c for c in pool if c.score is not None and c.score < threshold),
            key=lambda c: (c.score, c.time))]
    elif rule == "flagged":
        picked = [replace(c, why={"flagged_by": c.feedback.get("by"),
                                  "label": c.feedback.get("label")})
                  for c in sorted((c for c in pool if c.feedback is not None),
                                  key=lambda c: c.time)]
    elif rule == "drifted":
        picked = _outliers(pool, reference)
    else:
        shuffled = list(pool)
        random.Random(seed).shuffle(shuffled)
        picked = [replace(c, why={"seed": seed}) for c in shuffled]
    return _unique(picked)[:limit]


def _outliers(pool: list[Candidate], reference: Mapping[str, Any] | None) -> list[Candidate]:
    """Candidates with a feature outside the reference's middle 99%, farthest out (in
    units of that range's width) first."""
    if not reference or not reference.get("features"):
        raise InvalidInput("rule: 'drifted' needs the training data's reference sample, and "
                           "this release's version was registered without its dataset",
                           detail={"field": "rule"})
    bounds = {name: np.quantile(np.asarray(values, dtype=np.float64), REFERENCE_QUANTILES)
              for name, values in reference["features"].items() if len(values) >= 20}
    scored = []
    for c in pool:
        worst, name_of = 0.0, None
        for name, (low, high) in bounds.items():
            value = c.features.get(name)
            if not isinstance(value, (int, float)):
                continue
            width = max(high - low, 1e-9)
            out = max(low - value, value - high, 0.0) / width
            if out > worst:
                worst, name_of = out, name
        if name_of is not None:
            scored.append((worst, replace(c, why={
                "feature": name_of, "value": c.features[name_of],
                "reference_range": [float(x) for x in bounds[name_of]],
                "distance": round(worst, 4)})))
    return [c for _, c in sorted(scored, key=lambda pair: -pair[0])]


def _unique(picked: list[Candidate]) -> list[Candidate]:
    seen: set[str] = set()
    out = []
    for c in picked:
        if c.content_sha not in seen:
            seen.add(c.content_sha)
            out.append(c)
    return out
