"""Prediction apps: what an end user of a released model opens in a browser (Voila).

The template notebooks (notebooks/apps/<task>.ipynb) run, in a thin kernel of the Voila
service:

    from loophub.widgets.apps import serve
    serve()

``serve()`` waits for the visitor when the kernel was preheated, reads who asks for what
from the environment the Voila service gives each kernel (LOOPHUB_API_URL; the request
headers X-Loophub-Release and X-Loophub-Visitor as HTTP_X_LOOPHUB_RELEASE and
HTTP_X_LOOPHUB_VISITOR) and shows the app of the release's task:

- image_classification: upload a PNG/JPEG or draw on a DrawPad; the top classes as bars;
- object_detection: upload; the boxes with labels and scores drawn on the image;
- text_classification: type a text; the top classes as bars;
- ner: type a text; the spans highlighted with their labels.

Each shows the model's name, version and card summary, the answer's latency and request
id, and lets the visitor flag a wrong answer (with the right label where one makes sense).
Everything goes over HTTP as the visitor (``AppSession``: the API for the release, its
card and the flag; the release's gateway URL for metadata and predictions), so the kernel
never imports torch: ipywidgets, PIL, requests and the loophub client only.

Widget callbacks are the app's attack surface (a crafted comm message can set any synced
trait): every input is checked again in the callback (uploads: size, PNG/JPEG, side;
texts: length; the flag's label: one of the model's), and every failure, the release's
4xx/5xx or the network included, becomes a message in the app, never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import html
import io
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

import ipywidgets as w
import requests
from IPython.display import display
from PIL import Image, ImageDraw, ImageFont

from loophub import errors
from loophub.client.core import Client, retrying
from loophub.pool import readable_bytes
from loophub.releases.apps import PREFETCH_HEADER, RELEASE_HEADER, VISITOR_HEADER, env_name
from loophub.widgets.drawpad import DrawPad, png_of

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
CSS = (HERE / "apps.css").read_text()

# the names the Voila service sets (the two headers become HTTP_* variables in the kernel)
ENV_API_URL = "LOOPHUB_API_URL"
ENV_RELEASE = env_name(RELEASE_HEADER)  # set by the apps service, never by the visitor
ENV_VISITOR = env_name(VISITOR_HEADER)
ENV_PREFETCH = env_name(PREFETCH_HEADER)

MAX_UPLOAD_BYTES = 5 * 1024 * 1024  # one uploaded (or drawn) image file
MAX_SIDE = 4096                     # pixels, either side of an image
MAX_TEXT = 5000                     # characters of a text to predict
MAX_NOTE = 1000                     # characters of a flag's note (the API's limit)
MAX_REQUEST_ID = 64
MAX_RELEASE_NAME = 200
TOP_K = 5                           # classes shown
MAX_BOXES = 100                     # boxes drawn
DISPLAY_SIDE = 1024                 # the detection result is shown at most this wide/high
IMAGE_FORMATS = ("PNG", "JPEG")
TASKS = ("image_classification", "object_detection", "text_classification", "ner")
NO_LABEL = ""                       # the flag dropdown's "no label" choice
NO_LABEL_OPTION = ("the right label…", NO_LABEL)
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
           "#9a6324", "#808000", "#000075", "#469990", "#bfef45")
SPAN_COLORS = ("#ffe08a", "#b5e3b6", "#b9d3f5", "#f7c59f", "#dcc6f0", "#b8eef7", "#f7bde8",
               "#e0cdb3", "#e3e3a1", "#c9c9f0", "#b7dcd6", "#dff5a6")


# -- the visitor's session ------------------------------------------------------------------

@dataclass
class Answer:
    """One answer of the release for one instance."""

    predictions: dict       # the prediction of the single instance (the model's shape)
    request_id: str         # what a wrong answer is flagged by
    latency_ms: float       # measured around the HTTP call, in this kernel
    version: str            # the model version that answered ("digits@v3")


class AppSession:
    """The visitor (TOKEN: their hub token) using release RELEASE through the loophub API
    at API_URL and the release's gateway URL."""

    def __init__(self, api_url: str, token: str, release: str, *, timeout: float = 30
                 ) -> None:
        if not isinstance(api_url, str) or not api_url.startswith(("http://", "https://")):
            raise errors.InvalidInput("the app's API URL is not an http(s) URL")
        if not isinstance(token, str) or not token.strip():
            raise errors.Unauthenticated("the app has no visitor token")
        if (not isinstance(release, str) or not release.strip()
                or len(release) > MAX_RELEASE_NAME):
            raise errors.InvalidInput("the app was opened without a valid release name")
        self.client = Client(api_url, token, timeout=timeout)
        self.release = release
        self._info: dict | None = None

    def __repr__(self) -> str:
        return f"AppSession({self.client.url!r}, release={self.release!r})"

    # -- reading ------------------------------------------------------------------------------

    def info(self, prefetched: Mapping[str, Any] | None = None) -> dict:
        """The release (name, model, version, task, url, status, view), its gateway's
        metadata (labels, preprocess, metadata) and, when the visitor may read the model
        version, its card (card, summary). PREFETCHED: what the apps service already read
        as the visitor ({"view", "metadata", "card"}); read here what it lacks."""
        given = prefetched if isinstance(prefetched, Mapping) else {}
        view = given.get("view") if isinstance(given.get("view"), dict) else None
        if view is None or view.get("name") != self.release:
            view, given = self.client.serving.view(self.release), {}
        url = view.get("url") or ""
        if not url:
            raise errors.Unavailable(f"release {self.release!r} has no URL yet")
        meta = given["metadata"] if isinstance(given.get("metadata"), dict) \
            else self._metadata(url)
        version = str(view.get("version") or meta.get("ref") or "")
        model = version.partition("@")[0] or str(view.get("model") or "").partition("@")[0]
        labels = meta.get("labels") or []
        info: dict[str, Any] = {
            "name": view.get("name", self.release), "model": model, "version": version,
            "task": meta.get("task") or view.get("task"), "url": url,
            "status": view.get("status"),
            "labels": [str(label) for label in labels] if isinstance(labels, list) else [],
            "preprocess": meta.get("preprocess") or {}, "metadata": meta, "view": view}
        card = clean_card(given["card"]) if "card" in given else self._card(version)
        if card:
            info["card"] = card
            info["summary"] = card_summary(card)
        self._info = info
        return info

    def _metadata(self, url: str) -> dict:
        target = urljoin(self.client.url + "/", url).rstrip("/") + "/metadata"
        client = self.client
        resp = retrying(lambda: client.session.get(target, timeout=client.timeout),
                        client.patience)
        if resp.status_code >= 400:
            raise client.error(resp)
        try:
            body = resp.json()
        except ValueError:
            raise errors.Unavailable("the release's metadata is not JSON") from None
        if not isinstance(body, dict):
            raise errors.Unavailable("the release's metadata is not an object")
        return body

    def _card(self, version: str) -> dict | None:
        """The version's card, or None when it has none or the visitor may not read it."""
        if not version:
            return None
        name, _, selector = version.partition("@")
        try:
            view = self.client.request(
                "GET", f"models/{quote(name, safe='')}/versions/"
                       f"{quote(selector or 'latest', safe='')}")
        except (errors.PermissionDenied, errors.NotFound):
            return None
        return clean_card(view.get("card") if isinstance(view, dict) else None)

    # -- calling ------------------------------------------------------------------------------

    def predict(self, instances: list) -> Answer:
        """The answer for INSTANCES (one instance: the app sends one at a time)."""
        info = self._info if self._info is not None else self.info()
        start = time.perf_counter()
        body = self.client.serving.predict(info["url"], instances, full=True)
        latency_ms = (time.perf_counter() - start) * 1000
        predictions = body.get("predictions") if isinstance(body, dict) else None
        if not isinstance(predictions, list) or not predictions \
                or not isinstance(predictions[0], dict):
            raise errors.Unavailable("the release's answer has no prediction")
        return Answer(predictions=predictions[0],
                      request_id=str(body.get("request_id") or ""),
                      latency_ms=latency_ms,
                      version=str(body.get("model") or info.get("version") or ""))

    def flag(self, request_id: str, label: str | None = None, note: str = "") -> dict:
        """Flag the answer REQUEST_ID as wrong; LABEL (one of the model's) is the right one."""
        if not isinstance(request_id, str) or not request_id \
                or len(request_id) > MAX_REQUEST_ID:
            raise errors.InvalidInput("there is no answer to flag: predict first")
        labels = (self._info or {}).get("labels") or []
        if label is not None and (not isinstance(label, str) or label not in labels):
            raise errors.InvalidInput("the right label must be one of the model's labels")
        if not isinstance(note, str):
            raise errors.InvalidInput("the note must be a text")
        if len(note) > MAX_NOTE:
            raise errors.InvalidInput(f"the note is too long ({len(note)} characters; "
                                      f"at most {MAX_NOTE})")
        return self.client.serving.flag(self.release, request_id, label=label, note=note)


