"""Every docstring example in core/ and dashboard/ runs here, and only here (one way: modules are
found by the '>>> ' in their source, without importing anything at collection)."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _modules_with_examples() -> list[str]:
    found = []
    for package in ("core", "dashboard"):
        for path in sorted((REPO / package).rglob("*.py")):
            if ">>> " in path.read_text(encoding="utf-8"):
                found.append(".".join(path.relative_to(REPO).with_suffix("").parts))
    return found


MODULES = _modules_with_examples()


def test_the_scan_finds_the_modules_with_examples():
    assert {"core.run.metrics", "core.errors", "core.diagnose.findings", "dashboard.views"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name} has '>>> ' in its source but no example doctest runs"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (output above)"
