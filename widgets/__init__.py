"""loophub.widgets: labeling and dataset-versioning widgets for JupyterLab and Voila.

Labelers (driven by the dataset's label schema): ImageClassifier, TextClassifier,
BoxLabeler, SpanLabeler, ReviewLabeler, and ``labeler_for(dataset)`` to pick one.
Versioning: VersionBrowser and DatasetOverview. Training: JobMonitor (what a training job
shows in a cell: live curves, state, log, Stop). Models: ModelBoard (a model's versions
side by side, and "try it" in the kernel), DrawPad (draw an image to try). Loop:
LineageView (a release's chain back to its data's sources). Everything
talks to the platform through the client SDK (loophub.client.Client): each widget takes
``client=`` (default: the notebook user's ``Client()``).
"""

from loophub.widgets.drawpad import DrawPad
from loophub.widgets.labeler import (
    BoxLabeler,
    ImageClassifier,
    Labeler,
    ReviewLabeler,
    SpanLabeler,
    TextClassifier,
    labeler_for,
)
from loophub.widgets.lineage import LineageView
from loophub.widgets.models import ModelBoard
from loophub.widgets.training import JobMonitor
from loophub.widgets.versions import DatasetOverview, VersionBrowser

__all__ = [
    "BoxLabeler",
    "DatasetOverview",
    "DrawPad",
    "ImageClassifier",
    "JobMonitor",
    "Labeler",
    "LineageView",
    "ModelBoard",
    "ReviewLabeler",
    "SpanLabeler",
    "TextClassifier",
    "VersionBrowser",
    "labeler_for",
]