def clean_card(card: Any) -> dict | None:
    """A model card's non-empty texts, or None."""
    if not isinstance(card, dict):
        return None
    return {k: v for k, v in card.items() if isinstance(v, str) and v.strip()} or None


def card_summary(card: Mapping[str, Any], limit: int = 300) -> str:
    """The card's first paragraph (its text, else its intended use), at most LIMIT chars."""
    for key in ("text", "intended_use"):
        text = card.get(key)
        if isinstance(text, str) and text.strip():
            first = text.strip().split("\n\n", 1)[0].strip()
            first = " ".join(line.strip().lstrip("#").strip() for line in first.splitlines())
            return first if len(first) <= limit else first[:limit - 1].rstrip() + "…"
    return ""


# -- checking inputs ------------------------------------------------------------------------

def read_image(data: Any) -> Image.Image:
    """DATA (bytes of an uploaded or drawn file) as a loaded PIL image; InvalidInput with
    what to fix when it is too large, not a PNG/JPEG, or too many pixels."""
    if isinstance(data, memoryview | bytearray):
        data = bytes(data)
    if not isinstance(data, bytes) or not data:
        raise errors.InvalidInput("the image is empty: choose a PNG or JPEG file")
    if len(data) > MAX_UPLOAD_BYTES:
        raise errors.TooLarge(f"the image is too large ({len(data) / 1e6:.1f} MB; at most "
                              f"{MAX_UPLOAD_BYTES // (1024 * 1024)} MB)")
    try:
        image = Image.open(io.BytesIO(data))
    except Exception:  # UnidentifiedImageError, DecompressionBombError, ...
        raise errors.InvalidInput("the file is not an image: choose a PNG or JPEG file"
                                  ) from None
    if image.format not in IMAGE_FORMATS:
        raise errors.InvalidInput(f"the file is a {image.format or 'unknown'} image: "
                                  "choose a PNG or JPEG file")
    width, height = image.size
    if width < 1 or height < 1 or width > MAX_SIDE or height > MAX_SIDE:
        raise errors.InvalidInput(f"the image is {width}x{height} pixels: at most "
                                  f"{MAX_SIDE}x{MAX_SIDE}")
    try:
        image.load()
    except Exception:
        raise errors.InvalidInput("the image file is damaged: choose another PNG or JPEG"
                                  ) from None
    return image


