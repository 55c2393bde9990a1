"""What a replica's request log holds, as far as its readers rely on it: the serving side
writes it (serving/requestlog.py), monitoring and the feedback loop read it."""

from __future__ import annotations

import re

MAX_TEXT = 1000  # characters of a text input kept; a longer one is cut (not collectable)
REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")  # a request's id (the caller's or ours)
