"""Inter-annotator agreement, pure functions over records' user annotations.

Classes: Cohen's kappa for two annotators, Fleiss' kappa over items rated by the same
number of annotators. Boxes: F1 of IoU-matched boxes (same label, IoU >= threshold).
Spans: F1 of exactly matching (start, end, label) spans. Each item also gets a score in
[0, 1] so the review queue can show the most disputed items first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from itertools import combinations

CLASS_TYPES = ("image_class", "text_class")


def user_annotations(record: dict) -> dict[str, list[dict]]:
    """A record's annotations grouped by the user who made them (models and imports left out)."""
    out: dict[str, list[dict]] = {}
    for ann in record.get("annotations", ()):
        source = ann.get("source") or {}
        if source.get("kind") == "user" and (ann.get("review") or {}).get("state") != "rejected":
            out.setdefault(source["name"], []).append(ann)
    return out


def class_choice(annotations: list[dict]) -> str:
    """One comparable value for a labeler's class annotations (sorted labels for multi-label)."""
    return "|".join(sorted(a["label"] for a in annotations if a.get("type") in CLASS_TYPES))


def cohen_kappa(pairs: Iterable[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two raters' labels; None without data, 1.0 when both agree on a
    single category (chance agreement 1 makes the formula undefined)."""
    pairs = list(pairs)
    if not pairs:
        return None
    n = len(pairs)
    observed = sum(a == b for a, b in pairs) / n
    left, right = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(left[c] * right[c] for c in left) / (n * n)
    if expected >= 1.0:
        return 1.0 if observed == 1.0 else 0.0
    return (observed - expected) / (1 - expected)


def fleiss_kappa(items: Iterable[list[str]]) -> float | None:
    """Fleiss' kappa; every item must carry the same number (>= 2) of ratings."""
    items = [list(ratings) for ratings in items]
    if not items:
        return None
    raters = len(items[0])
    if raters < 2 or any(len(r) != raters for r in items):
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of ratings per item")
    totals: Counter[str] = Counter()
    per_item = 0.0
    for ratings in items:
        counts = Counter(ratings)
        totals.update(counts)
        per_item += (sum(c * c for c in counts.values()) - raters) / (raters * (raters - 1))
    p_bar = per_item / len(items)
    all_ratings = len(items) * raters
    p_e = sum((c / all_ratings) ** 2 for c in totals.values())
    if p_e >= 1.0:
        return 1.0 if p_bar == 1.0 else 0.0
    return (p_bar - p_e) / (1 - p_e)


def iou(a: list[float], b: list[float]) -> float:
    """Intersection over union of two [x, y, w, h] boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def box_f1(left: list[dict], right: list[dict], threshold: float = 0.5) -> float:
    """F1 of greedy IoU matching (highest IoU first) between two labelers' boxes."""
    boxes_l = [a for a in left if a.get("type") == "bbox"]
    boxes_r = [a for a in right if a.get("type") == "bbox"]
    if not boxes_l and not boxes_r:
        return 1.0
    candidates = sorted(((iou(a["bbox"], b["bbox"]), i, j)
                         for i, a in enumerate(boxes_l) for j, b in enumerate(boxes_r)
                         if a["label"] == b["label"]), reverse=True)
    used_l, used_r, matched = set(), set(), 0
    for overlap, i, j in candidates:
        if overlap < threshold:
            break
        if i not in used_l and j not in used_r:
            used_l.add(i)
            used_r.add(j)
            matched += 1
    return 2 * matched / (len(boxes_l) + len(boxes_r))


def span_f1(left: list[dict], right: list[dict]) -> float:
    """F1 of exact (start, end, label) matches between two labelers' spans."""
    spans_l = {(a["start"], a["end"], a["label"]) for a in left if a.get("type") == "span"}
    spans_r = {(a["start"], a["end"], a["label"]) for a in right if a.get("type") == "span"}
    if not spans_l and not spans_r:
        return 1.0
    return 2 * len(spans_l & spans_r) / (len(spans_l) + len(spans_r))


def pair_score(task: str, left: list[dict], right: list[dict]) -> float:
    if task == "object_detection":
        return box_f1(left, right)
    if task == "ner":
        return span_f1(left, right)
    return 1.0 if class_choice(left) == class_choice(right) else 0.0


def item_agreement(task: str, by_user: dict[str, list[dict]]) -> float | None:
    """Mean pairwise agreement of one item's labelers; None with fewer than two."""
    users = sorted(by_user)
    if len(users) < 2:
        return None
    scores = [pair_score(task, by_user[a], by_user[b]) for a, b in combinations(users, 2)]
    return sum(scores) / len(scores)


def dataset_agreement(task: str, records: Iterable[dict]) -> dict:
    """Agreement over every record with two or more labelers.

    Returns the mean item agreement, Cohen's kappa per pair of labelers and Fleiss' kappa
    (class tasks), and the per-item scores, most disputed first.
    """
    items: list[dict] = []
    pair_votes: dict[tuple[str, str], list[tuple[str, str]]] = {}
    by_size: dict[int, list[list[str]]] = {}
    for record in records:
        by_user = user_annotations(record)
        score = item_agreement(task, by_user)
        if score is None:
            continue
        users = sorted(by_user)
        items.append({"record_id": record["id"], "agreement": score, "annotators": users})
        if task in ("image_classification", "text_classification"):
            choices = {u: class_choice(by_user[u]) for u in users}
            for a, b in combinations(users, 2):
                pair_votes.setdefault((a, b), []).append((choices[a], choices[b]))
            by_size.setdefault(len(users), []).append([choices[u] for u in users])
    items.sort(key=lambda item: (item["agreement"], item["record_id"]))
    result: dict = {"task": task, "items": len(items),
                    "mean_agreement": (sum(i["agreement"] for i in items) / len(items)
                                       if items else None),
                    "per_item": items}
    if pair_votes:
        result["cohen_kappa"] = {f"{a}|{b}": cohen_kappa(votes)
                                 for (a, b), votes in sorted(pair_votes.items())}
        size, rated = max(by_size.items(), key=lambda kv: len(kv[1]))
        result["fleiss_kappa"] = {"raters": size, "items": len(rated),
                                  "kappa": fleiss_kappa(rated)}
    return result


def is_done(people: int, labeled: bool, overlap: int) -> bool:
    """Whether an item counts as done: OVERLAP people labeled it, or it carries labels
    (from an import) that no person has labeled over yet."""
    return people >= overlap or (labeled and people == 0)