def uploaded_file(value: Any) -> tuple[str, bytes]:
    """The (name, bytes) of a FileUpload's value holding one file."""
    if not isinstance(value, tuple | list) or not value:
        raise errors.InvalidInput("choose an image file first")
    if len(value) != 1:
        raise errors.InvalidInput("choose one image file")
    item = value[0]
    content = item.get("content") if isinstance(item, Mapping) else None
    if not isinstance(content, bytes | bytearray | memoryview):
        raise errors.InvalidInput("the upload is not a file: choose an image file")
    name = item.get("name")
    return (name if isinstance(name, str) else "image")[:200], bytes(content)


def check_text(text: Any) -> str:
    """TEXT as the model gets it; InvalidInput when it is not a text, blank or too long."""
    if not isinstance(text, str):
        raise errors.InvalidInput("the input must be a text")
    if not text.strip():
        raise errors.InvalidInput("type a text first")
    if len(text) > MAX_TEXT:
        raise errors.InvalidInput(f"the text is too long ({len(text)} characters; at most "
                                  f"{MAX_TEXT})")
    return text


def image_instance(data: bytes) -> dict:
    return {"image": base64.b64encode(data).decode("ascii")}


def friendly(exc: BaseException) -> str:
    """What the visitor reads about EXC: the platform's own words without the request
    line, or a plain sentence for what is not the platform's."""
    if isinstance(exc, errors.LoophubError):
        message = exc.message
        head, sep, rest = message.partition(": ")
        if sep and head.split(" ", 1)[0] in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            message = rest
        status = getattr(exc, "status", 400)
        if isinstance(exc, errors.Unauthenticated) or status == 401:
            return f"You are not signed in (or your session ended): {message}"
        if isinstance(exc, errors.PermissionDenied):
            return f"You may not use this model: {message}"
        if isinstance(exc, errors.Unavailable) or status >= 500:
            return f"The model is not available right now, try again in a moment: {message}"
        return message
    if isinstance(exc, requests.RequestException):
        return "The model could not be reached; try again in a moment."
    return "Something went wrong; try again (the error was logged)."


# -- drawing results ------------------------------------------------------------------------

def _color(index: Any, palette: tuple[str, ...]) -> str:
    return palette[index % len(palette)] if isinstance(index, int) and index >= 0 \
        else palette[0]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def top_classes(prediction: Mapping[str, Any], labels: list[str], k: int = TOP_K
                ) -> list[tuple[str, float]]:
    """The K best (label, score) of a classification prediction (label, index, scores)."""
    scores = prediction.get("scores")
    out: list[tuple[str, float]] = []
    if isinstance(scores, list):
        for i, score in enumerate(scores):
            number = _number(score)
            if number is not None:
                out.append((labels[i] if i < len(labels) else str(i), number))
        out.sort(key=lambda pair: -pair[1])
    if not out and isinstance(prediction.get("label"), str | int):
        out = [(str(prediction["label"]), 1.0)]
    return out[:k]


