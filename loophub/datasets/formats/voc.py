"""Pascal VOC XML (one file per image), ImageSets split lists and Datumaro's labelmap.txt.

Boxes: VOC gives 1-based inclusive pixel indices; loophub keeps continuous
[x, y, w, h] with x = xmin - 1 and w = xmax - x (the Detectron2 convention), and
exports back exactly. XML is parsed with defusedxml.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from defusedxml import ElementTree as SafeET
from defusedxml.common import DefusedXmlException

from loophub.datasets.formats.base import (
    Bundle,
    ExportNames,
    FolderMedia,
    bad,
    build_label_schema,
    copy_media,
    media_name,
    number,
    safe_component,
)

FLAGS = ("truncated", "difficult", "occluded")


def read(src: Path) -> Bundle:
    if src.is_file():
        files, root = [src], src.parent
    else:
        root = src
        ann_dir = src / "Annotations" if (src / "Annotations").is_dir() else src
        files = sorted(ann_dir.rglob("*.xml"))
        if not files:
            raise bad(src, "folder", "no VOC .xml annotation file in it")
    splits = _read_splits(root / "ImageSets" / "Main")
    extra = _read_labelmap(root / "labelmap.txt")
    records = [_record(path, splits) for path in files]
    names = list(extra) if extra else [a["label"] for r in records for a in r["annotations"]]
    label_schema = build_label_schema("object_detection", names, extra)
    return Bundle(label_schema, records, FolderMedia([root / "JPEGImages", root]))


def _read_splits(folder: Path) -> dict[str, str]:
    splits: dict[str, str] = {}
    if not folder.is_dir():
        return splits
    for path in sorted(folder.glob("*.txt")):
        if "_" in path.stem:  # per-class lists (aeroplane_train.txt) repeat the split lists
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            name = line.split("#", 1)[0].strip().split(" ")[0]
            if name:
                splits.setdefault(name, path.stem)
    return splits


def _read_labelmap(path: Path) -> dict[str, dict]:
    """Datumaro's labelmap.txt lines ``name:r,g,b:parts:actions``."""
    classes: dict[str, dict] = {}
    if not path.is_file():
        return classes
    for number_, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = [*line.split(":"), "", "", ""][:4]
        entry: dict = {}
        if fields[1]:
            try:
                rgb = [int(v) for v in fields[1].split(",")]
                entry["color"] = "#{:02x}{:02x}{:02x}".format(*rgb)
            except (ValueError, IndexError):
                raise bad(path, f"line {number_}", "colour must be r,g,b integers") from None
        for key, value in (("parts", fields[2]), ("actions", fields[3])):
            if value:
                entry[key] = value.split(",")
        classes[fields[0]] = entry
    return classes


def _parse(path: Path) -> ET.Element:
    try:
        return SafeET.parse(path).getroot()
    except ET.ParseError as exc:
        line, column = exc.position
        raise bad(path, f"line {line}, column {column}", f"invalid XML: {exc}") from None
    except DefusedXmlException as exc:
        raise bad(path, "document", f"refused unsafe XML ({type(exc).__name__})") from None


def _to_dict(element: ET.Element):
    children = list(element)
    if not children:
        return (element.text or "").strip()
    out: dict = {}
    for child in children:
        value = _to_dict(child)
        if child.tag in out:
            if not isinstance(out[child.tag], list):
                out[child.tag] = [out[child.tag]]
            out[child.tag].append(value)
        else:
            out[child.tag] = value
    return out


def _record(path: Path, splits: dict[str, str]) -> dict:
    root = _parse(path)
    if root.tag != "annotation":
        raise bad(path, "line 1", f"root element is <{root.tag}>, VOC expects <annotation>")
    record_id = path.stem
    filename = (root.findtext("filename") or "").strip() or record_id + ".jpg"
    media: dict = {"path": filename}
    meta: dict = {}
    for child in root:
        if child.tag in ("object", "filename"):
            continue
        meta[child.tag] = _to_dict(child)
    size = meta.get("size")
    if isinstance(size, dict):
        width, height = _int(size.pop("width", "")), _int(size.pop("height", ""))
        if width and height:
            media.update(width=width, height=height)
    annotations = [_object(path, index, obj) for index, obj in enumerate(root.iter("object"))]
    record = {"id": record_id, "media": media, "annotations": annotations}
    if meta:
        record["metadata"] = {"voc": meta}
    if record_id in splits:
        record["split"] = splits[record_id]
    return record


