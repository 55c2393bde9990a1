"""The names of the files an export writes: safe whatever the record ids and media paths
hold, and one file per record even where ids share a base name (no record is lost)."""

from __future__ import annotations

import io
import re
import struct
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from loophub.datasets.formats import read_dataset, write_dataset
from loophub.datasets.formats.base import Bundle, ExportNames, safe_path
from loophub.datasets.service import _zip_chunks

SCHEMA = {"task": "object_detection", "classes": [{"id": 0, "name": "cat"},
                                                  {"id": 1, "name": "dog"}]}
WIDTH, HEIGHT = 640, 480
# eight ids, four base names: directories apart, or case apart (one file on Windows/macOS)
COLLIDING = ["a/img1.jpg", "b/img1.jpg", "c/img1.jpg", "img1.jpg", "a/IMG1.jpg",
             "a/img2.png", "b/img2.png", "img2"]
HOSTILE = ["../../etc/x", "C:\\evil", "a\\..\\b", "..", "nul", "tab\there", "a:b|c?.jpg"]


class MemoryMedia:
    """Each record's image: a PNG header of WIDTH x HEIGHT, then the record's id, so the
    exported file says whose it is."""

    def open(self, record: dict):
        header = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + struct.pack(">II", WIDTH, HEIGHT)
        return io.BytesIO(header + record["id"].encode())


def owner(data: bytes) -> str:
    return data[24:].decode()


def detection(record_id: str, number: int, **fields) -> dict:
    return {"id": record_id, "media": {"width": WIDTH, "height": HEIGHT, **fields},
            "annotations": [{"type": "bbox", "label": "cat" if number % 2 else "dog",
                             "bbox": [10 + number, 20, 30, 40 + number]}]}


def archive(fmt: str, records: list[dict], path: Path) -> zipfile.ZipFile:
    """The zip an export download gives (DatasetService.export's own packing), at path."""
    path.write_bytes(b"".join(_zip_chunks(fmt, Bundle(SCHEMA, records, MemoryMedia()),
                                          1 << 20)))
    return zipfile.ZipFile(path)


def load(fmt: str, src: Path) -> list[dict]:
    with read_dataset(fmt, src) as bundle:
        return list(bundle.records)


def test_yolo_writes_one_label_file_per_record_beside_its_image(tmp_path):
    records = [detection(record_id, n) for n, record_id in enumerate(COLLIDING)]
    with archive("yolo", records, tmp_path / "yolo.zip") as zf:
        names = zf.namelist()
        labels = [PurePosixPath(n) for n in names if n.startswith("labels/")]
        images = {PurePosixPath(n).stem: n for n in names if n.startswith("images/")}
        assert len(labels) == len(images) == len(records) == 8
        assert {label.stem for label in labels} == set(images)
        assert len({name.casefold() for name in names}) == len(names)
        by_id = {r["id"]: r for r in records}
        for label in labels:
            record = by_id[owner(zf.read(images[label.stem]))]
            x, y, w, h = record["annotations"][0]["bbox"]
            fields = zf.read(str(label)).decode().split()
            assert fields[0] == ("1" if record["annotations"][0]["label"] == "dog" else "0")
            assert [float(v) for v in fields[1:]] == pytest.approx(
                [(x + w / 2) / WIDTH, (y + h / 2) / HEIGHT, w / WIDTH, h / HEIGHT])
        # Ultralytics' layout: <stem>.txt beside <stem>.jpg, not <stem>.jpg.txt
        assert "labels/img1.txt" in names and "images/img1.jpg" in names
        assert "images/img2.png" in names and "images/img2-1.png" in names
        zf.extractall(tmp_path / "yolo")
    again = load("yolo", tmp_path / "yolo")
    assert len(again) == 8
    originals = {r["id"]: r["annotations"] for r in records}
    for record in again:
        image = (tmp_path / "yolo" / record["media"]["path"]).read_bytes()
        assert record["annotations"] == originals[owner(image)]


@pytest.mark.parametrize("fmt", ["yolo", "voc", "coco", "csv", "imagefolder"])
def test_every_writer_gives_each_record_its_own_media_file(tmp_path, fmt):
    records = [detection(record_id, n) for n, record_id in enumerate(COLLIDING)]
    if fmt == "csv":
        records = [{**r, "annotations": [{"type": "image_class", "label": "cat"}]}
                   for r in records]
    if fmt == "imagefolder":
        records = [{**r, "annotations": [{"type": "image_class", "label": "cat"}]}
                   for r in records]
    write_dataset(fmt, Bundle(SCHEMA, records, MemoryMedia()), tmp_path / "out")
    media = [p for p in (tmp_path / "out").rglob("*") if p.is_file()
             and p.read_bytes().startswith(b"\x89PNG")]
    assert sorted(owner(p.read_bytes()) for p in media) == sorted(COLLIDING)
    first = load(fmt, tmp_path / "out")
    assert len(first) == 8
    # a round trip of what the format holds is stable: import(export(x)) == x
    with read_dataset(fmt, tmp_path / "out") as bundle:
        write_dataset(fmt, bundle, tmp_path / "again")
    assert load(fmt, tmp_path / "again") == first


