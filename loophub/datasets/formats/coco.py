"""COCO JSON: instances (polygons, RLE, iscrowd), keypoints, captions, image labels.

One record per image (id = file_name), one annotation per COCO annotation. Image
fields other than file_name/width/height go to metadata.coco; annotation keys
loophub has no field for go to attributes.coco; info/licenses go to the label
schema's attributes. Panoptic files (PNG segment maps) are not read.
"""

from __future__ import annotations

import json
from pathlib import Path

from loophub.datasets.formats.base import (
    EXPORT_LABEL_SCHEMA,
    Bundle,
    ExportNames,
    FolderMedia,
    bad,
    copy_media,
    media_name,
    number,
    safe_component,
    split_of,
)

KNOWN_ANN_KEYS = {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation",
                  "keypoints", "num_keypoints", "caption", "attributes", "score"}
COCO_PREFIXES = ("instances", "person_keypoints", "captions", "labels", "image_info", "stuff")
CLASS_KEYS = ("supercategory", "keypoints", "skeleton")


def read(src: Path) -> Bundle:
    files = [src] if src.is_file() else sorted(
        p for p in src.rglob("*.json") if not p.name.startswith("panoptic")
        and p != src / EXPORT_LABEL_SCHEMA)
    if not files:
        raise bad(src, "folder", "no COCO .json file in it")
    root = src.parent if src.is_file() else src
    merged = _Merger()
    for path in files:
        merged.add(path, _load(path), _split_for(path, root))
    media_roots = [root, root / "images", root.parent / "images"]
    label_schema = {"task": merged.task(), "classes": merged.classes}
    if merged.doc_attributes:
        label_schema["attributes"] = {"coco": merged.doc_attributes}
    return Bundle(label_schema, list(merged.records.values()), FolderMedia(media_roots))


