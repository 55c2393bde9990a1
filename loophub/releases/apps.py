"""What a release's app is, as the apps service (serving/apps.py) and the app kernels
(widgets/apps.py) both rely on it: which template notebook renders which task, the
request headers that carry the visitor to the kernel, and when the service is busy.

A release's app lives at ``/services/apps/<release>``; one template notebook per task type
(notebooks/apps/<task>.ipynb) renders every release of that task, so the preheated kernel
pools grow with the task types, not with the releases.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

TEMPLATES = {  # task type -> template notebook (in the apps service's template folder)
    "image_classification": "image_classification.ipynb",
    "object_detection": "object_detection.ipynb",
    "text_classification": "text_classification.ipynb",
    "ner": "ner.ipynb",
}

# The apps service sets these request headers itself (a visitor's own values are dropped)
# and Voila hands them to the kernel as HTTP_X_LOOPHUB_RELEASE / HTTP_X_LOOPHUB_VISITOR.
RELEASE_HEADER = "X-Loophub-Release"
VISITOR_HEADER = "X-Loophub-Visitor"  # the visitor's hub token: the app calls as them
# what the service already read as the visitor (JSON: the release's view, its metadata
# and the model card the visitor may read), so the kernel starts without a request
PREFETCH_HEADER = "X-Loophub-App"
HEADERS = (RELEASE_HEADER, VISITOR_HEADER, PREFETCH_HEADER)
MAX_PREFETCH = 32 * 1024  # bytes of prefetched JSON passed on; past it the kernel reads

RELEASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def env_name(header: str) -> str:
    """The kernel environment variable Voila makes of HEADER (RFC 3875, 4.1.18)."""
    return "HTTP_" + header.upper().replace("-", "_")


def template_for(task: str | None) -> str | None:
    """The template notebook of TASK, None for a task without an app."""
    return TEMPLATES.get(task or "")


def app_path(prefix: str, release: str) -> str:
    """The app's URL path under the service PREFIX (``/services/apps/``)."""
    return f"{prefix.rstrip('/')}/{release}"


@dataclass(frozen=True)
class Capacity:
    """How many visitors may hold a kernel at once, and what to tell the next one."""

    max_kernels: int = 16
    retry_after: int = 10  # seconds a refused visitor is asked to wait
    per_user: int = 4  # kernels one visitor may hold (their open app pages); 0: no cap

    def admits(self, in_use: int) -> bool:
        return self.max_kernels <= 0 or in_use < self.max_kernels

    def admits_visitor(self, held: int) -> bool:
        """A visitor holding HELD kernels may open one more (one person's tabs cannot
        take the whole service's sessions)."""
        return self.per_user <= 0 or held < self.per_user

    def wait_seconds(self, in_use: int) -> int:
        """The wait to suggest: longer the further past the cap (each extra visitor
        roughly one more session to finish), at most a minute."""
        over = max(0, in_use - self.max_kernels + 1)
        return min(60, self.retry_after * max(1, math.ceil(over / max(1, self.max_kernels // 4))))
