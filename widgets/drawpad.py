"""DrawPad: a canvas to draw an image on, for trying an image model on a sketch.

    from loophub.widgets.drawpad import DrawPad
    pad = DrawPad(width=200, height=200, stroke=16)   # white strokes on black, like digits
    pad                                               # draw with the mouse, a pen or a finger
    pad.png                                           # the drawing's PNG file bytes (None: blank)

One anywidget front end (drawpad.js: pointer events, so mouse, pen and touch alike, and a
Clear button). At the end of every stroke the front end sets ``value`` to the whole
canvas as a PNG data URL; observe ``value`` to react to a drawing. The PNG has the canvas's
size: a model's own preprocessing resizes it (loophub's image recipes stretch to their
input size), so nothing here has to know what the model expects.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from loophub import errors

HERE = Path(__file__).parent
DATA_URL = "data:image/png;base64,"  # what canvas.toDataURL("image/png") starts with


class DrawPad(anywidget.AnyWidget):
    """A WIDTH x HEIGHT canvas (px) to draw on with a pen STROKE px wide, in COLOR on
    BACKGROUND (default white on black, as scanned digits are). ``value`` is the drawing
    as a PNG data URL, updated when a stroke ends ("" when blank); ``png`` decodes it and
    ``clear()`` blanks the pad (as its Clear button does)."""

    _esm = HERE / "drawpad.js"
    _css = HERE / "drawpad.css"

    width = traitlets.Int(200).tag(sync=True)
    height = traitlets.Int(200).tag(sync=True)
    stroke = traitlets.Float(16.0).tag(sync=True)
    color = traitlets.Unicode("white").tag(sync=True)
    background = traitlets.Unicode("black").tag(sync=True)
    value = traitlets.Unicode("").tag(sync=True)

    def __init__(self, width: int = 200, height: int = 200, stroke: float = 16.0, *,
                 color: str = "white", background: str = "black", **kwargs: Any) -> None:
        super().__init__(width=width, height=height, stroke=stroke, color=color,
                         background=background, **kwargs)

    @traitlets.validate("value")
    def _check_value(self, proposal: dict) -> str:
        # refused at the door so that observers only ever see a blank pad or a PNG
        value = proposal["value"]
        if value and not value.startswith(DATA_URL):
            raise traitlets.TraitError(f"DrawPad.value must be '' or a {DATA_URL!r}... "
                                       f"data URL, not {value[:40]!r}")
        return value

    @property
    def png(self) -> bytes | None:
        """The drawing's PNG file bytes; None while the pad is blank."""
        return png_of(self.value)

    def clear(self) -> None:
        """Blank the pad (the front end repaints the background)."""
        self.value = ""


def png_of(data_url: str) -> bytes | None:
    """The PNG bytes of a ``data:image/png;base64,...`` URL (None for ""); a URL that is
    not one is the caller's error."""
    if not data_url:
        return None
    if not data_url.startswith(DATA_URL):
        raise errors.InvalidInput("the drawing is not a PNG data URL")
    try:
        return base64.b64decode(data_url[len(DATA_URL):], validate=True)
    except (binascii.Error, ValueError):
        raise errors.InvalidInput("the drawing's data URL is not valid base64") from None
