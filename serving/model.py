"""The served model: one version's TorchScript artifact (torch.jit.load through
loophub.models.predictor, never a pickle) and the two steps the server runs on its
inference thread: ``prepare`` one request's instances (the recipes' own preprocessing),
then ``predict`` several prepared requests in one forward pass and split the answers.

Classifiers (image and text) get a batched path of their own: their inputs stack (images
are all the model's size; texts pad with id 0, which the text recipe's model masks), so
the requests of a batch go through the module together and each gets back exactly its
rows. Detection and NER go through the Predictor's public methods with all the batch's
inputs at once (the Predictor batches them itself); the answers are the Predictor's by
construction. Either way the dicts are the Predictor's shapes (label, index, scores /
boxes / spans).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loophub.errors import InvalidInput, LoophubError
from loophub.models.predictor import Predictor
from loophub.models.signature import signature
from loophub.serving.validation import Instance


def image_errors() -> tuple[type[BaseException], ...]:
    """What PIL raises for a file that is not a readable image (UnidentifiedImageError
    is an OSError; a decompression bomb is its own class)."""
    from PIL import Image

    return (OSError, ValueError, Image.DecompressionBombError)


@dataclass
class Prepared:
    """One request's inputs, ready for the module: a tensor (image classifier), token id
    lists (text classifier) or the raw inputs (detection, NER)."""

    count: int
    inputs: Any


def load_artifact(artifact: str | Path, meta: str | Path | dict) -> Predictor:
    """The Predictor of the TorchScript file ARTIFACT with META (a dict, or the path of
    its JSON file); InvalidInput with what was wrong otherwise."""
    if not isinstance(meta, dict):
        try:
            meta = json.loads(Path(meta).read_text())
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"model metadata {meta}: cannot be read as JSON ({exc})",
                               detail={"field": "meta"}) from None
    try:
        data = Path(artifact).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"model artifact {artifact}: cannot be read ({exc.strerror})",
                           detail={"field": "artifact"}) from None
    return Predictor.load(data, meta)


class ServedModel:
    """A loaded Predictor plus the batched prepare/predict steps the server needs.
    FORWARD_CHUNK bounds the instances of one module call (memory), whatever the batch."""

    def __init__(self, predictor: Predictor, forward_chunk: int = 64) -> None:
        import torch

        self.predictor = predictor
        self.task = predictor.task
        self.labels = predictor.labels
        self.meta = predictor.meta
        self.forward_chunk = max(1, forward_chunk)
        self.signature = signature(self.task, self.labels, predictor.preprocess)
        pre = predictor.preprocess
        if self.task == "image_classification":
            # built once: normalising a request allocates only its own pixels
            channels = len(pre["mean"])
            self._mean = torch.tensor(pre["mean"], dtype=torch.float32).view(1, channels, 1, 1)
            self._std = torch.tensor(pre["std"], dtype=torch.float32).view(1, channels, 1, 1)

    # -- step 1: one request ------------------------------------------------------------

    def prepare(self, instances: Sequence[Instance]) -> Prepared:
        """INSTANCES as the module's inputs; InvalidInput naming the instance when one
        cannot be read (an image file that is not one)."""
        if self.task == "image_classification":
            return Prepared(len(instances), self._image_tensor(instances))
        if self.task == "text_classification":
            tokenizer = self.predictor._require_tokenizer()
            return Prepared(len(instances),
                            [tokenizer.encode(i.text or "")[0] for i in instances])
        if self.task == "ner":
            return Prepared(len(instances), [i.text or "" for i in instances])
        for n, instance in enumerate(instances):  # detection: the files must open
            _check_image(instance.image or b"", f"instances[{n}].image")
        return Prepared(len(instances), [i.image for i in instances])

    def _image_tensor(self, instances: Sequence[Instance]) -> Any:
        import numpy as np
        import torch

        from loophub.training.recipes.image import prepare_image

        pixels = [i.pixels for i in instances]
        if all(p is not None for p in pixels):  # the lean path: one stack, one normalise
            stacked = torch.from_numpy(np.stack(pixels))
            stacked = stacked.unsqueeze(1) if stacked.dim() == 3 else stacked.permute(0, 3, 1, 2)
            return (stacked / 255.0 - self._mean) / self._std
        rows = []
        for n, instance in enumerate(instances):
            if instance.pixels is not None:
                array = torch.from_numpy(instance.pixels)
                array = array.unsqueeze(0) if array.dim() == 2 else array.permute(2, 0, 1)
                rows.append((array / 255.0 - self._mean[0]) / self._std[0])
                continue
            try:
                rows.append(prepare_image(instance.image, self.predictor.preprocess))
            except image_errors() as exc:
                raise _unreadable(f"instances[{n}].image", exc) from None
        return torch.stack(rows)

    # -- step 2: several requests, one pass -----------------------------------------------

    def predict(self, batch: Sequence[Prepared]) -> list[list[dict]]:
        """The predictions of each prepared request of BATCH, in order, from one pass."""
        import torch

        with torch.inference_mode():
            if self.task == "image_classification":
                return _split(self._classify(torch.cat([p.inputs for p in batch])), batch)
            if self.task == "text_classification":
                return _split(self._classify_ids([ids for p in batch for ids in p.inputs]),
                              batch)
            flat = [x for p in batch for x in p.inputs]
            if self.task == "ner":
                return _split(self.predictor.predict_texts(flat, batch_size=self.forward_chunk),
                              batch)
            return _split(self.predictor.predict_images(flat, batch_size=self.forward_chunk),
                          batch)

    def _classify(self, inputs: Any) -> list[dict]:
        from loophub.models.predictor import _classified

        out: list[dict] = []
        for start in range(0, len(inputs), self.forward_chunk):
            out.extend(_classified(self.predictor.module(
                inputs[start:start + self.forward_chunk]), self.labels))
        return out

    def _classify_ids(self, ids: list[list[int]]) -> list[dict]:
        from loophub.models.predictor import _classified
        from loophub.training.recipes.text import pad_batch

        out: list[dict] = []
        for start in range(0, len(ids), self.forward_chunk):
            out.extend(_classified(self.predictor.module(
                pad_batch(ids[start:start + self.forward_chunk], 0)), self.labels))
        return out

    # -- warm-up --------------------------------------------------------------------------

    def dummy_instances(self) -> list[Instance]:
        """An input every model of this task takes: a blank PNG of the model's size
        (through the file path, so PIL is loaded too), or a short text."""
        if self.task in ("text_classification", "ner"):
            return [Instance(text="warm up the model")]
        from PIL import Image

        size = self.predictor.preprocess.get("size") or 32
        width, height = (size, size) if isinstance(size, int) else (size[1], size[0])
        mode = self.predictor.preprocess.get("mode", "RGB")
        buffer = io.BytesIO()
        Image.new(mode, (int(width), int(height))).save(buffer, format="PNG")
        return [Instance(image=buffer.getvalue())]

    def warm_up(self, rounds: int = 3) -> int:
        """A few passes on a dummy input (the passes made): the first calls of a
        TorchScript module profile and optimise it, so they must not be a client's."""
        for _ in range(rounds):
            self.predict([self.prepare(self.dummy_instances())])
        return rounds


