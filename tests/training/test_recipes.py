"""The text and detection recipes on real data in one process (a FolderChannel, 1 rank,
no Dask): each learns (its metric well above chance), is preempted after its first
epoch and resumes from the checkpoint, and leaves a TorchScript artifact whose outputs
have the documented shapes and whose preprocess metadata is complete.

The data is generated here (the shared fixtures have a handful of records: too few to
learn from) but shaped like real data: news-like snippets by topic, sentences with
people, organisations and places (names in val/test mostly never seen in training),
and shapes pasted on noisy canvases of two sizes with boxes in pixels and in fractions.
The shared CoNLL and COCO fixtures go through the importers and one short epoch each,
so real imports train too.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from loophub.errors import InvalidInput
from loophub.training.context import FolderChannel, Preempted, TrainContext
from loophub.training.data import MaterializedVersion, materialize
from loophub.training.recipes import recipe, recipes
from tests.conftest import shared_dir

# -- data ---------------------------------------------------------------------------------

TOPICS = {
    "sports": [
        "match", "team", "goal", "coach", "season", "league", "striker", "keeper", "final",
        "tournament", "score", "players", "stadium", "injury", "transfer", "champions", "defender",
        "referee"],
    "business": [
        "shares", "profit", "market", "investors", "quarter", "revenue", "bank", "merger", "stock",
        "prices", "company", "earnings", "growth", "inflation", "deal", "exports", "retail"],
    "science": [
        "researchers", "study", "cells", "climate", "species", "telescope", "experiment", "data",
        "physics", "genome", "vaccine", "planet", "laboratory", "molecules", "samples", "energy"],
    "politics": [
        "election", "minister", "parliament", "vote", "party", "campaign", "senator", "government",
        "policy", "president", "reform", "coalition", "bill", "opposition", "ballot", "voters"],
}
FILLER = [
    "the", "a", "of", "in", "on", "and", "to", "for", "with", "this", "that", "after", "before",
    "new", "said", "more", "than", "year", "week", "on", "monday", "tuesday", "was", "were", "has",
    "had", "by", "from", "at", "as", "it", "its"]


def topic_records(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    names = sorted(TOPICS)
    records = []
    for n in range(count):
        topic = names[n % len(names)]
        words = []
        for _ in range(rng.randint(8, 18)):
            if rng.random() < 0.35:
                pool = TOPICS[topic] if rng.random() < 0.8 else TOPICS[rng.choice(names)]
                words.append(rng.choice(pool))
            else:
                words.append(rng.choice(FILLER))
        text = " ".join(words).capitalize() + rng.choice([".", "!", " ...", "?"])
        records.append({"id": f"t{n:04d}", "text": text, "split": _split(n, count),
                        "annotations": [{"type": "text_class", "label": topic}]})
    rng.shuffle(records)
    return records


FIRST = ["Anna", "Lukas", "Maria", "John", "Chen", "Fatima", "Pierre", "Olga", "Kenji",
         "Sofia", "Ahmed", "Elena", "Marco", "Zoë", "Tomás", "Ingrid", "Raj", "Amara",
         "Björn", "Yuki", "Carlos", "Leila", "Hans", "Nadia"]
LAST = ["Schmidt", "Okafor", "García", "Smith", "Wang", "Haddad", "Dubois", "Ivanova",
        "Tanaka", "Rossi", "Müller", "Kowalski", "Silva", "Nguyen", "Berg", "Patel",
        "Moreau", "Novak", "Costa", "Lindqvist", "Jensen", "Kaya", "Horvat", "Ferreira"]
PLACES = ["Paris", "Berlin", "São Paulo", "New York", "Lagos", "Osaka", "Lyon", "Oslo",
          "Nairobi", "Lima", "Toronto", "Madrid", "Hanoi", "Quito", "Porto", "Kyiv",
          "Buenos Aires", "Cape Town", "Dublin", "Seoul", "Vienna", "Accra", "Lisbon", "Perth"]
ORGS = ["Acme Corp", "Globex", "Initech", "Northwind Bank", "Umbrella Group", "Stark Industries",
        "Wayne Enterprises", "Hooli", "Vandelay Imports", "Soylent Foods", "Cyberdyne",
        "Tyrell Systems", "Oscorp", "Wonka Industries", "Aperture Labs", "Massive Dynamic",
        "Gringotts Bank", "Monarch Airlines", "Pied Piper", "Duff Brewing", "Blue Sun",
        "Nakatomi Trading", "Virtucon", "Zorg Industries"]
TEMPLATES = [
    "{PER} visited {LOC} on Monday.",
    "{PER}, who works for {ORG}, said the deal was done.",
    "Shares of {ORG} rose 3% in {LOC} trading.",
    "{PER} was born in {LOC} in 1984.",
    "The mayor of {LOC} met {PER} yesterday.",
    "{ORG} announced a new factory near {LOC}.",
    "According to {PER}, {ORG} will hire 200 people.",
    "{PER} and {PER} flew from {LOC} to {LOC}.",
    "Analysts at {ORG} expect growth in {LOC} next year.",
    "In {LOC}, {PER} told reporters that {ORG} had no comment.",
    "The weather was mild and nobody complained.",
    "{ORG} sued {ORG} over a patent, {PER} said.",
    # only in val and test
    "Fans in {LOC} cheered as {PER} signed with {ORG}.",
    "{PER} left {ORG} for a job in {LOC}.",
    "Investors in {LOC} doubt that {ORG} can repay {PER}.",
]
HELD_OUT = 3


def ner_records(count: int, seed: int = 0) -> list[dict]:
    """Sentences with spans at code-point offsets; val and test draw their names from the
    last third of each list (never seen in training) and have three sentence patterns of
    their own."""
    rng = random.Random(seed)
    records = []
    for n in range(count):
        split = _split(n, count)
        cut = 2 * len(FIRST) // 3

        def pick(pool, split=split, cut=cut):
            return rng.choice(pool[:cut] if split == "train" else pool[cut:])
        fill = {"PER": lambda: f"{pick(FIRST)} {pick(LAST)}" if rng.random() < 0.7
                else pick(LAST),
                "LOC": lambda: pick(PLACES), "ORG": lambda: pick(ORGS)}
        text, annotations = "", []
        template = rng.choice(TEMPLATES[:-HELD_OUT] if split == "train" else TEMPLATES)
        for part in re.split(r"(\{[A-Z]+\})", template):
            if part.startswith("{"):
                label = part[1:-1]
                name = fill[label]()
                annotations.append({"type": "span", "label": label, "start": len(text),
                                    "end": len(text) + len(name)})
                text += name
            else:
                text += part
        records.append({"id": f"s{n:04d}", "text": text, "split": split,
                        "annotations": annotations})
    return records


SHAPES = ["square", "disc", "triangle"]


def shape_images(folder: Path, count: int, seed: int = 0) -> tuple[list[dict], dict]:
    """Canvases (64x64 and 96x72) of noise and a colour gradient with 1-3 shapes each;
    boxes in pixels on half the images and in fractions (normalized) on the others."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    records, paths = [], {}
    for n in range(count):
        width, height = (64, 64) if n % 2 else (96, 72)
        base = rng.integers(40, 200, size=3)
        ramp = np.linspace(-30, 30, width)[None, :, None]
        pixels = np.clip(base + ramp + rng.normal(0, 12, (height, width, 3)), 0, 255)
        image = Image.fromarray(pixels.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        annotations = []
        for _ in range(rng.integers(1, 4)):
            kind = int(rng.integers(len(SHAPES)))
            side = int(rng.integers(width // 6, width // 2.6))
            x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
            if kind == 0:
                draw.rectangle([x, y, x + side - 1, y + side - 1], fill=colour)
            elif kind == 1:
                draw.ellipse([x, y, x + side - 1, y + side - 1], fill=colour)
            else:
                draw.polygon([(x + side / 2, y), (x, y + side - 1), (x + side - 1, y + side - 1)],
                             fill=colour)
            box = [x, y, side, side]
            annotation = {"type": "bbox", "label": SHAPES[kind], "bbox": box}
            if n % 4 < 2:
                annotation.update(bbox=[x / width, y / height, side / width, side / height],
                                  normalized=True)
            annotations.append(annotation)
        records.append(_image_record(folder, f"img{n:04d}", image, annotations,
                                     _split(n, count), paths))
    return records, paths


def _image_record(folder: Path, name: str, image, annotations: list, split: str | None,
                  paths: dict) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    (folder / f"{name}.png").write_bytes(data)
    paths[digest] = folder / f"{name}.png"
    record = {"id": name, "media": {"sha256": digest, "type": "image/png", "size": len(data),
                                    "width": image.width, "height": image.height},
              "annotations": annotations}
    if split:
        record["split"] = split
    return record


def _split(n: int, count: int) -> str:
    return "train" if n < 0.7 * count else "val" if n < 0.85 * count else "test"


def version_of(folder: Path, records: list[dict], schema: dict, paths: dict | None = None,
               name: str = "") -> MaterializedVersion:
    """RECORDS materialized as a job's ranks see them (only those the recipe can use)."""
    usable = recipe(name).usable if name else (lambda r: True)
    materialize([r for r in records if usable(r)], schema, folder / "version",
                lambda digest: (paths or {}).get(digest))
    return MaterializedVersion(folder / "version")


# -- running ----------------------------------------------------------------------------------

class PreemptingChannel(FolderChannel):
    """Asks the job to stop (preempted) once its first checkpoint is written."""

    def put_checkpoint(self, data: bytes, step: int, epoch, metric) -> str:
        self.stop = "preempted"
        return super().put_checkpoint(data, step, epoch, metric)


def context(name: str, version: MaterializedVersion, channel, params: dict) -> TrainContext:
    found = recipe(name, version.task)
    checked = {**found.check_params(params), "_recipe": name}
    return TrainContext(version=version, channel=channel, params=checked,
                        seed=int(checked["seed"]))


def train_with_resume(name: str, version: MaterializedVersion, out: Path, params: dict
                      ) -> tuple[dict, FolderChannel, int]:
    """Run NAME until it is preempted after its first epoch, then again from the
    checkpoint to the end; returns the final metrics, the second run's channel and the
    step the first run stopped at."""
    torch.manual_seed(0)
    first = PreemptingChannel(out)
    with pytest.raises(Preempted) as stopped:
        recipe(name).train(context(name, version, first, params))
    assert stopped.value.reason == "preempted"
    stopped_at = stopped.value.step
    assert stopped_at is not None and (out / f"checkpoint-{stopped_at:012d}.pt").is_file()
    assert not (out / "model.pt").exists()
    second = FolderChannel(out)
    final = recipe(name).train(context(name, version, second, params))
    log = (out / "log.txt").read_text()
    assert f"resumed at step {stopped_at}" in log
    steps = [row["step"] for row in second.rows if row["name"] == "loss"]
    assert steps and min(steps) == stopped_at + 1  # continues, nothing done twice
    return final, second, stopped_at


def artifact(out: Path) -> tuple[torch.jit.ScriptModule, dict]:
    meta = json.loads((out / "model.json").read_text())
    assert meta["format"] == "torchscript"
    return torch.jit.load(str(out / "model.pt")), meta


def check_tokenizer(tokenizer: dict) -> None:
    assert {"pattern", "lowercase", "vocab", "max_len", "pad_id", "unk_id"} <= set(tokenizer)
    assert tokenizer["vocab"][:2] == ["[PAD]", "[UNK]"]
    assert tokenizer["pad_id"] == 0 and tokenizer["unk_id"] == 1
    re.compile(tokenizer["pattern"])
    json.dumps(tokenizer)


# -- the recipes ----------------------------------------------------------------------------

@pytest.mark.training
def test_text_classifier_learns_resumes_and_serves(tmp_path):
    from loophub.training.recipes.text import Tokenizer

    schema = {"task": "text_classification",
              "classes": [{"id": i, "name": n} for i, n in enumerate(sorted(TOPICS))]}
    version = version_of(tmp_path, topic_records(400), schema, name="text-classifier")
    started = time.perf_counter()
    final, _, _ = train_with_resume("text-classifier", version, tmp_path / "run",
                                          {"epochs": 15, "batch_size": 16,
                                           "max_len": 48})
    elapsed = time.perf_counter() - started
    print(f"text-classifier: {final} in {elapsed:.1f} s")
    assert final["test_accuracy"] > 0.8  # chance: 0.25
    assert final["test_macro_f1"] > 0.8
    assert final["val_accuracy"] > 0.8

    model, meta = artifact(tmp_path / "run")
    assert meta["task"] == "text_classification"
    assert meta["labels"] == sorted(TOPICS)
    assert meta["preprocess"]["kind"] == "text"
    tokenizer = meta["preprocess"]["tokenizer"]
    check_tokenizer(tokenizer)
    assert tokenizer["lowercase"] is True and tokenizer["max_len"] == 48
    assert meta["input_shape"] == [48] and meta["input_dtype"] == "torch.int64"
    # what the server does: tokenize, pad with 0 to max_len, argmax over the classes
    encoder = Tokenizer.from_json(tokenizer)
    texts = ["The striker scored a late goal and the team won the final.",
             "Investors sold shares after the bank reported weak quarterly profit."]
    batch = torch.zeros(2, 48, dtype=torch.long)
    for row, text in enumerate(texts):
        ids, offsets = encoder.encode(text)
        batch[row, :len(ids)] = torch.tensor(ids)
        assert text[offsets[1][0]:offsets[1][1]].lower() in ("striker", "sold")
    logits = model(batch)
    assert logits.shape == (2, 4)
    assert [meta["labels"][i] for i in logits.argmax(1).tolist()] == ["sports", "business"]
    # padding changes nothing: the same text padded to a shorter length
    short = batch[:1, :20]
    assert torch.allclose(model(short), logits[:1], atol=1e-5)


@pytest.mark.training
@pytest.mark.timeout(900)  # 90 s alone, more on a loaded 2-core machine
def test_ner_tagger_learns_resumes_and_serves(tmp_path):
    from loophub.training.recipes.text import Tokenizer, tags_to_spans

    schema = {"task": "ner", "classes": [{"id": i, "name": n}
                                         for i, n in enumerate(["PER", "ORG", "LOC"])]}
    records = ner_records(360)
    version = version_of(tmp_path, records, schema, name="ner-tagger")
    started = time.perf_counter()
    final, channel, _ = train_with_resume("ner-tagger", version, tmp_path / "run",
                                          {"epochs": 20, "batch_size": 16,
                                           "max_len": 40})
    elapsed = time.perf_counter() - started
    print(f"ner-tagger: {final} in {elapsed:.1f} s")
    # unseen names: found from their context and their shape
    assert final["test_f1"] > 0.8
    assert final["test_token_accuracy"] > 0.9
    names = {row["name"] for row in channel.rows}
    assert {"val_f1", "val_precision", "val_recall", "val_token_accuracy"} <= names

    model, meta = artifact(tmp_path / "run")
    pre = meta["preprocess"]
    assert pre["kind"] == "text" and pre["scheme"] == "BIO"
    assert pre["tags"] == ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
    check_tokenizer(pre["tokenizer"])
    assert pre["tokenizer"]["unknown"] == "shape" and "[UNK:Xx]" in pre["tokenizer"]["vocab"]
    assert meta["labels"] == ["PER", "ORG", "LOC"]
    # what the server does: tokens with offsets, ids, tags, spans back in the text
    encoder = Tokenizer.from_json(pre["tokenizer"])
    text = "Ingrid Lindqvist visited Buenos Aires on Monday."
    ids, offsets = encoder.encode(text)
    logits = model(torch.tensor([ids]))
    assert logits.shape == (1, len(ids), len(pre["tags"]))
    tags = [pre["tags"][i] for i in logits[0].argmax(-1).tolist()]
    found = {(text[s:e], label) for s, e, label in tags_to_spans(tags, offsets)}
    print(f"ner-tagger on {text!r}: {found}")
    assert ("Buenos Aires", "LOC") in found or ("Ingrid Lindqvist", "PER") in found
    # a padded batch gives the same tags for the real tokens
    padded = torch.zeros(2, 40, dtype=torch.long)
    padded[0, :len(ids)] = torch.tensor(ids)
    padded[1, :3] = torch.tensor(ids[:3])
    out = model(padded)
    assert out.shape == (2, 40, len(pre["tags"]))
    assert torch.allclose(out[0, :len(ids)], logits[0], atol=1e-5)


@pytest.mark.training
@pytest.mark.timeout(900)  # 183 s of training on a loaded 2-core machine
def test_detector_learns_resumes_and_serves(tmp_path):
    from loophub.training.recipes.detection import decode, iou_xywh, record_boxes

    schema = {"task": "object_detection",
              "classes": [{"id": i, "name": n} for i, n in enumerate(SHAPES)]}
    records, paths = shape_images(tmp_path / "images", 400)
    version = version_of(tmp_path, records, schema, paths, name="detector")
    started = time.perf_counter()
    final, _, _ = train_with_resume("detector", version, tmp_path / "run",
                                          {"epochs": 12, "image_size": 64, "width": 16})
    elapsed = time.perf_counter() - started
    print(f"detector: {final} in {elapsed:.1f} s")
    assert final["test_map50"] > 0.5  # chance: about 0

    model, meta = artifact(tmp_path / "run")
    pre = meta["preprocess"]
    assert pre == {"kind": "image", "mode": "RGB", "size": [64, 64], "resize": "stretch",
                   "scale": 1 / 255, "mean": pre["mean"], "std": pre["std"]}
    assert len(pre["mean"]) == len(pre["std"]) == 3
    assert meta["stride"] == 4 and set(meta["outputs"]) == {"heatmap", "size", "offset"}
    settings = {k: v for k, v in meta["decode"].items()
                if k in ("score_threshold", "top_k", "peak_kernel")}
    assert len(settings) == 3
    # what the server does: the image as preprocess says, the maps, decode
    from PIL import Image

    record = next(r for r in version.records("test") if len(r["annotations"]) == 1)
    with Image.open(version.media_path(record)) as image:
        pixels = np.asarray(image.convert("RGB").resize((64, 64), Image.BILINEAR),
                            dtype=np.float32) * pre["scale"]
    x = (torch.from_numpy(pixels).permute(2, 0, 1) - torch.tensor(pre["mean"]).view(3, 1, 1)
         ) / torch.tensor(pre["std"]).view(3, 1, 1)
    heatmap, size, offset = model(torch.stack([x, x]))
    assert heatmap.shape == (2, 3, 16, 16) and size.shape == offset.shape == (2, 2, 16, 16)
    assert float(heatmap.min()) >= 0 and float(heatmap.max()) <= 1
    found = decode(heatmap, size, offset, **settings)
    assert len(found) == 2 and found[0]["boxes"].shape[1] == 4
    print(f"detector on {record['annotations']}: {found[0]}")
    truth = record_boxes(record, record["media"]["width"], record["media"]["height"],
                         {name: i for i, name in enumerate(SHAPES)})
    best = found[0]
    assert len(best["scores"]) >= 1 and int(best["labels"][0]) == truth[0][0]
    overlap = iou_xywh(best["boxes"][:1], torch.tensor([truth[0][1:]]))
    assert float(overlap) > 0.5


# -- real imports train too -------------------------------------------------------------------

def fixtures() -> Path:
    path = shared_dir() / "fixtures"
    if not path.is_dir():
        pytest.skip(f"{path} is absent; set LOOPHUB_SHARED to the shared folder (CI has it)")
    return path


def imported(fmt: str, src: Path) -> tuple[dict, list[dict]]:
    from loophub.datasets.formats import read_dataset

    with read_dataset(fmt, src) as bundle:
        return bundle.label_schema, list(bundle.records)


def test_a_conll_import_trains_a_tagger_on_its_own_tokens(tmp_path):
    schema, records = imported("conll", fixtures() / "conll" / "allennlp_conll2003.txt")
    assert schema["task"] == "ner" and all(r.get("tokens") for r in records)
    for n, record in enumerate(records):
        record["split"] = "train" if n % 2 else "test"
    version = version_of(tmp_path, records, schema, name="ner-tagger")
    out = tmp_path / "run"
    final = recipe("ner-tagger").train(context("ner-tagger", version, FolderChannel(out),
                                               {"epochs": 1, "min_freq": 1}))
    assert 0 <= final["test_f1"] <= 1
    _, meta = artifact(out)
    # its records' tokens are the text split at spaces: the server tokenizes the same way
    assert meta["preprocess"]["tokenizer"]["pattern"] == r"\S+"
    assert meta["preprocess"]["tags"][0] == "O"


def test_a_coco_import_with_pixel_boxes_trains_a_detector(tmp_path):
    from PIL import Image

    schema, records = imported("coco", fixtures() / "coco" / "mmdet_coco_sample.json")
    assert schema["task"] == "object_detection"
    paths: dict = {}
    (tmp_path / "images").mkdir()
    for record in records:  # the fixture has no photos: placeholders of the stated size
        media = record["media"]
        image = Image.new("RGB", (media["width"], media["height"]), (90, 120, 150))
        for annotation in record["annotations"]:
            x, y, w, h = annotation["bbox"]
            image.paste((200, 40, 40), (int(x), int(y), int(x + w), int(y + h)))
        made = _image_record(tmp_path / "images", Path(media["path"]).stem, image,
                             record["annotations"], "train", paths)
        record.update(media=made["media"], split="train")
    version = version_of(tmp_path, records, schema, paths, name="detector")
    out = tmp_path / "run"
    recipe("detector").train(context("detector", version, FolderChannel(out),
                                     {"epochs": 1, "image_size": 32, "width": 8}))
    model, meta = artifact(out)
    assert meta["labels"] == [c["name"] for c in schema["classes"]]
    heatmap, size, offset = model(torch.zeros(1, 3, 32, 32))
    assert heatmap.shape == (1, len(schema["classes"]), 8, 8)
    assert size.shape == offset.shape == (1, 2, 8, 8)


def test_a_seed_gives_the_same_augmentation_whoever_else_draws_from_random():
    """Word dropout and flips draw from the loop's own generator: a Dask worker's threads
    draw from the global one at any moment (a job's tagger once learnt a different model
    on each run of one seed)."""
    from loophub.training.loop import recipe_random, rng_state, seed_everything, set_rng_state

    seed_everything(3)
    alone = [recipe_random.random() for _ in range(5)]
    state = rng_state()
    after = [recipe_random.random() for _ in range(5)]
    seed_everything(3)
    random.random()  # another thread's draw, between the seed and the recipe's
    assert [recipe_random.random() for _ in range(5)] == alone
    random.random()
    set_rng_state(state)  # a resume goes on from the checkpoint's draws
    assert [recipe_random.random() for _ in range(5)] == after


def test_pixel_and_normalized_boxes_give_the_same_targets():
    from loophub.training.recipes.detection import record_boxes, targets_for

    index = {"disc": 0}
    pixels = {"annotations": [{"type": "bbox", "label": "disc", "bbox": [20, 10, 40, 30]}]}
    fractions = {"annotations": [{"type": "bbox", "label": "disc", "normalized": True,
                                  "bbox": [0.25, 0.125, 0.5, 0.375]}]}
    model_made = {"annotations": [{"type": "bbox", "label": "disc", "bbox": [0, 0, 5, 5],
                                   "source": {"kind": "model", "name": "m"}}]}
    assert record_boxes(pixels, 80, 80, index) == record_boxes(fractions, 80, 80, index) == [
        (0, 0.25, 0.125, 0.5, 0.375)]
    assert record_boxes(model_made, 80, 80, index) == []
    target = targets_for(record_boxes(pixels, 80, 80, index), 1, 64)
    assert target["heat"].shape == (1, 16, 16) and float(target["heat"].max()) == 1.0
    assert target["mask"].sum() == 1
    iy, ix = (target["mask"][0] == 1).nonzero()[0].tolist()
    assert (ix, iy) == (8, 5)  # centre (0.5, 0.3125) of a 16-cell grid
    assert target["regress"][:, iy, ix].tolist() == pytest.approx([8.0, 6.0, 0.0, 0.0])


def test_map50_counts_a_perfect_and_a_wrong_detection():
    from loophub.training.recipes.detection import map_metrics, match_counts

    truth = torch.tensor([[[0, 0.1, 0.1, 0.2, 0.2], [1, 0.5, 0.5, 0.3, 0.3]]])
    perfect = [{"boxes": truth[0, :, 1:], "scores": torch.tensor([0.9, 0.8]),
                "labels": torch.tensor([0, 1])}]
    assert map_metrics(match_counts(perfect, truth, 2))["map50"] == pytest.approx(1.0)
    # class 1 found only after a false positive of higher score: AP 0.5; class 0: 1
    noisy = [{"boxes": torch.tensor([[0.1, 0.1, 0.2, 0.2], [0.0, 0.7, 0.1, 0.1],
                                     [0.5, 0.5, 0.3, 0.3]]),
              "scores": torch.tensor([0.9, 0.85, 0.8]), "labels": torch.tensor([0, 1, 1])}]
    assert map_metrics(match_counts(noisy, truth, 2))["map50"] == pytest.approx(0.75)


def test_bio_tags_and_spans_round_trip():
    from loophub.training.recipes.text import WORD_PATTERN, Tokenizer, bio_tags, tags_to_spans

    text = "Zoë Müller flew to São Paulo, said Acme Corp."
    tokenizer = Tokenizer(WORD_PATTERN, False, ["[PAD]", "[UNK]"], 64)
    offsets = tokenizer.tokens(text)
    spans = [(0, 10, "PER"), (19, 28, "LOC"), (35, 44, "ORG")]
    tags = bio_tags(offsets, spans, {"PER", "LOC", "ORG"})
    assert tags == ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "O", "O", "B-ORG", "I-ORG",
                    "O"]
    assert tags_to_spans(tags, offsets) == spans
    assert [text[s:e] for s, e, _ in tags_to_spans(tags, offsets)] == [
        "Zoë Müller", "São Paulo", "Acme Corp"]
    # seqeval's reading of a stray I-: it starts a span
    assert tags_to_spans(["O", "I-LOC", "I-LOC", "B-PER"]) == [(1, 3, "LOC"), (3, 4, "PER")]


def test_unknown_words_are_looked_up_by_their_shape():
    from loophub.training.recipes.text import Tokenizer, word_shape

    tokenizer = Tokenizer.learn([["Anna", "met", "Bob", "met", "Carl", "in", "1999"]],
                                pattern=r"\S+", lowercase=False, min_freq=2, max_vocab=100,
                                max_len=8, shapes=True)
    assert tokenizer.vocab == ["[PAD]", "[UNK]", "[UNK:Xx]", "[UNK:x]", "met"]
    ids, _ = tokenizer.encode("Dora met 2024 people")
    assert ids == [2, 4, 1, 3]  # no [UNK:d]: one number only in training
    assert [word_shape(t) for t in ("Müller", "U.S.", "iPhone", "2024")] == [
        "Xx", "X.X.", "xXx", "d"]


def test_each_recipe_refuses_a_dataset_of_another_task():
    assert {"text-classifier", "ner-tagger", "detector"} <= set(recipes())
    for name, other in (("text-classifier", "ner"), ("ner-tagger", "text_classification"),
                        ("detector", "image_classification")):
        with pytest.raises(InvalidInput) as refused:
            recipe(name, other)
        message = str(refused.value)
        assert f"the dataset's task is {other}" in message and name in message
    with pytest.raises(InvalidInput, match="for ner use ner-tagger"):
        recipe("detector", "ner")


def test_the_text_classifier_refuses_a_multi_label_dataset(tmp_path):
    schema = {"task": "text_classification", "multi_label": True,
              "classes": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}]}
    records = [{"id": "1", "text": "x y", "split": "train",
                "annotations": [{"type": "text_class", "label": "a"}]}]
    version = version_of(tmp_path, records, schema)
    with pytest.raises(ValueError, match="multi-label"):
        recipe("text-classifier").train(context("text-classifier", version,
                                                FolderChannel(tmp_path / "run"), {}))


