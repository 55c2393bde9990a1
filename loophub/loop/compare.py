"""Champion against challenger, side by side (pure): the rows a retrain shows, from the
two versions' evaluations on the fixed held-out split and on the production slice."""

from __future__ import annotations

from typing import Any

PRODUCTION = ("metadata.source", "production")  # the slice of collected records


def scalar_metrics(result: dict | None, slice_: tuple[str, str] | None = None) -> dict:
    """The numeric metrics of an evaluation RESULT (of its SLICE (field, value) when
    given); {} when there are none (nothing scored)."""
    if not result:
        return {}
    metrics = result.get("metrics") or {}
    if slice_ is not None:
        field, value = slice_
        metrics = ((result.get("slices") or {}).get(field) or {}).get(value) or {}
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def side_by_side(on: str, champion: dict, challenger: dict) -> list[dict]:
    """One row per metric both have: {on, metric, champion, challenger, change}."""
    return [{"on": on, "metric": name, "champion": champion[name],
             "challenger": challenger[name], "change": challenger[name] - champion[name]}
            for name in sorted(champion.keys() & challenger.keys())]


def comparison_html(comparison: dict[str, Any]) -> str:
    """The comparison as an HTML table (a notebook shows it)."""
    from html import escape

    head = (f"<p><b>{escape(comparison['champion'])}</b> (champion) against "
            f"<b>{escape(comparison['challenger'])}</b> (challenger, training job "
            f"{escape(str(comparison.get('job') or ''))})</p>")
    rows = "".join(
        f"<tr><td>{escape(r['on'])}</td><td>{escape(r['metric'])}</td>"
        f"<td>{r['champion']:.4f}</td><td>{r['challenger']:.4f}</td>"
        f"<td style='color:{_colour(r['change'])}'>{r['change']:+.4f}</td></tr>"
        for r in comparison["rows"])
    return (head + "<table><tr><th>on</th><th>metric</th><th>champion</th>"
            f"<th>challenger</th><th>change</th></tr>{rows}</table>")


def _colour(change: float) -> str:
    return "green" if change > 0 else "crimson" if change < 0 else "inherit"
