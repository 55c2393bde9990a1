"""notebooks/labeling_tour.ipynb runs top to bottom against the real platform."""

import ast

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.hub


def test_labeling_tour_runs(hub, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("LOOPHUB_API_URL", hub.api)
    monkeypatch.setenv("LOOPHUB_TOKEN", hub.token("tourist"))
    notebook = nbformat.read(REPO / "notebooks" / "labeling_tour.ipynb", as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    outputs = {cell["id"]: cell.get("outputs", []) for cell in notebook.cells}
    progress = ast.literal_eval(outputs["tour-06"][0]["data"]["text/plain"])
    assert progress["mine"] == 5 and progress["total"] == 40
    # a wrong suggestion (the model takes digit005, a 5, for a 9) is not accepted as right
    suggestion = ast.literal_eval(outputs["tour-08"][-1]["data"]["text/plain"])
    assert suggestion["your label"] == [suggestion["writer"]], suggestion
    diff = ast.literal_eval(outputs["tour-16"][0]["data"]["text/plain"])
    # five labeled, five with predictions (one of them looked at and labeled): ten changed
    assert diff["changed"] == 10 and diff["added"] == 0 == diff["removed"]
    assert sum(diff["label_change"].values()) == 6
