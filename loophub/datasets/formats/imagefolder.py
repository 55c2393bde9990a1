"""ImageFolder: ``[split/]class/image``; images directly under the root have no label."""

from __future__ import annotations

from pathlib import Path

from loophub.datasets.formats.base import (
    IMAGE_SUFFIXES,
    SPLIT_NAMES,
    Bundle,
    ExportNames,
    FolderMedia,
    bad,
    build_label_schema,
    copy_media,
    image_suffix,
    media_entry,
    media_name,
    safe_component,
    safe_path,
)


def read(src: Path) -> Bundle:
    if not src.is_dir():
        raise bad(src, "path", "ImageFolder is a folder of class folders")
    subdirs = [p for p in src.iterdir() if p.is_dir()]
    split_layout = bool(subdirs) and all(p.name.lower() in SPLIT_NAMES for p in subdirs)
    tops = sorted(subdirs) if split_layout else [src]
    records = []
    for top in tops:
        split = top.name if split_layout else None
        for path in sorted(p for p in top.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            records.append(_record(src, top, path, split))
    names = sorted({a["label"] for r in records for a in r["annotations"]})
    return Bundle(build_label_schema("image_classification", names), records,
                  FolderMedia([src]))


def _record(root: Path, top: Path, path: Path, split: str | None) -> dict:
    rel = path.relative_to(top)
    record = {"id": path.relative_to(root).as_posix(), "media": media_entry(root, path),
              "annotations": []}
    if len(rel.parts) > 1:
        record["annotations"].append({"type": "image_class", "label": rel.parts[0]})
    if split:
        record["split"] = split
    return record


def write(bundle: Bundle, dst: Path) -> None:
    """[split/]class/<name>: the split and the class each one folder name, the name the
    record's (safe and unique, ``ExportNames``), so N records give N images."""
    dst.mkdir(parents=True, exist_ok=True)
    names = ExportNames()
    for record in bundle.records:
        labels = [a["label"] for a in record["annotations"] if a["type"] == "image_class"]
        target = dst / names.claim(_relative_path(record, labels[0] if labels else None),
                                   fallback=record["id"])
        if not copy_media(bundle.media, record, target):
            raise bad(record["id"], "media", "image not found: ImageFolder holds the images "
                      "themselves; convert from a folder that has them")


def _relative_path(record: dict, label: str | None) -> str:
    split = record.get("split")
    name = record["id"]
    if split and name.startswith(split + "/"):
        name = name[len(split) + 1:]
    if label and name.startswith(label + "/"):
        name = name[len(label) + 1:]
    else:
        name = Path(media_name(record).replace("\\", "/")).name
    name = safe_path(name) or safe_component(record["id"]) or "image"
    if Path(name).suffix.lower() not in IMAGE_SUFFIXES:  # the reader takes images only
        name += image_suffix(record)
    folders = [safe_component(p) or "_" for p in (split, label) if p]
    return "/".join([*folders, name])