def test_a_bad_token_pattern_is_refused_with_what_to_do(tmp_path):
    schema = {"task": "ner", "classes": [{"id": 0, "name": "PER"}]}
    records = [{"id": "1", "text": "Anna sang", "split": "train", "annotations": []}]
    version = version_of(tmp_path, records, schema)
    with pytest.raises(ValueError, match="not a regular expression"):
        recipe("ner-tagger").train(context("ner-tagger", version,
                                           FolderChannel(tmp_path / "run"),
                                           {"pattern": "(unclosed"}))


# -- several ranks ------------------------------------------------------------------------------

def _evaluate_on_rank(rank: int, world: int, folder: str, port: int, out: str) -> None:
    """One rank: the NER metrics of a fixed model over its share of the test split."""
    import torch.distributed as dist

    from loophub.training.loop import evaluate_split
    from loophub.training.recipes.text import (
        WORD_PATTERN,
        Tokenizer,
        bio_tags,
        pad_batch,
        span_counts,
        span_metrics,
        tag_names,
        tagger_model,
    )

    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
    try:
        version = MaterializedVersion(folder)
        ctx = TrainContext(version=version, channel=FolderChannel(Path(out) / f"r{rank}"),
                           rank=rank, world_size=world)
        tags = tag_names(version.label_names)
        tokenizer = Tokenizer(WORD_PATTERN, False, ["[PAD]", "[UNK]", *sorted(
            {w for r in version.records() for w in re.findall(WORD_PATTERN, r["text"])})], 64)

        def sample(record, _):
            ids, offsets = tokenizer.encode(record["text"])
            spans = [(a["start"], a["end"], a["label"]) for a in record["annotations"]]
            return ids, [tags.index(t) for t in bio_tags(offsets, spans, set(version.label_names))]

        def collate(batch):
            return pad_batch([i for i, _ in batch], 0), pad_batch([t for _, t in batch], -100)
        torch.manual_seed(0)
        model = tagger_model(len(tokenizer.vocab), len(tags), 16, 16, 0.0)
        share = ctx.data("test", transform=sample)
        metrics = evaluate_split(ctx, model, share, span_counts(tags), 4, "test",
                                 collate=collate, summarize=span_metrics)
        metrics["test_tokens_here"] = float(sum(len(ids) for ids, _ in share))

        def histogram(logits, targets):  # a tensor count: summed over ranks as a tensor
            return {"tags": torch.bincount(targets[targets >= 0], minlength=len(tags))}
        metrics.update(evaluate_split(
            ctx, model, share, histogram, 4, "test", collate=collate,
            summarize=lambda sums: {t: float(n) for t, n in zip(tags, sums["tags"],
                                                                 strict=True)}))
        (Path(out) / f"metrics-{world}-{rank}.json").write_text(json.dumps(metrics))
    finally:
        if world > 1:
            dist.destroy_process_group()