def score_bars(prediction: Mapping[str, Any], labels: list[str], k: int = TOP_K) -> str:
    """HTML: the top class's name, then the top K classes as bars with their scores."""
    top = top_classes(prediction, labels, k)
    if not top:
        return "<div class='lh-app-top'>no answer</div>"
    best = str(prediction.get("label")) if isinstance(prediction.get("label"), str | int) \
        else top[0][0]
    rows = "".join(
        f"<div class='lh-bar-row'><span class='lh-bar-label' title='{html.escape(label)}'>"
        f"{html.escape(label)}</span><span class='lh-bar'><span style='width:"
        f"{max(0.0, min(score, 1.0)) * 100:.1f}%'></span></span><span class='lh-bar-score'>"
        f"{score * 100:.1f}%</span></div>" for label, score in top)
    return f"<div class='lh-app-top'>{html.escape(best)}</div><div class='lh-bars'>{rows}</div>"


def clean_spans(text: str, spans: Any) -> list[dict]:
    """SPANS (start, end, label, score) that lie inside TEXT, in order, without overlaps."""
    out: list[dict] = []
    if not isinstance(spans, list):
        return out
    for span in spans:
        if not isinstance(span, Mapping):
            continue
        start, end = span.get("start"), span.get("end")
        if (not isinstance(start, int) or not isinstance(end, int) or isinstance(start, bool)
                or isinstance(end, bool) or not 0 <= start < end <= len(text)):
            continue
        out.append({"start": start, "end": end, "label": str(span.get("label", "")),
                    "score": _number(span.get("score"))})
    out.sort(key=lambda s: (s["start"], s["end"]))
    kept: list[dict] = []
    for span in out:
        if not kept or span["start"] >= kept[-1]["end"]:
            kept.append(span)
    return kept


def highlight_spans(text: str, spans: Any, labels: list[str] | None = None) -> str:
    """HTML of TEXT with each span marked and labelled; everything escaped."""
    labels = labels or []
    parts: list[str] = []
    at = 0
    for span in clean_spans(text, spans):
        parts.append(html.escape(text[at:span["start"]]))
        label = span["label"]
        index = labels.index(label) if label in labels else sum(map(ord, label))
        score = f" {span['score']:.2f}" if span["score"] is not None else ""
        parts.append(
            f"<mark class='lh-span' style='background:{_color(index, SPAN_COLORS)}' "
            f"title='{html.escape(label + score)}'>{html.escape(text[span['start']:span['end']])}"
            f"<span class='lh-span-label'>{html.escape(label)}</span></mark>")
        at = span["end"]
    parts.append(html.escape(text[at:]))
    return f"<div class='lh-ner'>{''.join(parts)}</div>"


def clean_boxes(boxes: Any) -> list[dict]:
    """The boxes ([x, y, w, h], label, index, score) that have finite numbers, best first."""
    out: list[dict] = []
    if not isinstance(boxes, list):
        return out
    for item in boxes[:MAX_BOXES]:
        if not isinstance(item, Mapping) or not isinstance(item.get("box"), list) \
                or len(item["box"]) != 4:
            continue
        box = [_number(v) for v in item["box"]]
        if any(v is None for v in box) or box[2] <= 0 or box[3] <= 0:  # type: ignore[operator]
            continue
        index = item.get("index")
        out.append({"box": box, "label": str(item.get("label", "")),
                    "index": index if isinstance(index, int) else -1,
                    "score": _number(item.get("score"))})
    out.sort(key=lambda b: -(b["score"] or 0.0))
    return out


