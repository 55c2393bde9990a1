"""Predictions from a trained artifact: the TorchScript module a recipe saved plus its
metadata, applied to raw inputs (images, texts, dataset records) exactly as the recipe
prepared its training inputs.

Nothing here re-implements preprocessing: images go through the recipes'
``prepare_image`` (image classification and detection each have theirs), texts through
the recipe's ``Tokenizer`` (and ``tagger_chunks`` for the NER tagger), the detector's
outputs through its ``decode``. The artifact is read with ``torch.jit.load`` only (no
pickle, no user code), on the CPU, and always run in eval mode under
``torch.inference_mode()``: the same inputs give the same outputs.

Prediction shapes (also the items of ``signature()["response"]["predictions"]``):

- classification (images, texts): ``{"label", "index", "scores"}``, scores the softmax
  probabilities in label order;
- NER: ``{"spans": [{"start", "end", "label", "text", "score"}]}``, code-point offsets
  into the text, score the mean over the span's tokens of the probability of the tag
  predicted for each;
- detection: ``{"boxes": [{"box", "label", "index", "score"}]}``, box ``[x, y, w, h]`` in
  the original image's pixels, score the heatmap peak's probability, best first.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from loophub.errors import InvalidInput
from loophub.models.signature import TASKS, signature

if TYPE_CHECKING:
    from PIL import Image

    from loophub.training.recipes.text import Tokenizer

# a PIL image, a path (str or Path) or the file's bytes
ImageInput: TypeAlias = "Image.Image | str | Path | bytes"
CLASSIFICATION = ("image_classification", "text_classification")
IMAGE_TASKS = ("image_classification", "object_detection")
TEXT_TASKS = ("text_classification", "ner")
BATCH_SIZE = 64


class Predictor:
    """A loaded artifact: ``task``, ``labels`` (the model's class names, in its output
    order), ``meta`` (the artifact's metadata) and the predict methods of its task."""

    def __init__(self, module: Any, meta: dict) -> None:
        self.module = module
        self.meta = meta
        self.task: str = meta["task"]
        self.labels: list[str] = list(meta["labels"])
        self.preprocess: dict = meta["preprocess"]
        self._tokenizer: Tokenizer | None = None
        if self.task in TEXT_TASKS:
            from loophub.training.recipes.text import Tokenizer

            self._tokenizer = Tokenizer.from_json(self.preprocess["tokenizer"])

    # -- loading ------------------------------------------------------------------------

    @classmethod
    def load(cls, artifact: bytes, meta: dict) -> Predictor:
        """The predictor of ARTIFACT (TorchScript bytes, as ``ctx.save_model`` stores
        them) with its META; InvalidInput when META is not a recipe's or the bytes are
        not a TorchScript module."""
        check_meta(meta)
        if not isinstance(artifact, bytes | bytearray | memoryview):
            raise InvalidInput(f"model artifact: expected the TorchScript file's bytes, got "
                               f"{type(artifact).__name__}", detail={"field": "artifact"})
        import torch

        try:
            module = torch.jit.load(io.BytesIO(bytes(artifact)), map_location="cpu")
        except Exception as exc:  # torch says RuntimeError, or worse, for garbage
            text = str(exc).strip()
            reason = text.splitlines()[0] if text else type(exc).__name__
            raise InvalidInput(
                f"model artifact: {len(artifact)} bytes that are not a TorchScript module "
                f"(torch.jit.load: {reason}); an artifact is the model.pt a training job "
                "saved (torch.jit.save of a traced module)",
                detail={"field": "artifact"}) from None
        module.eval()  # dropout off, batch norm on its running statistics
        try:
            return cls(module, meta)
        except (KeyError, TypeError, ValueError, re.error) as exc:
            raise InvalidInput(f"model metadata: preprocess.tokenizer is not a recipe's "
                               f"tokenizer ({type(exc).__name__}: {exc})",
                               detail={"field": "meta.preprocess.tokenizer"}) from None

    # -- public predictions -------------------------------------------------------------

    def predict_images(self, images: Sequence[ImageInput], *, batch_size: int = BATCH_SIZE,
                       score_threshold: float | None = None, top_k: int | None = None
                       ) -> list[dict]:
        """One prediction per image (a PIL image, a path as str or Path, or the file's
        bytes; a server decodes base64 first). SCORE_THRESHOLD and TOP_K (detection
        only) replace the artifact's decode settings, e.g. to measure mAP."""
        self._expect(IMAGE_TASKS, "predict_texts")
        with _inference():
            return list(self._images(list(images), batch_size, score_threshold, top_k,
                                     lambda n: f"images[{n}]"))

    def predict_texts(self, texts: Sequence[str], *, batch_size: int = BATCH_SIZE
                      ) -> list[dict]:
        """One prediction per text, tokenized as the recipe does."""
        self._expect(TEXT_TASKS, "predict_images")
        for n, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInput(f"texts[{n}]: expected a string, got "
                                   f"{type(text).__name__}", detail={"field": f"texts[{n}]"})
        tokenizer = self._require_tokenizer()
        with _inference():
            if self.task == "ner":
                return self._tag([(t, tokenizer.tokens(t)) for t in texts], batch_size)
            return self._classify_texts(list(texts), batch_size)

    def predict_records(self, records: Sequence[dict],
                        media_path: Callable[[dict], Path | None], *,
                        batch_size: int = BATCH_SIZE, score_threshold: float | None = None,
                        top_k: int | None = None) -> list[dict]:
        """One prediction per dataset record: its image (MEDIA_PATH(record)) or its text;
        a NER record's own ``tokens`` are used when it has them, as in training."""
        records = list(records)
        with _inference():
            if self.task in IMAGE_TASKS:
                paths = [_record_media(record, media_path) for record in records]
                return list(self._images(paths, batch_size, score_threshold, top_k,
                                         lambda n: f"record {records[n].get('id')!r}"))
            if self.task == "ner":
                from loophub.training.recipes.text import record_offsets

                regex = re.compile(self._require_tokenizer().pattern)
                return self._tag([(r.get("text") or "", record_offsets(r, regex))
                                  for r in records], batch_size)
            return self._classify_texts([r.get("text") or "" for r in records], batch_size)

    def signature(self) -> dict[str, Any]:
        """JSON Schemas {"request": ..., "response": ...} of this model: the request's
        ``instances`` (base64 images or texts), the response's ``predictions`` (the
        dicts the predict methods return), label names as enums."""
        return signature(self.task, self.labels, self.preprocess)

    # -- images ---------------------------------------------------------------------------

    def _images(self, sources: list, batch_size: int, score_threshold: float | None,
                top_k: int | None, where: Callable[[int], str]) -> Iterator[dict]:
        """Predictions for image SOURCES, BATCH_SIZE at a time (only one batch of pixels
        in memory)."""
        import torch

        for start, chunk in _batches(sources, batch_size):
            prepared = [self._prepare_image(source, where(start + n))
                        for n, source in enumerate(chunk)]
            batch = torch.stack([pixels for pixels, _ in prepared])
            if self.task == "image_classification":
                yield from _classified(self.module(batch), self.labels)
            else:
                sizes = [size for _, size in prepared]
                yield from self._detections(batch, sizes, score_threshold, top_k)

    def _prepare_image(self, source: Any, where: str) -> tuple[Any, tuple[int, int]]:
        """The artifact's input for SOURCE (the recipe's own preprocessing) and the
        image's original (width, height); unreadable images are the caller's error."""
        from PIL import UnidentifiedImageError

        from loophub.training.recipes import detection, image

        if isinstance(source, str):
            source = Path(source)  # a str is a path; a server decodes base64 first
        try:
            if self.task == "object_detection":
                pixels, width, height = detection.prepare_image(source, self.preprocess)
                return pixels, (width, height)
            return image.prepare_image(source, self.preprocess), (0, 0)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise InvalidInput(f"{where}: not an image that can be read ({exc}); give a "
                               "PNG, JPEG, GIF, BMP or WebP file",
                               detail={"field": where}) from None

    def _detections(self, batch: Any, sizes: list[tuple[int, int]],
                    score_threshold: float | None, top_k: int | None) -> Iterator[dict]:
        from loophub.training.recipes.detection import decode

        settings = self.meta["decode"]
        heatmap, size, offset = self.module(batch)
        found = decode(heatmap, size, offset,
                       score_threshold=float(settings["score_threshold"]
                                             if score_threshold is None else score_threshold),
                       top_k=int(settings["top_k"] if top_k is None else top_k),
                       peak_kernel=int(settings.get("peak_kernel", 3)))
        for detections, (width, height) in zip(found, sizes, strict=True):
            yield {"boxes": _pixel_boxes(detections, width, height, self.labels)}

    # -- texts ----------------------------------------------------------------------------

    def _classify_texts(self, texts: list[str], batch_size: int) -> list[dict]:
        from loophub.training.recipes.text import pad_batch

        tokenizer = self._require_tokenizer()
        out: list[dict] = []
        for _, chunk in _batches(texts, batch_size):
            ids = pad_batch([tokenizer.encode(text)[0] for text in chunk], 0)
            out.extend(_classified(self.module(ids), self.labels))
        return out

    def _tag(self, texts: list[tuple[str, list[tuple[int, int]]]], batch_size: int
             ) -> list[dict]:
        """NER spans of each (text, token offsets): every chunk of max_len tokens is
        tagged (a span crossing a chunk's end is cut there), the chunks' spans joined."""
        from loophub.training.recipes.text import tagger_chunks

        tokenizer = self._require_tokenizer()
        pieces = [(row, ids, offsets) for row, (text, given) in enumerate(texts)
                  for ids, offsets in tagger_chunks(tokenizer, text, given) if ids]
        found: list[list[dict]] = [[] for _ in texts]
        for _, chunk in _batches(pieces, batch_size):
            for (row, _, offsets), spans in zip(chunk, self._tag_chunks(chunk), strict=True):
                text = texts[row][0]
                found[row].extend({"start": s, "end": e, "label": label, "text": text[s:e],
                                   "score": score} for s, e, label, score in
                                  _offset_spans(spans, offsets))
        return [{"spans": spans} for spans in found]

    def _tag_chunks(self, chunk: list[tuple[int, list[int], list]]
                    ) -> list[list[tuple[int, int, str, float]]]:
        """(first token, end token, label, score) spans of each chunk in one batch."""
        import torch

        from loophub.training.recipes.text import pad_batch, tags_to_spans

        tags = self.preprocess["tags"]
        probs = torch.softmax(self.module(pad_batch([ids for _, ids, _ in chunk], 0)).float(),
                              -1)
        best, which = probs.max(-1)
        out = []
        for n, (_, ids, _) in enumerate(chunk):
            names = [tags[i] for i in which[n, :len(ids)].tolist()]
            scores = best[n, :len(ids)].tolist()
            out.append([(s, e, label, sum(scores[s:e]) / (e - s))
                        for s, e, label in tags_to_spans(names)])
        return out

    # -- checks ---------------------------------------------------------------------------

    def _expect(self, tasks: tuple[str, ...], instead: str) -> None:
        if self.task not in tasks:
            raise InvalidInput(f"this model's task is {self.task}: it does not take these "
                               f"inputs; use {instead}", detail={"field": "task"})

    def _require_tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            raise InvalidInput(f"this model's task is {self.task}: it does not take texts; "
                               "use predict_images", detail={"field": "task"})
        return self._tokenizer

    def __repr__(self) -> str:
        return f"Predictor(task={self.task!r}, labels={self.labels!r})"


# -- metadata -----------------------------------------------------------------------------

def check_meta(meta: Any) -> None:
    """InvalidInput unless META is a recipe artifact's metadata this module can serve:
    TorchScript, a known task, its labels, and the preprocessing that task needs."""
    if not isinstance(meta, dict):
        raise InvalidInput("model metadata: expected the artifact's JSON object (format, "
                           "task, preprocess, labels)", detail={"field": "meta"})
    if meta.get("format") != "torchscript":
        raise InvalidInput(f"model metadata: format {meta.get('format')!r} is not one this "
                           "predictor loads; only 'torchscript' artifacts (what the "
                           "built-in recipes save)", detail={"field": "meta.format"})
    task = meta.get("task")
    if task not in TASKS:
        raise InvalidInput(f"model metadata: task {task!r} has no predictor; one of "
                           f"{', '.join(TASKS)}", detail={"field": "meta.task"})
    labels = meta.get("labels")
    if not isinstance(labels, list) or not labels or not all(
            isinstance(label, str) for label in labels):
        raise InvalidInput("model metadata: labels must be the non-empty list of the "
                           "model's class names", detail={"field": "meta.labels"})
    missing = [key for key in _needed(task) if _lookup(meta, key) is None]
    if missing:
        raise InvalidInput(f"model metadata: a {task} artifact needs "
                           f"{', '.join(missing)}; it was not saved by a built-in recipe",
                           detail={"field": f"meta.{missing[0]}"})
    _check_image_preprocess(meta)


def _needed(task: str) -> tuple[str, ...]:
    if task in IMAGE_TASKS:
        keys = ("preprocess.mode", "preprocess.size", "preprocess.mean", "preprocess.std")
        return (*keys, "decode.score_threshold", "decode.top_k") \
            if task == "object_detection" else keys
    return ("preprocess.tokenizer", "preprocess.tags") if task == "ner" \
        else ("preprocess.tokenizer",)


def _lookup(meta: dict, dotted: str) -> Any:
    found: Any = meta
    for key in dotted.split("."):
        found = found.get(key) if isinstance(found, dict) else None
    return found


def _check_image_preprocess(meta: dict) -> None:
    """The recipes read images one way only: stretched to size, scaled by 1/255."""
    pre = meta["preprocess"]
    if meta["task"] not in IMAGE_TASKS:
        return
    if pre.get("resize", "stretch") != "stretch" or abs(
            float(pre.get("scale", 1 / 255)) - 1 / 255) > 1e-12:
        raise InvalidInput("model metadata: preprocess resize/scale other than the "
                           "recipes' ('stretch', 1/255) is not supported",
                           detail={"field": "meta.preprocess"})


# -- helpers --------------------------------------------------------------------------------

@contextmanager
def _inference() -> Iterator[None]:
    """torch.inference_mode(), imported on use (this module loads without torch)."""
    import torch

    with torch.inference_mode():
        yield


def _batches(items: list, size: int) -> Iterator[tuple[int, list]]:
    """(start, slice) of ITEMS, SIZE at a time."""
    if size < 1:
        raise InvalidInput(f"batch_size: {size} must be at least 1",
                           detail={"field": "batch_size"})
    for start in range(0, len(items), size):
        yield start, items[start:start + size]


def _classified(logits: Any, labels: list[str]) -> list[dict]:
    import torch

    probs = torch.softmax(logits.float(), 1)
    return [{"label": labels[int(row.argmax())], "index": int(row.argmax()),
             "scores": row.tolist()} for row in probs]


def _pixel_boxes(found: dict, width: int, height: int, labels: list[str]) -> list[dict]:
    """decode's boxes (fractions of the image) in the original image's pixels."""
    scale = [width, height, width, height]
    return [{"box": [v * s for v, s in zip(box, scale, strict=True)],
             "label": labels[index], "index": index, "score": score}
            for box, index, score in zip(found["boxes"].tolist(), found["labels"].tolist(),
                                         found["scores"].tolist(), strict=True)]


def _offset_spans(spans: list[tuple[int, int, str, float]], offsets: list[tuple[int, int]]
                  ) -> list[tuple[int, int, str, float]]:
    """Token-index spans as code-point offsets into the text."""
    return [(offsets[s][0], offsets[e - 1][1], label, score) for s, e, label, score in spans]


def _record_media(record: dict, media_path: Callable[[dict], Path | None]) -> Path:
    path = media_path(record)
    if path is None:
        raise InvalidInput(f"record {record.get('id')!r} has no media file to predict on",
                           detail={"field": "media"})
    return Path(path)