@pytest.mark.training
def test_metrics_summed_over_two_ranks_equal_one_rank(tmp_path):
    """evaluate_split with summable counts and a summary (span F1): two ranks, each
    evaluating half the split (one of them gets 5 records, the other 4), give what one
    rank gives on all of it."""
    import socket

    import torch.multiprocessing as mp

    schema = {"task": "ner", "classes": [{"id": 0, "name": n} for n in ["PER", "ORG", "LOC"]]}
    records = [{**r, "split": "test"} for r in ner_records(9)]
    version = version_of(tmp_path, records, schema)
    _evaluate_on_rank(0, 1, str(version.folder), 0, str(tmp_path))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_evaluate_on_rank, args=(2, str(version.folder), port, str(tmp_path)),
                       nprocs=2, start_method="spawn")
    one = json.loads((tmp_path / "metrics-1-0.json").read_text())
    two = [json.loads((tmp_path / f"metrics-2-{r}.json").read_text()) for r in (0, 1)]
    assert two[0]["test_tokens_here"] + two[1]["test_tokens_here"] == one["test_tokens_here"]
    for rank in two:
        assert {k: v for k, v in rank.items() if k != "test_tokens_here"} == pytest.approx(
            {k: v for k, v in one.items() if k != "test_tokens_here"})
    assert one["test_tokens"] == one["test_tokens_here"]
    assert one["test_O"] + one["test_B-PER"] + one["test_I-PER"] < one["test_tokens"]


