"""The prediction apps' widgets (loophub.widgets.apps), without a hub: a real HTTP server in
a thread answers like the loophub API (release view, model version, feedback) and the
release's gateway (metadata, predict); the widgets are driven as a browser's comm
messages would drive them."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import ipywidgets as w
import nbformat
import pytest
from PIL import Image

from loophub import errors
from loophub.widgets import apps
from loophub.widgets.drawpad import DATA_URL

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "visitor-token-123"
DIGITS = [str(i) for i in range(10)]
SCORES = [0.01, 0.01, 0.02, 0.01, 0.01, 0.01, 0.01, 0.9, 0.01, 0.01]


# -- a server answering as the API and the gateway ------------------------------------------

class Platform(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.task = "image_classification"
        self.labels = DIGITS
        self.card_status = 200
        self.predict_status = 200
        self.calls: list[tuple[str, str, dict | None, str]] = []  # method, path, body, auth

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def prediction(self, body: dict) -> dict:
        instance = body["instances"][0]
        if self.task in ("image_classification", "text_classification"):
            return {"label": self.labels[7 % len(self.labels)], "index": 7 % len(self.labels),
                    "scores": SCORES[:len(self.labels)]}
        if self.task == "object_detection":
            return {"boxes": [{"box": [10, 10, 30, 20], "label": "cat", "index": 0,
                               "score": 0.92}]}
        text = instance["text"]
        start = text.find("Bob")
        return {"spans": [{"start": start, "end": start + 3, "label": "PER", "text": "Bob",
                           "score": 0.88}] if start >= 0 else []}


class Handler(BaseHTTPRequestHandler):
    server: Platform

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: dict) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _record(self) -> dict | None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.calls.append((self.command, self.path, body,
                                  self.headers.get("Authorization", "")))
        return body

    def do_GET(self) -> None:
        self._record()
        srv = self.server
        if self.headers.get("Authorization") != f"token {TOKEN}":
            return self._send(401, {"error": "not signed in"})
        if self.path == "/api/releases/digits":
            return self._send(200, {
                "name": "digits", "owner": "ada", "model": "digits@champion",
                "version": "digits@v3", "task": srv.task, "status": "serving",
                "url": f"{srv.url}/services/models/digits/", "replicas": 1, "ready": 1})
        if self.path == "/services/models/digits/metadata":
            return self._send(200, {
                "name": "digits", "version": 3, "ref": "digits@v3", "task": srv.task,
                "labels": srv.labels, "preprocess": {"size": 28, "mode": "L"},
                "signature": {}})
        if self.path == "/api/models/digits/versions/v3":
            if srv.card_status != 200:
                return self._send(srv.card_status, {"error": "you may not read this model"})
            return self._send(200, {"model": "digits", "version": 3, "card": {
                "text": "Reads handwritten digits.\n\nTrained on scans.", "limits": ""}})
        self._send(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:
        body = self._record()
        srv = self.server
        if self.path == "/services/models/digits/predict":
            if srv.predict_status != 200:
                return self._send(srv.predict_status,
                                  {"error": "instances[0].image: not a PNG or JPEG"})
            return self._send(200, {"predictions": [srv.prediction(body)],
                                    "model": "digits@v3", "request_id": "req-0001"})
        if self.path == "/api/releases/digits/feedback":
            if body.get("label") is not None and body["label"] not in srv.labels:
                return self._send(400, {"error": "label: not one of the model's labels"})
            return self._send(201, {"id": 1, **body})
        self._send(404, {"error": f"no route {self.path}"})


@pytest.fixture
def platform() -> Iterator[Platform]:
    server = Platform()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def session_for(platform: Platform) -> apps.AppSession:
    return apps.AppSession(f"{platform.url}/api", TOKEN, "digits")


def app_for(platform: Platform, task: str, labels: list[str] | None = None) -> apps.PredictionApp:
    platform.task = task
    if labels is not None:
        platform.labels = labels
    session = session_for(platform)
    app = apps.build_app(session, session.info())
    assert isinstance(app, apps.PredictionApp)
    return app


# -- helpers ---------------------------------------------------------------------------------

def png(size: tuple[int, int] = (28, 28), color: int = 0, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def upload_value(data: bytes, name: str = "digit.png") -> tuple[dict, ...]:
    return ({"name": name, "type": "image/png", "size": len(data),
             "content": memoryview(data), "last_modified": datetime.now(UTC)},)


def walk(widget: w.Widget) -> Iterator[w.Widget]:
    yield widget
    for child in getattr(widget, "children", ()):
        yield from walk(child)


def by_class(app: w.Widget, name: str) -> list[w.Widget]:
    return [x for x in walk(app) if name in getattr(x, "_dom_classes", ())]


def comm_update(widget: w.Widget, state: dict) -> None:
    """STATE as a browser's (or an attacker's) comm message would set it: through the
    widget's own message handler, errors and all."""
    msg = {"content": {"data": {"method": "update", "state": state, "buffer_paths": []}},
           "buffers": []}
    try:
        widget._handle_msg(msg)
    except Exception:  # the kernel's comm manager logs these; the app must stay usable
        pass