def _int(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:
        return None


def _box(path: Path, where: str, element: ET.Element | None) -> list:
    if element is None:
        raise bad(path, where, "object has no <bndbox>")
    try:
        xmin, ymin, xmax, ymax = (float(element.findtext(key))
                                  for key in ("xmin", "ymin", "xmax", "ymax"))
    except (TypeError, ValueError):
        raise bad(path, where, "<bndbox> needs numeric xmin, ymin, xmax, ymax") from None
    x, y = xmin - 1, ymin - 1
    return [number(round(v, 6)) for v in (x, y, xmax - x, ymax - y)]


def _object(path: Path, index: int, obj: ET.Element) -> dict:
    where = f"/annotation/object[{index + 1}]"
    name = (obj.findtext("name") or "").strip()
    if not name:
        raise bad(path, where, "object has no <name>")
    ann = {"type": "bbox", "label": name, "bbox": _box(path, f"{where}/bndbox", obj.find("bndbox"))}
    attributes: dict = {}
    for child in obj:
        tag = child.tag
        if tag in ("name", "bndbox"):
            continue
        if tag in FLAGS:
            attributes[tag] = (child.text or "").strip() in ("1", "true", "True")
        elif tag == "part":
            part_where = f"{where}/part"
            attributes.setdefault("parts", []).append(
                {"name": (child.findtext("name") or "").strip(),
                 "bbox": _box(path, part_where, child.find("bndbox"))})
        elif tag == "actions":
            attributes["actions"] = {a.tag: (a.text or "").strip() == "1" for a in child}
        elif tag == "attributes":
            for attr in child.iter("attribute"):
                attributes[(attr.findtext("name") or "").strip()] = attr.findtext("value") or ""
        else:
            attributes[tag] = _to_dict(child)
    if attributes:
        ann["attributes"] = attributes
    return ann


# -- export ------------------------------------------------------------------------

def write(bundle: Bundle, dst: Path) -> None:
    """Annotations/<id>.xml (``/`` in the id as ``_``) and JPEGImages/<media path>, each
    name made safe and unique (``ExportNames``); <filename> names the image written."""
    (dst / "Annotations").mkdir(parents=True, exist_ok=True)
    xml_names, image_names = ExportNames(), ExportNames()
    splits: dict[str, list[str]] = {}
    for record in bundle.records:
        if any(a.get("normalized") for a in record["annotations"]):
            raise bad(record["id"], "annotations", "VOC needs pixel boxes; add image sizes")
        name = xml_names.claim(safe_component(record["id"]), fallback=record["id"],
                               keep_suffix=False)
        filename = image_names.claim(media_name(record), fallback=record["id"])
        tree = ET.ElementTree(_record_xml(record, filename))
        ET.indent(tree)
        tree.write(dst / "Annotations" / f"{name}.xml", encoding="unicode")
        if record.get("split"):
            splits.setdefault(record["split"], []).append(name)
        copy_media(bundle.media, record, dst / "JPEGImages" / filename)
    if splits:
        (dst / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        lists = ExportNames()
        for split, names in splits.items():
            path = lists.claim(safe_component(split), fallback="split", keep_suffix=False)
            (dst / "ImageSets" / "Main" / f"{path}.txt").write_text("\n".join(names) + "\n")
    _write_labelmap(bundle.label_schema, dst / "labelmap.txt")


def _write_labelmap(label_schema: dict, path: Path) -> None:
    lines = ["# label:color_rgb:parts:actions"]
    for cls in sorted(label_schema.get("classes", ()), key=lambda c: c["id"]):
        color = cls.get("color")
        rgb = ",".join(str(int(color[i:i + 2], 16)) for i in (1, 3, 5)) if color else ""
        lines.append(f"{cls['name']}:{rgb}:{','.join(cls.get('parts', []))}:"
                     f"{','.join(cls.get('actions', []))}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _add(parent: ET.Element, tag: str, value) -> ET.Element:
    element = ET.SubElement(parent, tag)
    if isinstance(value, dict):
        for key, inner in value.items():
            _add_any(element, key, inner)
    else:
        element.text = str(value)
    return element


def _add_any(parent: ET.Element, tag: str, value) -> None:
    for item in value if isinstance(value, list) else [value]:
        _add(parent, tag, item)


def _record_xml(record: dict, filename: str) -> ET.Element:
    root = ET.Element("annotation")
    meta = dict((record.get("metadata") or {}).get("voc") or {})
    media = record.get("media") or {}
    _add(root, "filename", filename)
    size = dict(meta.pop("size", None) or {})
    if media.get("width"):
        size = {"width": media["width"], "height": media["height"], **size}
    if size:
        _add(root, "size", size)
    for key, value in meta.items():
        _add_any(root, key, value)
    for ann in record["annotations"]:
        if ann["type"] == "bbox" or "bbox" in ann:
            _object_xml(root, ann)
    return root


def _bndbox(parent: ET.Element, bbox: list) -> None:
    x, y, w, h = bbox
    _add(parent, "bndbox", {"xmin": number(round(x + 1, 6)), "ymin": number(round(y + 1, 6)),
                            "xmax": number(round(x + w, 6)), "ymax": number(round(y + h, 6))})


def _object_xml(root: ET.Element, ann: dict) -> None:
    obj = ET.SubElement(root, "object")
    _add(obj, "name", ann.get("label", ""))
    attributes = dict(ann.get("attributes") or {})
    for flag in FLAGS:
        if flag in attributes:
            _add(obj, flag, int(bool(attributes.pop(flag))))
    _bndbox(obj, ann["bbox"])
    for part in attributes.pop("parts", []):
        element = ET.SubElement(obj, "part")
        _add(element, "name", part["name"])
        _bndbox(element, part["bbox"])
    if "actions" in attributes:
        _add(obj, "actions", {k: int(v) for k, v in attributes.pop("actions").items()})
    plain = {k: v for k, v in attributes.items() if isinstance(v, str) and k != "pose"}
    for key, value in attributes.items():
        if key not in plain:
            _add_any(obj, key, value)
    if plain:
        block = ET.SubElement(obj, "attributes")
        for key, value in plain.items():
            _add(block, "attribute", {"name": key, "value": value})