def _load(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8-sig") as stream:
            doc = json.load(stream)
    except json.JSONDecodeError as exc:
        raise bad(path, f"line {exc.lineno}, column {exc.colno}",
                  f"invalid JSON: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise bad(path, f"byte {exc.start}", "not UTF-8 text") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise bad(path, "$.images", "a COCO file is an object with an 'images' list")
    for key in ("annotations", "categories"):
        if not isinstance(doc.get(key) or [], list):
            raise bad(path, f"$.{key}", "must be a list")
    return doc


def _split_for(path: Path, root: Path) -> str | None:
    stem = path.stem
    for prefix in COCO_PREFIXES:
        if stem.startswith(prefix + "_"):
            return stem[len(prefix) + 1:] or None
    return split_of(reversed(path.relative_to(root).parent.parts)) if path != root else None


class _Merger:
    """Joins several COCO files (instances, keypoints, captions...) by image file name."""

    def __init__(self) -> None:
        self.records: dict[str, dict] = {}
        self.classes: list[dict] = []
        self.doc_attributes: dict = {}
        self.kinds: set[str] = set()

    def add(self, path: Path, doc: dict, split: str | None) -> None:
        for key in ("info", "licenses"):
            if doc.get(key) is not None and key not in self.doc_attributes:
                self.doc_attributes[key] = doc[key]
        names = self._add_categories(path, doc.get("categories") or [])
        images = self._add_images(path, doc["images"], split)
        ann_ids: set = set()
        for index, ann in enumerate(doc.get("annotations") or []):
            where = f"$.annotations[{index}]"
            if not isinstance(ann, dict):
                raise bad(path, where, "an annotation must be an object")
            if ann.get("id") in ann_ids:
                raise bad(path, f"{where}.id", f"annotation id {ann['id']} is not unique")
            ann_ids.add(ann.get("id"))
            record = images.get(ann.get("image_id"))
            if record is None:
                raise bad(path, f"{where}.image_id", f"no image with id {ann.get('image_id')!r}")
            converted = _annotation(path, where, ann, names)
            self.kinds.add(converted["type"])
            if any(a.get("id") == converted.get("id") for a in record["annotations"]):
                converted["id"] = f"{path.stem}/{converted['id']}"
            record["annotations"].append(converted)

    def task(self) -> str:
        for kind, task in (("keypoints", "keypoints"), ("polygon", "instance_segmentation"),
                           ("mask", "instance_segmentation"), ("bbox", "object_detection"),
                           ("image_class", "image_classification"), ("text", "captioning")):
            if kind in self.kinds:
                return task
        return "object_detection"

    def _add_categories(self, path: Path, categories: list) -> dict:
        names: dict = {}
        taken = {c["id"] for c in self.classes}
        known = {c["name"]: c for c in self.classes}
        for index, cat in enumerate(categories):
            if not isinstance(cat, dict) or "id" not in cat or not cat.get("name"):
                raise bad(path, f"$.categories[{index}]", "a category needs an id and a name")
            names[cat["id"]] = str(cat["name"])
            if cat["name"] in known:
                continue
            entry = {"id": cat["id"] if cat["id"] not in taken else max(taken) + 1,
                     "name": str(cat["name"])}
            entry.update({k: cat[k] for k in CLASS_KEYS if cat.get(k) not in (None, [])
                          or (k == "supercategory" and k in cat)})
            if isinstance(cat.get("color"), str) and len(cat["color"]) == 7:
                entry["color"] = cat["color"]
            taken.add(entry["id"])
            known[entry["name"]] = entry
            self.classes.append(entry)
        return names

    def _add_images(self, path: Path, images: list, split: str | None) -> dict:
        by_id = {}
        for index, image in enumerate(images):
            if not isinstance(image, dict) or "id" not in image:
                raise bad(path, f"$.images[{index}]", "an image needs an id")
            name = str(image.get("file_name") or image["id"])
            record = self.records.get(name)
            if record is None:
                record = self.records[name] = _record(image, name, split)
            by_id[image["id"]] = record
        return by_id


def _record(image: dict, name: str, split: str | None) -> dict:
    media = {"path": name}
    if isinstance(image.get("width"), int) and image["width"] > 0:
        media["width"], media["height"] = image["width"], image["height"]
    extra = {k: v for k, v in image.items() if k not in ("file_name", "width", "height", "id")}
    extra["image_id"] = image["id"]
    record = {"id": name, "media": media, "metadata": {"coco": extra}, "annotations": []}
    if split:
        record["split"] = split
    return record


def _annotation(path: Path, where: str, ann: dict, names: dict) -> dict:
    out: dict = {"id": str(ann["id"])} if "id" in ann else {}
    category = ann.get("category_id")
    if category in names:
        out["label"] = names[category]
    elif "caption" not in ann:
        raise bad(path, f"{where}.category_id", f"no category with id {category!r}")
    segmentation = ann.get("segmentation")
    if "caption" in ann:
        out.update(type="text", text=str(ann["caption"]))
    elif ann.get("keypoints") is not None:
        out.update(type="keypoints", keypoints=ann["keypoints"])
    elif isinstance(segmentation, list) and segmentation:
        out.update(type="polygon", polygons=segmentation)
    elif isinstance(segmentation, dict):
        out.update(type="mask", rle=segmentation)
    elif ann.get("bbox") is not None:
        out["type"] = "bbox"
    else:
        out["type"] = "image_class"
    _geometry(path, where, ann, out)
    extras = {k: v for k, v in ann.items() if k not in KNOWN_ANN_KEYS}
    attributes = dict(ann.get("attributes") or {})
    if extras:
        attributes["coco"] = extras
    if attributes:
        out["attributes"] = attributes
    if isinstance(ann.get("score"), int | float):
        out["score"] = ann["score"]
    return out


def _geometry(path: Path, where: str, ann: dict, out: dict) -> None:
    if out["type"] == "keypoints":
        seg = ann.get("segmentation")
        if isinstance(seg, list) and seg:
            out["polygons"] = seg
        elif isinstance(seg, dict):
            out["rle"] = seg
        if "num_keypoints" in ann:
            out["num_keypoints"] = ann["num_keypoints"]
    bbox = ann.get("bbox")
    if bbox is not None:
        if not (isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, int | float) for v in bbox)):
            raise bad(path, f"{where}.bbox", "bbox must be [x, y, width, height] numbers")
        out["bbox"] = bbox
    if out["type"] in ("text", "image_class"):
        return
    # absent means 0 in COCO; always set so an export and re-import agree
    out["iscrowd"] = str(ann.get("iscrowd", 0)).strip() in ("1", "True", "true")
    area = ann.get("area")
    if isinstance(area, int | float):
        out["area"] = area
    elif bbox is not None:
        out["area"] = number(bbox[2] * bbox[3])  # COCOeval needs an area


# -- export ------------------------------------------------------------------------