def draw_boxes(image: Image.Image, boxes: Any, *, scale: float = 1.0) -> Image.Image:
    """A copy of IMAGE (RGB) with BOXES (pixels of the original image, times SCALE) drawn
    as outlines with their label and score above."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    width = max(2, round(min(out.size) / 200))
    font = ImageFont.load_default(size=max(11, round(min(out.size) / 40)))
    for item in clean_boxes(boxes):
        x, y, w_, h_ = (v * scale for v in item["box"])
        color = _color(item["index"], PALETTE)
        draw.rectangle([x, y, x + w_, y + h_], outline=color, width=width)
        caption = item["label"] + (f" {item['score']:.2f}" if item["score"] is not None
                                   else "")
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        tw, th = right - left + 4, bottom - top + 4
        ty = y - th if y - th >= 0 else y
        draw.rectangle([x, ty, x + tw, ty + th], fill=color)
        draw.text((x + 2 - left, ty + 2 - top), caption, fill="white", font=font)
    return out


def fit(image: Image.Image, side: int = DISPLAY_SIDE) -> tuple[Image.Image, float]:
    """IMAGE shrunk to at most SIDE either way, and the scale applied."""
    scale = min(1.0, side / max(image.size))
    if scale >= 1.0:
        return image, 1.0
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size), scale


def encode_jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


# -- the apps -------------------------------------------------------------------------------

def _classes(widget: w.DOMWidget, *names: str) -> w.DOMWidget:
    for name in names:
        widget.add_class(name)
    return widget


def _full_width(**kwargs: Any) -> w.Layout:
    return w.Layout(width="100%", max_width="100%", **kwargs)


def message_html(text: str, kind: str = "info") -> str:
    return f"<div class='lh-app-msg lh-app-msg-{kind}'>{html.escape(text)}</div>"


def brand_html(info: Mapping[str, Any]) -> str:
    model = str(info.get("model") or info.get("name") or "model")
    version = str(info.get("version") or "")
    shown = version.partition("@")[2] or version
    release = str(info.get("name") or "")
    line = " · ".join(part for part in (f"version {shown}" if shown else "",
                                        f"release {release}" if release else "") if part)
    summary = str(info.get("summary") or "")
    return (f"<h2>{html.escape(model)}</h2><div class='lh-app-version'>{html.escape(line)}"
            "</div>" + (f"<p>{html.escape(summary)}</p>" if summary else ""))


class PredictionApp(w.VBox):
    """The common frame: branding, the task's input (``inputs()``), Predict, the message
    line, the result, latency and request id, and the flag area. Subclasses give
    ``inputs()``, ``instance()`` (checked input -> the instance sent) and ``show()``."""

    task = ""
    label_flag = True  # a right label makes sense for the whole answer

    def __init__(self, session: AppSession | None = None,
                 info: Mapping[str, Any] | None = None) -> None:
        """The app's widgets, bound to SESSION and INFO when given (``bind``). A preheated
        kernel builds them before any visitor arrives (``serve(task)``): creating its
        widgets sends some 65 messages through Voila, which then cost the pool's refill,
        not the visit; binding sends a handful."""
        self.session: AppSession | None = None
        self.info: dict[str, Any] = {}
        self.labels: list[str] = []
        self.answer: Answer | None = None
        self.calls = 0  # answers received
        self.flagged = ""  # the request id flagged last

        self.css = w.HTML(f"<style>{CSS}</style>", layout=w.Layout(display="none"))
        self.brand = _classes(w.HTML("", layout=_full_width()), "lh-app-brand")
        self.predict_button = _classes(w.Button(description="Predict", button_style="primary",
                                                icon="play", layout=w.Layout(width="auto")),
                                       "lh-app-predict")
        self.message = _classes(w.HTML("", layout=_full_width()), "lh-app-message")
        self.result = _classes(w.HTML("", layout=_full_width()), "lh-app-result")
        self.latency = _classes(w.HTML("", layout=_full_width()), "lh-app-latency")
        self.request = _classes(w.HTML("", layout=_full_width()), "lh-app-request")
        self.flag_label = _classes(w.Dropdown(options=[NO_LABEL_OPTION], value=NO_LABEL,
                                              description="Right label",
                                              layout=_full_width()), "lh-app-flag-label")
        self.flag_note = _classes(w.Text(value="", placeholder="what was wrong (optional)",
                                         description="Note", layout=_full_width()),
                                  "lh-app-flag-note")
        self.flag_button = _classes(w.Button(description="Flag a wrong answer",
                                             icon="flag", disabled=True,
                                             layout=w.Layout(width="auto")), "lh-app-flag")
        self.flag_intro = w.HTML("<b>Wrong answer?</b> Tell the model's owner.")
        self.flag_box = _classes(w.VBox([self.flag_intro, self.flag_note, self.flag_button],
                                        layout=_full_width()), "lh-app-flag-box")
        self.predict_button.on_click(self._on_predict)
        self.flag_button.on_click(self._on_flag)
        super().__init__([self.css, self.brand, *self.inputs(), self.predict_button,
                          self.message, self.result, *self.outputs(), self.latency,
                          self.request, self.flag_box],
                         layout=w.Layout(width="100%", max_width="720px", margin="0 auto"))
        _classes(self, "lh-app", f"lh-app-{self.task.replace('_', '-')}")
        if session is not None:
            self.bind(session, info or {})

    def bind(self, session: AppSession, info: Mapping[str, Any]) -> PredictionApp:
        """Serve the visitor of SESSION with the release INFO describes (``session.info()``):
        its model, version and card in the header, its labels to flag with."""
        self.session, self.info = session, dict(info)
        self.labels = list(self.info.get("labels") or [])
        if session._info is None:  # an app built from an info dict of its own
            session._info = self.info
        self.brand.value = brand_html(self.info)
        self.flag_label.options = [NO_LABEL_OPTION] + [(label, label) for label in self.labels]
        self.flag_label.value = NO_LABEL
        if self.label_flag and self.labels:
            self.flag_box.children = (self.flag_intro, self.flag_label, self.flag_note,
                                      self.flag_button)
        return self

    # -- what subclasses give ---------------------------------------------------------------

    def inputs(self) -> list[w.Widget]:
        raise NotImplementedError

    def outputs(self) -> list[w.Widget]:
        """Widgets shown after the result (none by default)."""
        return []

    def instance(self) -> dict:
        raise NotImplementedError

    def show(self, answer: Answer) -> None:
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------

    def say(self, text: str, kind: str = "info") -> None:
        self.message.value = message_html(text, kind) if text else ""

    def guarded(self, action: Callable[[], None]) -> None:
        """Run ACTION; whatever it raises becomes a message, never a traceback."""
        try:
            action()
        except errors.LoophubError as exc:
            self.say(friendly(exc), "error")
        except Exception as exc:
            log.exception("app %s: %s", self.task, type(exc).__name__)
            self.say(friendly(exc), "error")

    def _on_predict(self, _button: Any = None) -> None:
        self.predict_button.disabled = True
        try:
            self.guarded(self.predict)
        finally:
            self.predict_button.disabled = False

    @property
    def bound(self) -> AppSession:
        if self.session is None:
            raise errors.Unavailable("this app is not connected to a release yet; open it "
                                     "from the release's app link")
        return self.session

    def predict(self) -> None:
        instance = self.instance()  # raises InvalidInput before anything is sent
        session = self.bound
        self.say("Asking the model…")
        answer = session.predict([instance])
        self.answer = answer
        self.calls += 1
        # the answer's details before the answer: the page shows them in this order, so
        # whoever sees the result (a visitor, a browser test) sees its latency with it
        self.latency.value = (f"<span class='lh-app-meta'>answered in "
                              f"<b>{answer.latency_ms:.0f} ms</b> by "
                              f"{html.escape(answer.version)}</span>")
        self.request.value = (f"<span class='lh-app-meta'>request id "
                              f"<code class='lh-app-request-id'>"
                              f"{html.escape(answer.request_id)}</code></span>")
        self.show(answer)
        self.flag_button.disabled = not answer.request_id
        self.flag_label.value = NO_LABEL
        self.say("")

    def _on_flag(self, _button: Any = None) -> None:
        self.flag_button.disabled = True
        try:
            self.guarded(self.flag)
        finally:  # one flag per answer
            self.flag_button.disabled = (self.answer is None
                                         or self.answer.request_id == self.flagged)

    def flag(self) -> None:
        if self.answer is None or not self.answer.request_id:
            raise errors.InvalidInput("there is no answer to flag: predict first")
        label = self.flag_label.value if self.label_flag else NO_LABEL
        if label != NO_LABEL and (not isinstance(label, str) or label not in self.labels):
            raise errors.InvalidInput("choose the right label from the list")
        note = self.flag_note.value
        if not isinstance(note, str) or len(note) > MAX_NOTE:
            raise errors.InvalidInput(f"the note is too long (at most {MAX_NOTE} characters)")
        self.bound.flag(self.answer.request_id, label=label or None, note=note.strip())
        self.flagged = self.answer.request_id
        self.flag_note.value = ""
        self.say("Thank you: your flag was sent to the model's owner"
                 + (f" (right label: {label})" if label else "") + ".", "ok")


class ImageClassificationApp(PredictionApp):
    """Upload a PNG/JPEG or draw; the top classes with their scores."""

    task = "image_classification"

    def inputs(self) -> list[w.Widget]:
        self.upload = _classes(w.FileUpload(accept="image/png,image/jpeg", multiple=False,
                                            description="Upload an image",
                                            layout=w.Layout(width="auto")), "lh-app-upload")
        self.pad = _classes(DrawPad(200, 200, 16), "lh-app-draw")
        self.source = ""  # "upload" or "draw": the latest input given
        self.source_line = _classes(w.HTML(message_html(
            "Draw below, or upload a PNG or JPEG image.", "info"), layout=_full_width()),
            "lh-app-source")
        self.upload.observe(self._on_upload, "value")
        self.pad.observe(self._on_draw, "value")
        return [self.source_line, self.upload, self.pad]

    def _on_upload(self, change: dict) -> None:
        def note() -> None:
            if not change["new"]:
                return
            self.source = "upload"  # the latest input, checked again when sent
            name, data = uploaded_file(change["new"])
            self.source_line.value = message_html(
                f"Using the uploaded file {name} ({readable_bytes(len(data))}).", "info")
        self.guarded(note)

    def _on_draw(self, change: dict) -> None:
        if change["new"]:
            self.source = "draw"
            self.source_line.value = message_html("Using your drawing.", "info")

    def image_bytes(self) -> bytes:
        if self.source == "draw" or (not self.source and self.pad.value):
            data = png_of(self.pad.value)
            if not data:
                raise errors.InvalidInput("draw something first, or upload an image")
        elif self.source == "upload":
            data = uploaded_file(self.upload.value)[1]
        else:
            raise errors.InvalidInput("draw something or upload an image first")
        read_image(data)
        return data

    def instance(self) -> dict:
        return image_instance(self.image_bytes())

    def show(self, answer: Answer) -> None:
        self.result.value = score_bars(answer.predictions, self.labels)


class TextClassificationApp(PredictionApp):
    """Type a text; the top classes with their scores."""

    task = "text_classification"
    placeholder = "Type or paste a text…"

    def inputs(self) -> list[w.Widget]:
        self.text = _classes(w.Textarea(value="", placeholder=self.placeholder, rows=5,
                                        layout=_full_width()), "lh-app-text")
        hint = _classes(w.HTML(f"<span class='lh-app-hint'>At most {MAX_TEXT} characters."
                               "</span>"), "lh-app-hint")
        return [self.text, hint]

    def instance(self) -> dict:
        return {"text": check_text(self.text.value)}

    def show(self, answer: Answer) -> None:
        self.result.value = score_bars(answer.predictions, self.labels)


class NerApp(TextClassificationApp):
    """Type a text; the entities found, highlighted with their labels."""

    task = "ner"
    label_flag = False
    placeholder = "Type or paste a text to find its entities…"

    _asked: str = ""

    def predict(self) -> None:
        self._asked = check_text(self.text.value)
        super().predict()

    def show(self, answer: Answer) -> None:
        text = self._asked if isinstance(self._asked, str) else ""
        spans = clean_spans(text, answer.predictions.get("spans"))
        found = sorted({s["label"] for s in spans})
        head = (f"<div class='lh-app-meta'>{len(spans)} entities: "
                f"{html.escape(', '.join(found))}</div>" if spans
                else "<div class='lh-app-meta'>no entities found</div>")
        self.result.value = head + highlight_spans(text, spans, self.labels)


class ObjectDetectionApp(PredictionApp):
    """Upload a PNG/JPEG; the boxes found, drawn on it with their labels and scores."""

    task = "object_detection"
    label_flag = False

    def inputs(self) -> list[w.Widget]:
        self.upload = _classes(w.FileUpload(accept="image/png,image/jpeg", multiple=False,
                                            description="Upload an image",
                                            layout=w.Layout(width="auto")), "lh-app-upload")
        self.picture = _classes(w.Image(format="jpeg", layout=w.Layout(
            width="100%", max_width="100%", height="auto", display="none")),
            "lh-app-result-image")
        self._asked: Image.Image | None = None
        return [self.upload]

    def outputs(self) -> list[w.Widget]:
        return [self.picture]

    def predict(self) -> None:
        self._asked = read_image(uploaded_file(self.upload.value)[1])
        super().predict()

    def instance(self) -> dict:
        return image_instance(uploaded_file(self.upload.value)[1])

    def show(self, answer: Answer) -> None:
        image = self._asked
        boxes = clean_boxes(answer.predictions.get("boxes"))
        if image is not None:
            shown, scale = fit(image)
            self.picture.value = encode_jpeg(draw_boxes(shown, boxes, scale=scale))
            self.picture.layout.display = ""
        items = "".join(
            f"<li>{html.escape(b['label'])}"
            + (f" <span class='lh-app-meta'>{b['score'] * 100:.0f}%</span>"
               if b["score"] is not None else "") + "</li>" for b in boxes)
        self.result.value = (f"<div class='lh-app-top'>{html.escape(boxes[0]['label'])}</div>"
                             f"<ol>{items}</ol>" if boxes
                             else "<div class='lh-app-meta'>nothing found</div>")


APPS: dict[str, type[PredictionApp]] = {
    "image_classification": ImageClassificationApp,
    "object_detection": ObjectDetectionApp,
    "text_classification": TextClassificationApp,
    "ner": NerApp,
}


def message_app(text: str, kind: str = "error") -> w.Widget:
    """An app that only says TEXT (no release, no access, unknown task, ...)."""
    style = w.HTML(f"<style>{CSS}</style>", layout=w.Layout(display="none"))
    message = _classes(w.HTML(message_html(text, kind), layout=_full_width()),
                       "lh-app-message")
    return _classes(w.VBox([style, message], layout=w.Layout(
        width="100%", max_width="720px", margin="0 auto")), "lh-app", "lh-app-unavailable")


def build_app(session: AppSession, info: Mapping[str, Any],
              prebuilt: PredictionApp | None = None) -> w.Widget:
    """The app of INFO's task (``session.info()``), or a message for a task without one.
    PREBUILT: an unbound app built earlier (``serve(task)``), used when its task is
    INFO's, else discarded."""
    cls = APPS.get(str(info.get("task")))
    if prebuilt is not None and cls is not None and type(prebuilt) is cls:
        return prebuilt.bind(session, info)
    discard(prebuilt)
    if cls is None:
        return message_app(f"There is no app for this model's task "
                           f"({info.get('task')!s:.40}); it answers over its REST API.")
    return cls(session, info)


