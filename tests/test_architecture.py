"""The shape of the code: no import circles among core/ and dashboard/ modules, core never imports
streamlit, and no broad built-in exception is caught outside the command-line boundary."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import import_cycles  # noqa: E402


def test_no_import_circles():
    assert import_cycles.circles(import_cycles.graph()) == []


def test_the_checker_finds_a_circle(tmp_path):
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles.circles(edges) == [["a", "b", "c"]]


def test_the_script_reports_and_exits_0_without_circles():
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "import_cycles.py")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
    assert out.stdout.strip().endswith("0 import circle(s) among %d modules" % len(import_cycles.project_modules()))


# core's packages by concern, each importing only those before it (README, Layout); the modules at
# core/'s top (cli, demo, training, errors, progress, quiet) may import any
LAYERS = ("data", "model", "run", "analysis", "diagnose", "review", "report")


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "core" and len(parts) > 2 and parts[1] in LAYERS else None


def test_core_packages_import_only_the_packages_before_them():
    graph = import_cycles.graph()
    upward = sorted(f"{name} imports {dep}" for name, deps in graph.items() for dep in deps
                    if _package(name) and _package(dep)
                    and LAYERS.index(_package(dep)) > LAYERS.index(_package(name)))
    assert upward == []
    assert {_package(name) for name in graph} >= set(LAYERS)  # the check saw every package


def test_core_never_imports_streamlit():
    users = [name for name, deps in import_cycles.graph().items() if name.startswith("core")
             and any("streamlit" in line for line in (REPO / import_cycles.project_modules()[name])
                     .relative_to(REPO).read_text().splitlines() if line.lstrip().startswith(("import ", "from ")))]
    assert users == []


BROAD = {"Exception", "BaseException"}
BUILTIN_GROUP = {"ValueError", "LookupError", "RuntimeError"}


def _broad_handlers(path: Path) -> list[int]:
    """Lines of ``except`` clauses that catch Exception, or two or more of ValueError/LookupError/
    RuntimeError at once (a catch-all that turns bugs into messages)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ExceptHandler) or node.type is None:
            continue
        names = {n.id for n in ast.walk(node.type) if isinstance(n, ast.Name)}
        reraises = isinstance(node.body[-1], ast.Raise) and node.body[-1].exc is None  # clean up, raise on
        if (names & BROAD or len(names & BUILTIN_GROUP) >= 2) and not reraises:
            lines.append(node.lineno)
    return lines


def test_no_broad_catch_outside_the_boundaries():
    """Library calls whose errors come in many types (onnxruntime, pyarrow, TensorFlow) may catch
    Exception where they translate it into a UserError naming the file: those lines say so with
    '# boundary:'; everything else catches what it can handle."""
    offenders = []
    for package in ("core", "dashboard"):
        for path in sorted((REPO / package).rglob("*.py")):
            source = path.read_text(encoding="utf-8").splitlines()
            for line in _broad_handlers(path):
                if "# boundary:" not in source[line - 1]:
                    offenders.append(f"{path.relative_to(REPO)}:{line}: {source[line - 1].strip()}")
    assert offenders == []
