"""Small inline SVG charts for the versioning widgets (no plotting library needed, so
they render the same in JupyterLab, Voila and a saved notebook)."""

from __future__ import annotations

from html import escape

BASE_COLOR, TARGET_COLOR = "#9db4e8", "#4363d8"
UP, DOWN = "#2e7d32", "#b00020"


def bars(counts: dict[str, int], *, width: int = 420, color: str = TARGET_COLOR,
         title: str = "") -> str:
    """A horizontal bar chart of label counts."""
    if not counts:
        return "<em>no labels yet</em>"
    top = max(counts.values()) or 1
    row, label_w = 20, 110
    height = row * len(counts) + (22 if title else 4)
    y0 = 18 if title else 2
    parts = [f'<svg class="lh-chart" width="{width}" height="{height}" '
             f'xmlns="http://www.w3.org/2000/svg" font-size="12" font-family="sans-serif">']
    if title:
        parts.append(f'<text x="0" y="12" font-weight="bold">{escape(title)}</text>')
    for i, (label, n) in enumerate(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))):
        y = y0 + i * row
        w = (width - label_w - 50) * n / top
        parts.append(f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">'
                     f'{escape(label)}</text>'
                     f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" '
                     f'fill="{color}"><title>{escape(label)}: {n}</title></rect>'
                     f'<text x="{label_w + w + 4:.1f}" y="{y + 13}">{n}</text>')
    parts.append("</svg>")
    return "".join(parts)


def change_bars(base: dict[str, int], target: dict[str, int], *, width: int = 520,
                base_name: str = "base", target_name: str = "target") -> str:
    """Paired bars per label (base light, target dark) with the signed change beside them."""
    labels = sorted(set(base) | set(target), key=lambda k: (-target.get(k, 0), k))
    if not labels:
        return "<em>no labels in either version</em>"
    top = max([*base.values(), *target.values(), 1])
    row, label_w, span = 30, 110, width - 110 - 70
    height = row * len(labels) + 26
    parts = [f'<svg class="lh-chart lh-change" width="{width}" height="{height}" '
             f'xmlns="http://www.w3.org/2000/svg" font-size="12" font-family="sans-serif">',
             f'<rect x="{label_w}" y="2" width="10" height="10" fill="{BASE_COLOR}"/>'
             f'<text x="{label_w + 14}" y="11">{escape(base_name)}</text>'
             f'<rect x="{label_w + 120}" y="2" width="10" height="10" fill="{TARGET_COLOR}"/>'
             f'<text x="{label_w + 134}" y="11">{escape(target_name)}</text>']
    for i, label in enumerate(labels):
        y = 20 + i * row
        old, new = base.get(label, 0), target.get(label, 0)
        delta = new - old
        sign = f"+{delta}" if delta > 0 else str(delta)
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 16}" text-anchor="end">{escape(label)}</text>'
            f'<rect x="{label_w}" y="{y + 2}" width="{span * old / top:.1f}" height="11" '
            f'fill="{BASE_COLOR}"><title>{escape(base_name)}: {old}</title></rect>'
            f'<rect x="{label_w}" y="{y + 14}" width="{span * new / top:.1f}" height="11" '
            f'fill="{TARGET_COLOR}"><title>{escape(target_name)}: {new}</title></rect>'
            f'<text x="{label_w + span + 6}" y="{y + 18}" '
            f'fill="{UP if delta > 0 else DOWN if delta < 0 else "#666"}">'
            f'{old}→{new} ({sign})</text>')
    parts.append("</svg>")
    return "".join(parts)