def run_batch(model: ServedModel, jobs: Sequence[Sequence[Instance]]
              ) -> list[list[dict] | LoophubError]:
    """Each job's predictions, or the error that is that job's alone: requests whose
    inputs cannot be read fail by themselves, the others share one pass. Run on the
    server's inference thread."""
    results: list[list[dict] | LoophubError] = [[] for _ in jobs]
    ready: list[tuple[int, Prepared]] = []
    for n, job in enumerate(jobs):
        try:
            ready.append((n, model.prepare(job)))
        except LoophubError as exc:
            results[n] = exc
    if not ready:
        return results
    try:
        answers = model.predict([prepared for _, prepared in ready])
    except LoophubError:
        if len(ready) == 1:
            raise
        # one request's input broke the shared pass (the Predictor's own checks): each
        # alone, so only that request fails
        answers = []
        for _, prepared in ready:
            try:
                answers.extend(model.predict([prepared]))
            except LoophubError as exc:
                answers.append(exc)  # type: ignore[arg-type]
    for (n, _), answer in zip(ready, answers, strict=True):
        results[n] = answer
    return results


def _split(flat: list[dict], batch: Sequence[Prepared]) -> list[list[dict]]:
    out, start = [], 0
    for prepared in batch:
        out.append(flat[start:start + prepared.count])
        start += prepared.count
    return out


def _check_image(data: bytes, field: str) -> None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except image_errors() as exc:
        raise _unreadable(field, exc) from None


def _unreadable(field: str, exc: BaseException) -> InvalidInput:
    from PIL import UnidentifiedImageError

    reason = "not a known image format" if isinstance(exc, UnidentifiedImageError) \
        else str(exc)
    return InvalidInput(f"{field}: not an image that can be read ({reason}); give a PNG, "
                        "JPEG, GIF, BMP or WebP file", detail={"field": field})