def write(bundle: Bundle, dst: Path) -> None:
    """One file for a .json destination; in a folder, annotations/instances_<split>.json
    per split (the COCO layout), so splits survive the round trip."""
    images = ExportNames()  # images/<file_name>, safe and one per record
    if dst.suffix == ".json":
        _write_file(bundle, list(bundle.records), dst, dst.parent / "images", images)
        return
    by_split: dict[str | None, list[dict]] = {}
    for record in bundle.records:
        by_split.setdefault(record.get("split"), []).append(record)
    files = ExportNames()
    for split, records in by_split.items():
        name = f"instances_{safe_component(split) or 'split'}" if split else "instances"
        name = files.claim(name, keep_suffix=False)
        _write_file(bundle, records, dst / "annotations" / f"{name}.json", dst / "images",
                    images)


def _write_file(bundle: Bundle, records: list[dict], target: Path, images_dir: Path,
                names: ExportNames) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    class_ids = {c["name"]: c["id"] for c in bundle.label_schema.get("classes", ())}
    images, annotations = [], []
    image_ids, ann_ids = _IdAllocator(), _IdAllocator()
    pending = []
    for record in records:
        coco = dict((record.get("metadata") or {}).get("coco") or {})
        image_id = image_ids.claim(coco.pop("image_id", None))
        media = record.get("media") or {}
        file_name = names.claim(media_name(record), fallback=record["id"])
        image = {"id": image_id, "file_name": file_name}
        if media.get("width"):
            image.update(width=media["width"], height=media["height"])
        image.update(coco)
        images.append(image)
        copy_media(bundle.media, record, images_dir / file_name)
        for ann in record.get("annotations", ()):
            if ann["type"] in ("span", "text_class"):
                continue
            pending.append((record["id"], image_id, ann, ann_ids.claim(_int_id(ann.get("id")))))
    for record_id, image_id, ann, ann_id in pending:
        annotations.append(_coco_annotation(record_id, image_id, ann, ann_id, class_ids))
    categories = [_category(c) for c in bundle.label_schema.get("classes", ())]
    doc = {**(bundle.label_schema.get("attributes") or {}).get("coco", {}),
           "images": images, "annotations": annotations, "categories": categories}
    with open(target, "w", encoding="utf-8") as out:
        json.dump(doc, out, ensure_ascii=False)


def _category(cls: dict) -> dict:
    out = {"id": cls["id"], "name": cls["name"], "supercategory": cls.get("supercategory", "")}
    out.update({k: cls[k] for k in ("keypoints", "skeleton", "color") if k in cls})
    return out


def _int_id(value) -> int | None:
    return int(value) if isinstance(value, str) and value.isdigit() else None


class _IdAllocator:
    """Keeps the source's integer ids where they are unique, numbers the rest after them."""

    def __init__(self) -> None:
        self.used: set[int] = set()
        self.next = 1

    def claim(self, wanted) -> int:
        if isinstance(wanted, int) and wanted not in self.used:
            self.used.add(wanted)
            return wanted
        while self.next in self.used:
            self.next += 1
        self.used.add(self.next)
        return self.next


def _coco_annotation(record_id: str, image_id: int, ann: dict, ann_id: int, class_ids) -> dict:
    if ann.get("normalized"):
        raise bad(record_id, "annotations", "COCO needs pixel boxes; this record's boxes are "
                  "fractions of an unknown image size: add the images' width and height")
    out = {"id": ann_id, "image_id": image_id}
    label = ann.get("label")
    out["category_id"] = class_ids.get(label, 0) if label is not None else 0
    if ann["type"] == "text":
        out["caption"] = ann["text"]
    if "bbox" in ann:
        out["bbox"] = ann["bbox"]
    if ann["type"] not in ("text", "image_class"):
        out["segmentation"] = ann.get("polygons") or ann.get("rle") or []
        out["iscrowd"] = int(ann.get("iscrowd", False))
    if "area" in ann:
        out["area"] = ann["area"]
    if "keypoints" in ann:
        out["keypoints"] = ann["keypoints"]
        out["num_keypoints"] = ann.get("num_keypoints", sum(1 for v in ann["keypoints"][2::3] if v))
    if "score" in ann:
        out["score"] = ann["score"]
    attributes = dict(ann.get("attributes") or {})
    out.update(attributes.pop("coco", {}))
    if attributes:
        out["attributes"] = attributes
    return out
