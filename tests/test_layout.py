"""The house rules that keep the rooms apart (DESIGN.md, "Rule of the house")."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ADAPTERS = ("loophub.spawner", "loophub.extensions", "loophub.widgets", "loophub.serving",
            "loophub.hub_config")


def _imports(path: Path) -> list[tuple[int, str]]:
    """Modules a file imports, and module paths it names as strings (importlib)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and node.value.startswith("loophub.") and " " not in node.value:
            out.append((node.lineno, node.value))
    return out


def _offenders(folder: Path, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*.py")):
        for line, module in _imports(path):
            if any(module == f or module.startswith(f + ".") or module.startswith(f + ":")
                   for f in forbidden):
                found.append(f"{path.relative_to(REPO)}:{line} {module}")
    return found


def test_the_domain_imports_no_adapter():
    """loophub/ is the domain: nothing from the hub adapters, widgets, serving or config."""
    assert _offenders(REPO / "loophub", ADAPTERS) == []


def test_the_check_finds_an_adapter_import(tmp_path):
    (tmp_path / "bad.py").write_text("import importlib\nfrom loophub.extensions.api import app\n"
                                     "importlib.import_module('loophub.spawner.kernels')\n")
    global REPO
    saved, REPO = REPO, tmp_path
    try:
        assert len(_offenders(tmp_path, ADAPTERS)) == 2
    finally:
        REPO = saved


def test_no_import_cycle_between_the_sdk_and_the_labeling_room():
    assert _offenders(REPO / "loophub" / "labeling", ("loophub.client",)) == []
    assert _offenders(REPO / "loophub" / "client", ("loophub.labeling",)) == []
