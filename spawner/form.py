"""The spawn options form: the user's profiles plus a custom size within limits."""

from __future__ import annotations

import math
from html import escape

from loophub.pool import GIB, readable_bytes

from .profiles import CUSTOM, Limits, Profile


def render_form(profiles: list[Profile], limits: Limits, allow_custom: bool,
                previous: dict | None = None, pool_note: str = "") -> str:
    previous = previous or {}
    chosen = previous.get("profile") or next(
        (p.slug for p in profiles if p.default), profiles[0].slug if profiles else CUSTOM)
    rows = []
    for p in profiles:
        checked = " checked" if p.slug == chosen else ""
        rows.append(
            f'<label class="loophub-profile"><input type="radio" name="profile" '
            f'value="{escape(p.slug)}"{checked}> <b>{escape(p.display_name)}</b> '
            f'<span class="text-muted">{escape(p.summary())}'
            f'{" · " + escape(p.description) if p.description else ""}</span></label>'
        )
    if allow_custom:
        checked = " checked" if chosen == CUSTOM else ""
        display = "flex" if chosen == CUSTOM else "none"
        gpu_field = (
            f'<label>GPUs <input type="number" name="gpu" min="0" max="{limits.gpu}" step="1" '
            f'value="{escape(str(previous.get("gpu", 0)))}" class="form-control"></label>'
            if limits.gpu else '<input type="hidden" name="gpu" value="0">'
        )
        rows.append(
            f'<label class="loophub-profile"><input type="radio" name="profile" '
            f'value="{CUSTOM}"{checked}> <b>Custom size</b> <span class="text-muted">up to '
            f'{limits.cpu:g} CPU, {readable_bytes(limits.mem)}, {limits.gpu} GPU</span></label>'
            '<div class="loophub-custom" style="margin-left:24px;gap:16px;'
            f'display:{display}">'
            f'<label>CPU cores <input type="number" name="cpu" min="0.1" max="{limits.cpu:g}" '
            f'step="0.1" value="{escape(str(previous.get("cpu", 1)))}" class="form-control">'
            '</label>'
            f'<label>Memory (GiB) <input type="number" name="mem" min="0.25" '
            f'max="{math.floor(limits.mem / GIB * 4) / 4:g}" step="0.25" value="1" '
            'class="form-control"></label>'
            f"{gpu_field}</div>"
        )
    note = f'<p class="text-muted">{escape(pool_note)}</p>' if pool_note else ""
    # The custom fields show only while "Custom size" is chosen: the radios' change events
    # bubble to this handler (an attribute, not a <script>: the form is plain HTML).
    toggle = ("this.querySelectorAll('.loophub-custom').forEach((d) => { d.style.display = "
              "this.querySelector('input[name=profile][value=custom]').checked ? 'flex' : "
              "'none'; })")
    return (
        f'<div class="loophub-options" onchange="{escape(toggle)}"><p>Choose the resources '
        "for your server. When the pool "
        "is busy you wait in a fair queue and this page shows your place in it.</p>"
        + "<br>".join(rows)
        + '<br><label>Max runtime (hours, optional) <input type="number" name="runtime" '
        'min="0.1" step="0.1" class="form-control"></label>'
        + note + "</div>"
    )