def discard(app: w.Widget | None) -> None:
    """Close APP and every widget under it (their models leave the kernel and the page)."""
    if app is None:
        return
    for child in getattr(app, "children", ()):
        discard(child)
    for part in ("layout", "style"):
        if isinstance(getattr(app, part, None), w.Widget):
            getattr(app, part).close()
    app.close()


# -- in the Voila kernel --------------------------------------------------------------------

def wait_for_request(url: str | None = None) -> None:
    """In a kernel Voila preheated: block until a visitor's request arrives and put its
    request info (the HTTP_* headers the service forwards, QUERY_STRING, ...) into
    os.environ; outside preheat (VOILA_PREHEAT unset or "False"), return at once.

    The protocol of ``voila.utils.wait_for_request`` (Voila 0.5: one JSON message on the
    websocket ``<ws base>voila/query/<kernel id>``), spoken with ``websockets`` alone:
    importing voila.utils brings jupyter_server into every kernel (~40 MB each)."""
    if os.environ.get("VOILA_PREHEAT", "False") == "False":
        return
    if url is None:
        protocol = os.environ.get("VOILA_WS_PROTOCOL", "ws")
        host = os.environ.get("VOILA_APP_IP", "127.0.0.1")
        port = os.environ.get("VOILA_APP_PORT", "8866")
        base = os.environ.get("VOILA_WS_BASE_URL", os.environ.get("VOILA_SERVER_URL", "/"))
        url = f"{protocol}://{host}:{port}{base}voila/query"
    ws_url = f"{url}/{os.environ.get('VOILA_KERNEL_ID', '')}"
    received: list[str] = []

    async def receive() -> None:
        import websockets

        async with websockets.connect(ws_url, open_timeout=5) as socket:
            message = await socket.recv()
            received.append(message if isinstance(message, str) else message.decode())

    def inner() -> None:
        try:
            asyncio.run(receive())
        except Exception as exc:  # as Voila: no request info, the app says what is missing
            log.warning("no request info from %s: %s", ws_url, exc)

    thread = threading.Thread(target=inner, name="voila-request-info")
    thread.start()
    thread.join()
    if received:
        try:
            request_info = json.loads(received[0])
        except ValueError:
            log.warning("request info from %s is not JSON", ws_url)
            return
        if isinstance(request_info, dict):
            for key, value in request_info.items():
                if isinstance(key, str) and isinstance(value, str):
                    os.environ[key] = value


