"""A server's home folder on its first spawn: the platform's tutorials copied in once.

Each tutorial is copied at most once per home (a note in ``.loophub/tutorials.json``
remembers which), and never over a file already there: a user's edits are theirs, and a
tutorial they deleted stays deleted. Tutorials added to the platform later arrive at the
next spawn.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

NOTE = Path(".loophub") / "tutorials.json"


def seed_home(home: Path, tutorials: Path) -> list[str]:
    """Copy the notebooks in TUTORIALS that HOME never received; returns their names."""
    if not tutorials.is_dir():
        return []
    note = home / NOTE
    given = set(json.loads(note.read_text())) if note.exists() else set()
    copied = []
    for source in sorted(tutorials.glob("*.ipynb")):
        target = home / source.name
        if source.name in given or target.exists():
            continue
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        copied.append(source.name)
    if copied:
        note.parent.mkdir(parents=True, exist_ok=True)
        note.write_text(json.dumps(sorted(given | set(copied))))
        _give_to_home_owner(home, [home / name for name in copied] + [note.parent, note])
    return copied


def _give_to_home_owner(home: Path, paths: list[Path]) -> None:
    """A hub running as root copies into a system user's home: the files are the user's."""
    if os.geteuid() != 0:
        return
    owner = home.stat()
    for path in paths:
        os.chown(path, owner.st_uid, owner.st_gid)
