"""Import errors written for the person who sent the file: they name the user's file
(never the server's temporary copy or the folder a zip was extracted to), and a file that
is not the declared format says which format it looks like."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from loophub.datasets.formats import sniff_format
from loophub.errors import InvalidInput

COCO = json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 4}],
                   "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                                    "bbox": [0, 0, 1, 1]}],
                   "categories": [{"id": 1, "name": "cat"}]})
LABELSTUDIO = json.dumps([{"id": 1, "data": {"text": "hello"},
                           "annotations": [{"result": []}]}])
CONLL = "-DOCSTART- -X- -X- O\n\nU.N.\tNNP\tI-NP\tI-ORG\nofficial\tNN\tI-NP\tO\n"
YOLO = "0 0.5 0.5 0.25 0.25\n1 0.1 0.2 0.3 0.4\n"
CSV = "image,label\na.jpg,cat\nb.jpg,dog\n"


@pytest.mark.parametrize("text, looks_like", [
    (COCO, "coco"), (LABELSTUDIO, "labelstudio"), (CONLL, "conll"), (YOLO, "yolo"),
    (CSV, "csv"), ('{"id": "r1", "annotations": []}\n', "loophub"), ("just some words", None),
])
def test_sniff_format(tmp_path, text, looks_like):
    path = tmp_path / "upload"
    path.write_text(text)
    assert sniff_format(path) == looks_like


@pytest.mark.parametrize("text, declared, looks_like", [
    (COCO, "labelstudio", "coco"), (LABELSTUDIO, "coco", "labelstudio"),
    (CONLL, "coco", "conll"), (YOLO, "coco", "yolo"), (CSV, "labelstudio", "csv"),
])
def test_a_file_of_another_format_says_which_it_looks_like(service, alice, text, declared,
                                                           looks_like):
    service.create_dataset(alice, "wrong")
    with pytest.raises(InvalidInput) as err:
        service.import_data(alice, "wrong", declared, io.BytesIO(text.encode()),
                            source_name="mine.json")
    message = str(err.value)
    assert f"looks like {looks_like}" in message, message
    assert "mine.json" in message and "loophub-" not in message and "/tmp" not in message


def test_errors_inside_an_uploaded_zip_name_the_users_zip(service, alice):
    service.create_dataset(alice, "boxes")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("boxes/obj.names", "cat\n")
        z.writestr("boxes/labels/a.txt", "7 0.5 0.5 0.1 0.1\n")
    buffer.seek(0)
    with pytest.raises(InvalidInput) as err:
        service.import_data(alice, "boxes", "yolo", buffer, source_name="boxes.zip")
    message = str(err.value)
    assert "boxes.zip" in message and "a.txt" in message, message
    assert "loophub-" not in message and "/tmp" not in message, message