def app_from_environ(environ: Mapping[str, str] | None = None,
                     prebuilt: PredictionApp | None = None) -> w.Widget:
    """The app for the visitor and release ENVIRON names (default: os.environ), or a
    message saying what is missing or wrong. PREBUILT: see ``build_app``."""
    env = os.environ if environ is None else environ
    api_url, release = env.get(ENV_API_URL, ""), env.get(ENV_RELEASE, "")
    token = env.get(ENV_VISITOR, "")
    missing = ("This app is not set up: the platform's API address "
               f"({ENV_API_URL}) is missing. Ask an administrator." if not api_url else
               "No model was chosen: open this app from the model's release page (its app "
               "link)." if not release else
               "You are not signed in: open this app through the hub (its app link) to use "
               "the model as yourself." if not token else None)
    if missing:
        discard(prebuilt)
        return message_app(missing)
    try:
        prefetched = json.loads(env.get(ENV_PREFETCH) or "null")
    except ValueError:
        prefetched = None  # read afresh
    try:
        session = AppSession(api_url, token, release)
        return build_app(session, session.info(prefetched), prebuilt)
    except Exception as exc:
        if not isinstance(exc, errors.LoophubError):
            log.exception("app for release %r: %s", release, type(exc).__name__)
        discard(prebuilt)
        return message_app(f"The app for {release[:MAX_RELEASE_NAME]} cannot start: "
                           f"{friendly(exc)}")


def serve(task: str | None = None) -> None:
    """What a template notebook runs: build the app of TASK (the template's task; none:
    built after the visitor arrives), wait for the visitor (preheated kernels), then show
    the app of the release they asked for, as them. In a preheated kernel the widgets are
    made while the pool fills, so a visit only binds them to its release."""
    if task is not None and task not in APPS:
        log.warning("serve(%r): no app for that task; the app is built after the visitor "
                    "arrives (tasks: %s)", task, ", ".join(APPS))
    prebuilt = APPS[task]() if task in APPS else None
    wait_for_request()
    widget = app_from_environ(prebuilt=prebuilt)
    for name in (ENV_VISITOR, ENV_PREFETCH):  # the session holds them; nothing else needs them
        os.environ.pop(name, None)
    display(widget)