# -- checking inputs -------------------------------------------------------------------------

def test_images_are_checked_before_anything_is_sent() -> None:
    assert apps.read_image(png()).size == (28, 28)
    with pytest.raises(errors.InvalidInput, match="empty"):
        apps.read_image(b"")
    with pytest.raises(errors.TooLarge, match="at most 5 MB"):
        apps.read_image(b"\x89PNG" + b"\0" * apps.MAX_UPLOAD_BYTES)
    with pytest.raises(errors.InvalidInput, match="not an image"):
        apps.read_image(b"<script>alert(1)</script>")
    gif = io.BytesIO()
    Image.new("L", (4, 4)).save(gif, format="GIF")
    with pytest.raises(errors.InvalidInput, match="GIF image: choose a PNG or JPEG"):
        apps.read_image(gif.getvalue())
    with pytest.raises(errors.InvalidInput, match="4097x1 pixels: at most 4096x4096"):
        apps.read_image(png((4097, 1)))
    with pytest.raises(errors.InvalidInput, match="damaged"):
        noisy = io.BytesIO()
        Image.frombytes("L", (64, 64), bytes(range(256)) * 16).save(noisy, format="PNG")
        apps.read_image(noisy.getvalue()[:len(noisy.getvalue()) // 2])
    with pytest.raises(errors.InvalidInput, match="choose one image"):
        apps.uploaded_file(upload_value(png()) * 2)
    with pytest.raises(errors.InvalidInput, match="not a file"):
        apps.uploaded_file(({"name": "x", "content": "text"},))


def test_texts_are_checked() -> None:
    assert apps.check_text("hello") == "hello"
    with pytest.raises(errors.InvalidInput, match="type a text"):
        apps.check_text("   ")
    with pytest.raises(errors.InvalidInput, match="5001 characters; at most 5000"):
        apps.check_text("x" * 5001)
    with pytest.raises(errors.InvalidInput, match="must be a text"):
        apps.check_text(123)


def test_spans_are_highlighted_with_everything_escaped() -> None:
    text = "<b>Bob</b> & <script>x</script> met Ann"
    start = text.index("Bob")
    spans = [{"start": start, "end": start + 3, "label": "<PER>", "score": 0.9},
             {"start": text.index("Ann"), "end": len(text), "label": "PER", "score": 0.8},
             {"start": start + 1, "end": start + 2, "label": "overlap"},  # dropped
             {"start": -1, "end": 999, "label": "out of range"},           # dropped
             {"start": "0", "end": 2, "label": "not a number"}]            # dropped
    out = apps.highlight_spans(text, spans, ["PER"])
    assert "<script>" not in out and "<b>" not in out and "<PER>" not in out
    assert "&lt;script&gt;x&lt;/script&gt;" in out and "&amp;" in out
    assert out.count("<mark") == 2
    assert "Bob<span class='lh-span-label'>&lt;PER&gt;</span></mark>" in out
    assert "Ann<span class='lh-span-label'>PER</span></mark>" in out
    assert "overlap" not in out and "out of range" not in out


def test_boxes_are_drawn_where_the_answer_says() -> None:
    image = Image.new("RGB", (200, 100), "black")
    drawn = apps.draw_boxes(image, [{"box": [50, 40, 60, 40], "label": "cat", "index": 1,
                                     "score": 0.9},
                                    {"box": [1, 2, "x", 4], "label": "bad"}])  # skipped
    assert image.getpixel((50, 60)) == (0, 0, 0)  # the original is left alone
    assert drawn.getpixel((50, 60)) != (0, 0, 0)    # left edge
    assert drawn.getpixel((109, 60)) != (0, 0, 0)   # right edge
    assert drawn.getpixel((80, 79)) != (0, 0, 0)    # bottom edge
    assert drawn.getpixel((80, 60)) == (0, 0, 0)    # inside: an outline only
    assert drawn.getpixel((180, 90)) == (0, 0, 0)   # far away
    assert any(drawn.getpixel((x, y)) != (0, 0, 0)  # the caption above the box
               for x in range(50, 80) for y in range(25, 40))
    # scaled for display: the same box at half size
    half = apps.draw_boxes(Image.new("RGB", (100, 50), "black"),
                           [{"box": [50, 40, 60, 40], "label": "cat", "score": 0.9}],
                           scale=0.5)
    assert half.getpixel((25, 30)) != (0, 0, 0) and half.getpixel((40, 30)) == (0, 0, 0)


def test_errors_read_as_sentences() -> None:
    exc = errors.InvalidInput("POST http://x/predict: instances[0].image: not an image")
    assert apps.friendly(exc) == "instances[0].image: not an image"
    down = errors.Unavailable("cannot reach the loophub API: refused")
    assert apps.friendly(down).startswith("The model is not available right now")
    assert "Traceback" not in apps.friendly(KeyError("x"))


# -- the session ------------------------------------------------------------------------------

def test_info_has_the_release_its_metadata_and_card(platform: Platform) -> None:
    info = session_for(platform).info()
    assert info["name"] == "digits" and info["model"] == "digits"
    assert info["version"] == "digits@v3" and info["task"] == "image_classification"
    assert info["labels"] == DIGITS and info["preprocess"] == {"size": 28, "mode": "L"}
    assert info["summary"] == "Reads handwritten digits."
    assert info["card"] == {"text": "Reads handwritten digits.\n\nTrained on scans."}
    assert all(auth == f"token {TOKEN}" for *_, auth in platform.calls)
    platform.card_status = 403  # a visitor who may call the release but not read the model
    info = session_for(platform).info()
    assert "card" not in info and "summary" not in info and info["labels"] == DIGITS


def test_what_the_service_prefetched_is_not_read_again(platform: Platform) -> None:
    full = session_for(platform).info()
    platform.calls.clear()
    given = {"view": full["view"], "metadata": full["metadata"], "card": None}
    info = session_for(platform).info(given)  # the visitor may not read the model's card
    assert platform.calls == [] and info["labels"] == DIGITS and "card" not in info
    given["view"] = {**full["view"], "name": "another"}  # not this app's: read afresh
    info = session_for(platform).info(given)
    assert info["summary"] == "Reads handwritten digits." and len(platform.calls) == 3


def test_predict_and_flag_as_the_visitor(platform: Platform) -> None:
    session = session_for(platform)
    session.info()
    answer = session.predict([apps.image_instance(png())])
    assert answer.predictions["label"] == "7" and answer.request_id == "req-0001"
    assert answer.version == "digits@v3" and answer.latency_ms > 0
    method, path, body, auth = platform.calls[-1]
    assert (method, path, auth) == ("POST", "/services/models/digits/predict",
                                    f"token {TOKEN}")
    assert Image.open(io.BytesIO(base64.b64decode(body["instances"][0]["image"]))).size \
        == (28, 28)
    session.flag("req-0001", label="3", note="it is a 3")
    assert platform.calls[-1][:3] == ("POST", "/api/releases/digits/feedback", {
        "request_id": "req-0001", "instance": 0, "note": "it is a 3", "label": "3"})
    sent = len(platform.calls)
    with pytest.raises(errors.InvalidInput, match="one of the model's labels"):
        session.flag("req-0001", label="cat")
    with pytest.raises(errors.InvalidInput, match="one of the model's labels"):
        session.flag("req-0001", label=3)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidInput, match="predict first"):
        session.flag("")
    with pytest.raises(errors.InvalidInput, match="note is too long"):
        session.flag("req-0001", note="x" * 1001)
    assert len(platform.calls) == sent  # refused here, nothing sent


# -- the apps -----------------------------------------------------------------------------------

@pytest.mark.parametrize("task", apps.TASKS)
def test_each_app_builds_with_its_parts(platform: Platform, task: str) -> None:
    labels = {"object_detection": ["cat", "dog"], "ner": ["PER", "LOC"],
              "text_classification": ["neg", "pos"]}.get(task, DIGITS)
    app = app_for(platform, task, labels)
    assert {"lh-app", f"lh-app-{task.replace('_', '-')}"} <= set(app._dom_classes)
    assert app.layout.width == "100%" and app.layout.max_width == "720px"
    for name in ("lh-app-predict", "lh-app-result", "lh-app-latency", "lh-app-flag",
                 "lh-app-message", "lh-app-brand"):
        assert len(by_class(app, name)) == 1, name
    brand = by_class(app, "lh-app-brand")[0].value
    assert "digits" in brand and "version v3" in brand and "Reads handwritten" in brand
    kind = "lh-app-text" if task in ("text_classification", "ner") else "lh-app-upload"
    assert len(by_class(app, kind)) == 1
    has_label = task in ("image_classification", "text_classification")
    assert len(by_class(app, "lh-app-flag-label")) == int(has_label)
    for widget in walk(app):  # nothing wider than a phone
        width = getattr(getattr(widget, "layout", None), "width", None) or ""
        assert not width.endswith("px"), (widget, width)


def test_image_app_upload_predict_flag(platform: Platform) -> None:
    app = app_for(platform, "image_classification")
    upload = by_class(app, "lh-app-upload")[0]
    upload.value = upload_value(png())
    by_class(app, "lh-app-predict")[0].click()
    result = by_class(app, "lh-app-result")[0].value
    assert "<div class='lh-app-top'>7</div>" in result and "90.0%" in result
    assert "ms</b> by digits@v3" in by_class(app, "lh-app-latency")[0].value
    assert "req-0001" in by_class(app, "lh-app-request")[0].value
    assert by_class(app, "lh-app-message")[0].value == ""
    flag = by_class(app, "lh-app-flag")[0]
    assert not flag.disabled
    by_class(app, "lh-app-flag-label")[0].value = "1"
    app.flag_note.value = "a one"
    flag.click()
    assert platform.calls[-1][2] == {"request_id": "req-0001", "instance": 0,
                                     "note": "a one", "label": "1"}
    assert "your flag was sent" in by_class(app, "lh-app-message")[0].value
    assert flag.disabled  # once per answer


def test_image_app_takes_a_drawing(platform: Platform) -> None:
    app = app_for(platform, "image_classification")
    pad = by_class(app, "lh-app-draw")[0]
    pad.value = DATA_URL + base64.b64encode(png((200, 200))).decode()
    app.predict_button.click()
    assert "lh-app-top'>7<" in app.result.value
    sent = platform.calls[-1][2]["instances"][0]["image"]
    assert Image.open(io.BytesIO(base64.b64decode(sent))).size == (200, 200)


def test_bad_inputs_and_failures_are_messages(platform: Platform) -> None:
    app = app_for(platform, "image_classification")
    calls = len(platform.calls)
    app.predict_button.click()  # nothing given
    assert "draw something or upload an image first" in app.message.value
    app.upload.value = upload_value(b"GIF89a not really", "x.gif")
    app.predict_button.click()
    assert "not an image" in app.message.value and "lh-app-msg-error" in app.message.value
    assert len(platform.calls) == calls  # refused before sending
    assert not app.predict_button.disabled and app.flag_button.disabled
    app.upload.value = upload_value(png())
    platform.predict_status = 400
    app.predict_button.click()
    assert "instances[0].image: not a PNG or JPEG" in app.message.value
    assert "POST" not in app.message.value and "Traceback" not in app.message.value
    platform.predict_status = 500
    app.predict_button.click()
    assert "not available right now" in app.message.value
    platform.predict_status = 200
    app.predict_button.click()
    assert app.message.value == "" and "lh-app-top'>7<" in app.result.value
    # the network gone: a message too
    platform.shutdown()
    platform.server_close()
    app.predict_button.click()
    assert "not available right now" in app.message.value
    assert not app.predict_button.disabled


def test_crafted_comm_messages_leave_the_app_usable(platform: Platform) -> None:
    app = app_for(platform, "text_classification", ["neg", "pos"])
    dropdown = by_class(app, "lh-app-flag-label")[0]
    comm_update(dropdown, {"index": 999})
    assert dropdown.value == apps.NO_LABEL and dropdown.index == 0
    comm_update(dropdown, {"index": "pos"})
    comm_update(app.text, {"value": 12345})  # not a string
    assert app.text.value == ""
    comm_update(app.flag_button, {"disabled": False})  # enabling flag before an answer
    app.flag_button.click()
    assert "predict first" in app.message.value
    comm_update(app.text, {"value": "x" * 6000})  # past the app's own limit
    app.predict_button.click()
    assert "6000 characters; at most 5000" in app.message.value
    comm_update(app.text, {"value": "a fine day"})
    app.predict_button.click()
    assert "lh-app-top'>pos<" in app.result.value
    comm_update(dropdown, {"index": 1})
    assert dropdown.value == "neg"
    dropdown.set_trait("value", "neg")
    app.flag_button.click()
    assert platform.calls[-1][2]["label"] == "neg"
    # a label forced past the dropdown's own check is refused by the app's
    app.flag_label.set_trait("options", [("x", "x")])
    app.flag_label.value = "x"
    app.flagged = ""
    app.flag_button.disabled = False
    app.flag_button.click()
    assert "choose the right label" in app.message.value


def test_upload_comm_message_with_several_files_is_refused(platform: Platform) -> None:
    app = app_for(platform, "image_classification")
    app.upload.value = upload_value(png()) * 3
    app.predict_button.click()
    assert "choose one image file" in app.message.value


def test_detection_app_draws_the_boxes(platform: Platform) -> None:
    app = app_for(platform, "object_detection", ["cat", "dog"])
    app.upload.value = upload_value(png((64, 48), 0, "RGB"), "cats.png")
    app.predict_button.click()
    assert "lh-app-top'>cat<" in app.result.value and "92%" in app.result.value
    picture = by_class(app, "lh-app-result-image")[0]
    shown = Image.open(io.BytesIO(picture.value)).convert("RGB")
    assert shown.size == (64, 48) and picture.layout.display == ""
    r, g, _ = shown.getpixel((10, 20))  # the box's left edge, in the first palette colour
    assert r > 150 and g < 120
    assert max(shown.getpixel((60, 45))) < 40  # untouched (JPEG: nearly black)


def test_ner_app_highlights_the_spans(platform: Platform) -> None:
    app = app_for(platform, "ner", ["PER", "LOC"])
    app.text.value = "<i>Bob</i> lives here"
    app.predict_button.click()
    result = app.result.value
    assert "1 entities: PER" in result
    assert "&lt;i&gt;<mark" in result and "Bob<span class='lh-span-label'>PER" in result
    app.flag_note.value = "missed a place"
    app.flag_button.click()
    assert platform.calls[-1][2] == {"request_id": "req-0001", "instance": 0,
                                     "note": "missed a place"}


def test_the_environment_chooses_the_app(platform: Platform) -> None:
    env = {apps.ENV_API_URL: f"{platform.url}/api", apps.ENV_RELEASE: "digits",
           apps.ENV_VISITOR: TOKEN}
    assert isinstance(apps.app_from_environ(env), apps.ImageClassificationApp)
    for missing, says in ((apps.ENV_VISITOR, "not signed in"),
                          (apps.ENV_RELEASE, "No model was chosen"),
                          (apps.ENV_API_URL, "not set up")):
        app = apps.app_from_environ({k: v for k, v in env.items() if k != missing})
        assert "lh-app-unavailable" in app._dom_classes
        assert says in by_class(app, "lh-app-message")[0].value
    app = apps.app_from_environ({**env, apps.ENV_VISITOR: "someone-else"})
    assert "not signed in" in by_class(app, "lh-app-message")[0].value
    app = apps.app_from_environ({**env, apps.ENV_RELEASE: "nope"})
    assert "cannot start" in by_class(app, "lh-app-message")[0].value
    platform.task = "tabular"
    app = apps.app_from_environ(env)
    assert "no app for this model&#x27;s task (tabular)" in by_class(app, "lh-app-message")[0].value


def widget_state(app: apps.PredictionApp) -> dict:
    """What a visitor sees of APP: the header, the flag choices and the flag box."""
    return {"brand": app.brand.value, "options": app.flag_label.options,
            "flag": [type(c).__name__ for c in app.flag_box.children],
            "classes": list(app._dom_classes)}


def test_an_app_built_before_the_visitor_is_bound_to_their_release(platform: Platform) -> None:
    env = {apps.ENV_API_URL: f"{platform.url}/api", apps.ENV_RELEASE: "digits",
           apps.ENV_VISITOR: TOKEN}
    for task in apps.TASKS:
        platform.task = task
        prebuilt = apps.APPS[task]()  # what serve(task) makes while the pool fills
        assert prebuilt.session is None and prebuilt.brand.value == ""
        calls = len(platform.calls)
        prebuilt.predict_button.click()  # unbound: a message, nothing sent
        assert "lh-app-msg-error" in prebuilt.message.value
        assert len(platform.calls) == calls
        app = apps.app_from_environ(env, prebuilt=prebuilt)
        assert app is prebuilt and app.session is not None
        fresh = apps.app_from_environ(env)
        assert widget_state(app) == widget_state(fresh), task
        assert len(platform.calls) > calls  # it read the release as the visitor
    unbound = apps.TextClassificationApp()
    unbound.text.value = "a valid text"
    unbound.predict_button.click()
    assert "not connected to a release" in unbound.message.value
    # the release's task is not the template's: a fresh app, the prebuilt one closed
    platform.task = "text_classification"
    prebuilt = apps.ImageClassificationApp()
    app = apps.app_from_environ(env, prebuilt=prebuilt)
    assert isinstance(app, apps.TextClassificationApp)
    assert prebuilt.comm is None and prebuilt.upload.comm is None
    assert prebuilt.brand.layout.comm is None
    # a visitor who cannot open it: the message, the prebuilt app closed
    prebuilt = apps.ImageClassificationApp()
    app = apps.app_from_environ({**env, apps.ENV_VISITOR: "someone-else"}, prebuilt=prebuilt)
    assert "not signed in" in by_class(app, "lh-app-message")[0].value
    assert prebuilt.comm is None


def test_a_preheated_kernel_waits_for_the_request(monkeypatch: pytest.MonkeyPatch) -> None:
    import websockets

    got: list[str] = []
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop = loop.create_future()
    info = {apps.ENV_RELEASE: "digits", apps.ENV_VISITOR: TOKEN}

    async def handler(socket) -> None:
        got.append(socket.request.path)
        await socket.send(json.dumps(info))

    async def main() -> None:
        async with websockets.serve(handler, "127.0.0.1", 0) as server:
            port.append(server.sockets[0].getsockname()[1])
            ready.set()
            await stop

    port: list[int] = []
    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    assert ready.wait(10)
    for key in info:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("VOILA_PREHEAT", "False")
    apps.wait_for_request()  # not preheated: returns at once
    assert not got
    monkeypatch.setenv("VOILA_PREHEAT", "True")
    monkeypatch.setenv("VOILA_APP_PORT", str(port[0]))
    monkeypatch.setenv("VOILA_SERVER_URL", "/services/apps/")
    monkeypatch.setenv("VOILA_KERNEL_ID", "k-1")
    apps.wait_for_request()
    assert got == ["/services/apps/voila/query/k-1"]
    assert os.environ[apps.ENV_RELEASE] == "digits" and os.environ[apps.ENV_VISITOR] == TOKEN
    loop.call_soon_threadsafe(stop.set_result, None)
    thread.join(5)
    loop.close()


def test_the_apps_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from loophub.widgets import apps\n"
        "s = apps.AppSession('http://127.0.0.1:9/api', 't', 'r')\n"
        "for task in apps.TASKS:\n"
        "    apps.build_app(s, {'task': task, 'labels': ['a', 'b'], 'model': 'm',\n"
        "                        'version': 'm@v1', 'url': 'http://127.0.0.1:9/m/'})\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in\n"
        "             ('torch', 'torchvision', 'pandas', 'plotly'))\n"
        "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_template_notebooks() -> None:
    for task in apps.TASKS:
        nb = nbformat.read(ROOT / "notebooks" / "apps" / f"{task}.ipynb", as_version=4)
        nbformat.validate(nb)
        assert nb.metadata.kernelspec.name == "python3"
        kinds = [cell.cell_type for cell in nb.cells]
        assert kinds == ["markdown", "code", "code"]
        assert "lh-admin-note" in nb.cells[0].metadata.tags
        assert nb.cells[1].source == "from loophub.widgets.apps import serve"
        assert nb.cells[2].source == f'serve("{task}")'  # built before the visitor
        assert all(cell.get("id") for cell in nb.cells)
        assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")


def test_the_caps_on_sessions() -> None:
    from loophub.releases.apps import Capacity

    cap = Capacity(max_kernels=8, retry_after=10, per_user=2)
    assert cap.admits(7) and not cap.admits(8)
    assert cap.admits_visitor(1) and not cap.admits_visitor(2)
    assert cap.wait_seconds(8) == 10 and cap.wait_seconds(10) == 20 and cap.wait_seconds(99) == 60
    unlimited = Capacity(max_kernels=0, per_user=0)
    assert unlimited.admits(10_000) and unlimited.admits_visitor(10_000)