def test_a_start_from_another_network_or_labels_or_size_is_refused_with_what_to_do():
    from loophub.training.recipes.image import load_weights, resnet, small_cnn, starting_preprocess

    meta = {"labels": ["0", "1"], "preprocess": {"kind": "image", "mode": "L", "size": [16, 16],
                                                 "scale": 1 / 255, "mean": [0.3], "std": [0.4]}}
    assert starting_preprocess("m@v1", meta, ["0", "1"], "L", 16) == meta["preprocess"]
    with pytest.raises(ValueError, match=r"init_from m@v1: its labels .* same order"):
        starting_preprocess("m@v1", meta, ["1", "0"], "L", 16)
    with pytest.raises(ValueError, match="set image_size"):
        starting_preprocess("m@v1", meta, ["0", "1"], "L", 32)
    cnn = small_cnn(1, 2, 16)
    scripted = torch.jit.trace(cnn.eval(), torch.zeros(1, 1, 16, 16))
    fresh = small_cnn(1, 2, 16)
    load_weights(fresh, scripted, "m@v1")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                 cnn.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match="its network is not this recipe's"):
        load_weights(resnet(1, 2, 16), scripted, "m@v1")


def test_a_fine_tunes_learning_rate_share_is_checked_at_submission():
    for name in ("image-cnn", "image-resnet"):
        found = recipes()[name]
        assert found.check_params({})["init_lr_scale"] == pytest.approx(1 / 3)
        assert found.check_params({"init_lr_scale": 1})["init_lr_scale"] == 1
        assert found.describe()["params"]["init_lr_scale"]["range"] == [0.01, 1.0]
        for bad in (0, -0.5, 1.5):
            with pytest.raises(InvalidInput,
                               match=r"params.init_lr_scale: .* is outside 0.01 to 1.0"):
                found.check_params({"init_lr_scale": bad})
