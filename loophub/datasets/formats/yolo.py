"""YOLO detection (and YOLO-seg polygons): one .txt per image, ``class cx cy w h``
normalised; class names from data.yaml, obj.names or classes.txt.

Boxes stay normalised (``normalized: true``) unless the image is found and its size
read, in which case they are converted to pixels. Values are rounded to 9 decimals
so a round trip reproduces them exactly.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from loophub.datasets.formats.base import (
    IMAGE_SUFFIXES,
    Bundle,
    ExportNames,
    FolderMedia,
    bad,
    build_label_schema,
    copy_media,
    image_size,
    image_suffix,
    media_entry,
    safe_component,
    split_of,
)

NAME_FILES = ("data.yaml", "obj.names", "classes.txt", "classes.names")
LIST_FILES = {"train.txt", "val.txt", "valid.txt", "test.txt", "readme.txt"}
DIGITS = 9


def read(src: Path) -> Bundle:
    root = src if src.is_dir() else src.parent
    names = _class_names(root)
    files = [src] if src.is_file() else sorted(
        p for p in src.rglob("*.txt") if p.name.lower() not in LIST_FILES | set(NAME_FILES))
    stems: dict[str, int] = {}
    for path in files:
        stems[path.stem] = stems.get(path.stem, 0) + 1
    records = [_record(root, path, names, stems[path.stem] > 1) for path in files]
    if not names:  # no names file: the class indices are the names
        used = {int(a["label"]) for r in records for a in r["annotations"]}
        names = [str(i) for i in range(max(used) + 1)] if used else []
    schema = build_label_schema("object_detection", names)
    ids = _category_ids(root, len(names))
    if ids and len(schema["classes"]) == len(names):  # an export with dense_ids: the
        for cls in schema["classes"]:                 # classes get their ids back
            cls["id"] = ids[cls["id"]]
    return Bundle(schema, records, FolderMedia([root]))


def _category_ids(root: Path, count: int) -> dict[int, int]:
    """data.yaml's ``category_ids`` (class index -> the source's category id, written by
    an export with dense ids), if it is one for every class."""
    found = sorted(root.rglob("data.yaml"), key=lambda p: len(p.parts))
    if not found:
        return {}
    try:
        ids = (yaml.safe_load(found[0].read_text(encoding="utf-8")) or {}).get("category_ids")
    except (yaml.YAMLError, AttributeError):
        return {}
    if (not isinstance(ids, dict) or sorted(ids) != list(range(count))
            or not all(isinstance(v, int) for v in ids.values())
            or len(set(ids.values())) != count):
        return {}
    return ids


def _class_names(root: Path) -> list[str]:
    for name in NAME_FILES:
        found = sorted(root.rglob(name), key=lambda p: len(p.parts))
        if not found:
            continue
        path = found[0]
        if name == "data.yaml":
            return _yaml_names(path)
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip()]
    return []


def _yaml_names(path: Path) -> list[str]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise bad(path, "document", f"invalid YAML: {exc}") from None
    names = data.get("names", [])
    if isinstance(names, dict):  # {0: person, 1: car}
        return [str(names[k]) for k in sorted(names)]
    return [str(n) for n in names]


def _find_image(label: Path) -> Path | None:
    """The image of ``label``: ``<stem>.<image suffix>`` (Ultralytics, and loophub's
    exports), or the label's name less ``.txt`` (``img.jpg.txt``, as some tools and
    earlier loophub exports write), under images/ or beside the label."""
    parts = list(label.parts)
    candidates = [label.parent]
    if "labels" in parts:
        index = len(parts) - 1 - parts[::-1].index("labels")
        candidates.insert(0, Path(*parts[:index], "images", *parts[index + 1:-1]))
    names = [label.stem + suffix for suffix in sorted(IMAGE_SUFFIXES)]
    if Path(label.stem).suffix.lower() in IMAGE_SUFFIXES:
        names.append(label.stem)
    for folder in candidates:
        for name in names:
            image = folder / name
            if image.is_file():
                return image
    return None


def _record(root: Path, path: Path, names: list[str], qualify: bool) -> dict:
    rel_parts = path.relative_to(root).parent.parts
    split = split_of(reversed(rel_parts)) or ("train" if "obj_train_data" in rel_parts else None)
    record_id = f"{split}/{path.stem}" if qualify and split else path.stem
    image = _find_image(path)
    size = image_size(image) if image else None
    record: dict = {"id": record_id, "annotations": []}
    if image is not None:
        record["media"] = media_entry(root, image)
    if split:
        record["split"] = split
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            record["annotations"].append(_annotation(path, number, line, names, size))
    return record


def _annotation(path: Path, number: int, line: str, names, size) -> dict:
    fields = line.split()
    try:
        index, values = int(fields[0]), [float(v) for v in fields[1:]]
    except ValueError:
        raise bad(path, f"line {number}", "expected 'class cx cy w h' with numbers") from None
    if len(values) < 4 or (len(values) > 4 and len(values) % 2):
        raise bad(path, f"line {number}", "expected 4 box values or an even number of points")
    if names and not 0 <= index < len(names):
        raise bad(path, f"line {number}", f"class {index} is not in the {len(names)} class names")
    label = names[index] if names else str(index)
    scale = (size[0], size[1]) if size else (1, 1)
    if len(values) == 4:
        cx, cy, w, h = values
        box = [(cx - w / 2) * scale[0], (cy - h / 2) * scale[1], w * scale[0], h * scale[1]]
        ann = {"type": "bbox", "label": label, "bbox": [round(v, DIGITS) for v in box]}
    else:
        points = [round(v * scale[i % 2], DIGITS) for i, v in enumerate(values)]
        ann = {"type": "polygon", "label": label, "polygons": [points]}
    if not size:
        ann["normalized"] = True
    return ann


# -- export ------------------------------------------------------------------------

def write(bundle: Bundle, dst: Path, *, dense_ids: bool = False) -> None:
    """labels/[split/]<stem>.txt beside images/[split/]<stem>.<suffix>, as Ultralytics
    reads them, and data.yaml. The stem is the record id's last part less an image
    suffix, made safe and unique (``ExportNames``): one label file per record.

    The class index is the class id (COCO's category id), and data.yaml names the
    gaps ``class_<i>``, since Ultralytics needs indices 0..nc-1. With ``dense_ids`` the
    indices are 0..n-1 in id order, data.yaml has only the real names, and its
    ``category_ids`` maps each index to the class id (read back on import)."""
    classes = sorted(bundle.label_schema.get("classes", ()), key=lambda c: c["id"])
    if dense_ids:
        index = {c["name"]: i for i, c in enumerate(classes)}
        names = [c["name"] for c in classes]
    else:
        index = {c["name"]: c["id"] for c in classes}
        names = [f"class_{i}" for i in range(max(index.values(), default=-1) + 1)]
        for cls in classes:
            names[cls["id"]] = cls["name"]
    dst.mkdir(parents=True, exist_ok=True)
    # .txt names the reader takes for lists or class names, never for labels
    stems = ExportNames(Path(name).stem for name in LIST_FILES | set(NAME_FILES)
                        if name.endswith(".txt"))
    splits = {}
    for record in bundle.records:
        split = record.get("split")
        if split and split not in splits:
            splits[split] = safe_component(split) or "split"
        folder = splits[split] + "/" if split else ""
        stem = stems.claim(folder + (safe_component(_stem(record["id"])) or "record"),
                           keep_suffix=False)
        lines = [_line(record, ann, index) for ann in record["annotations"]
                 if ann["type"] in ("bbox", "polygon")]
        label_path = dst / "labels" / f"{stem}.txt"
        label_path.parent.mkdir(parents=True, exist_ok=True)
        label_path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        copy_media(bundle.media, record, dst / "images" / f"{stem}{image_suffix(record)}")
    config: dict = {"names": names, "nc": len(names)}
    if dense_ids:
        config["category_ids"] = {i: c["id"] for i, c in enumerate(classes)}
    for split in sorted(splits):
        config[split] = f"images/{splits[split]}"
    (dst / "data.yaml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False))


def _stem(record_id: str) -> str:
    name = record_id.replace("\\", "/").rsplit("/", 1)[-1]
    suffix = Path(name).suffix
    return name[:-len(suffix)] if suffix.lower() in IMAGE_SUFFIXES and name != suffix else name


def _line(record: dict, ann: dict, index: dict) -> str:
    media = record.get("media") or {}
    if ann.get("normalized"):
        scale = (1, 1)
    elif media.get("width"):
        scale = (media["width"], media["height"])
    else:
        raise bad(record["id"], "media", "YOLO stores fractions of the image size; "
                  "this record's image has no width/height")
    label = ann.get("label")
    if label not in index:
        raise bad(record["id"], "annotations", f"label {label!r} is not in the label schema")
    if ann["type"] == "bbox":
        x, y, w, h = ann["bbox"]
        values = [(x + w / 2) / scale[0], (y + h / 2) / scale[1], w / scale[0], h / scale[1]]
    else:
        values = [v / scale[i % 2] for i, v in enumerate(ann["polygons"][0])]
    return " ".join([str(index[label])] + [repr(v) for v in values])