def _assert_safe_member(name: str) -> None:
    assert "\\" not in name and ":" not in name, name
    assert not re.search(r"[\x00-\x1f\x7f]", name), name
    assert not name.startswith("/"), name
    parts = name.split("/")
    assert all(part not in ("", ".", "..") for part in parts), name


@pytest.mark.parametrize("fmt", ["yolo", "voc", "coco", "csv", "imagefolder"])
def test_hostile_ids_and_paths_give_safe_names_inside_the_export(tmp_path, fmt):
    export = tmp_path / "deep" / "er" / "export"
    # an absolute path under tmp_path: the old writers wrote where it pointed
    absolute = str(tmp_path / "abs.jpg")
    ids = [*HOSTILE, absolute]
    records = []
    for n, record_id in enumerate(ids):
        record = detection(record_id, n, path=record_id)
        record["split"] = "../../escaped" if n % 2 else "train"
        if fmt in ("csv", "imagefolder"):
            record["annotations"] = [{"type": "image_class", "label": "../../up"}]
        records.append(record)
    write_dataset(fmt, Bundle(SCHEMA, records, MemoryMedia()), export)
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and export not in p.parents]
    assert outside == []
    written = [p.relative_to(export).as_posix() for p in export.rglob("*") if p.is_file()]
    for name in written:
        _assert_safe_member(name)
    media = [p for p in export.rglob("*") if p.is_file() and p.read_bytes().startswith(b"\x89PNG")]
    assert sorted(owner(p.read_bytes()) for p in media) == sorted(ids)
    # the archive a download gives is accepted by the importer's safe extraction
    with archive(fmt, records, tmp_path / "e.zip") as zf:
        for name in zf.namelist():
            _assert_safe_member(name)
    assert len(load(fmt, tmp_path / "e.zip")) == len(ids)


@pytest.mark.parametrize("fmt", ["coco", "labelstudio"])
def test_a_download_of_a_json_format_imports_again(tmp_path, fmt):
    """The label_schema.json a download holds beside the format's files is not read as
    one of them."""
    records = [detection(record_id, n, path=f"{record_id}.jpg")
               for n, record_id in enumerate(["a", "b"])]
    archive(fmt, records, tmp_path / "e.zip").close()
    assert [r["id"] for r in load(fmt, tmp_path / "e.zip")] == (
        ["a.jpg", "b.jpg"] if fmt == "coco" else ["a", "b"])


def test_safe_path_and_unique_names():
    assert safe_path("../../etc/x") == "etc/x"
    assert safe_path("C:\\evil") == "evil"
    assert safe_path("/abs") == "abs"
    assert safe_path("a\\..\\b") == "a/b"
    assert safe_path("..") == safe_path("") == ""
    assert safe_path("con.txt") == "_con.txt"
    long = safe_path("x" * 300 + ".jpg")
    assert len(long.encode()) <= 200 and long.endswith(".jpg")
    assert safe_path("x" * 300 + "y.jpg") != long
    names = ExportNames(reserved=["train"])
    claimed = [names.claim(n) for n in ["a/img.jpg", "a/IMG.jpg", "a/img.jpg", "img.jpg",
                                        "a", "train.jpg", "", "a/img.jpg/x.jpg"]]
    assert claimed == ["a/img.jpg", "a/IMG-1.jpg", "a/img-2.jpg", "img.jpg", "a-1",
                       "train.jpg", "record", "a_img.jpg_x.jpg"]
    stems = ExportNames(reserved=["train"])
    assert [stems.claim(n, keep_suffix=False) for n in ["train", "x.v1", "x.v1"]] == [
        "train-1", "x.v1", "x.v1-1"]


def test_yolo_reads_labels_named_after_the_whole_image_name(tmp_path):
    """``img.jpg.txt`` beside ``img.jpg`` (some tools, and loophub's older exports)."""
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "images" / "img.jpg").write_bytes(MemoryMedia().open({"id": "img"}).read())
    (tmp_path / "labels" / "img.jpg.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    (tmp_path / "classes.txt").write_text("cat\n")
    (record,) = load("yolo", tmp_path)
    assert record["media"]["path"] == "images/img.jpg"
    assert record["annotations"][0]["bbox"] == [240, 120, 160, 240]
