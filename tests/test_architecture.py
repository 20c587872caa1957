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


def _user_error_classes() -> set[str]:
    """Names of core's exception classes that derive from core.errors.UserError (a ValueError)."""
    bases: dict[str, set[str]] = {}
    for path in (REPO / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases.setdefault(node.name, set()).update(
                    b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases)
    found = {"UserError"}
    while True:
        more = {name for name, parents in bases.items() if parents & found} - found
        if not more:
            return found
        found |= more


USER_ERRORS = _user_error_classes()


def _caught_names(node: ast.expr) -> set[str]:
    """The class names an ``except`` clause's type names (``gradcam.GradCamUnavailable`` -> its last part)."""
    return {e.attr if isinstance(e, ast.Attribute) else getattr(e, "id", "")
            for e in (node.elts if isinstance(node, ast.Tuple) else [node])}


def _broad_handlers(path: Path) -> list[tuple[int, int | None]]:
    """``except`` clauses that catch Exception, or two or more of ValueError/LookupError/RuntimeError
    at once, or ValueError beside the project's errors (which are all UserErrors, i.e. ValueErrors:
    the ValueError then lets every bug's ValueError through as a message). A clause that names a
    module-level tuple (``except PROBLEMS:``) is checked by what the tuple holds. Returns
    (line of the clause, line of the tuple it names or None)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    tuples = {target.id: node for node in tree.body if isinstance(node, ast.Assign)
              and isinstance(node.value, ast.Tuple) for target in node.targets if isinstance(target, ast.Name)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ExceptHandler) or node.type is None:
            continue
        alias = tuples.get(node.type.id) if isinstance(node.type, ast.Name) else None
        names = _caught_names(alias.value if alias is not None else node.type)
        reraises = isinstance(node.body[-1], ast.Raise) and node.body[-1].exc is None  # clean up, raise on
        broad = names & BROAD or len(names & BUILTIN_GROUP) >= 2 or ("ValueError" in names and names & USER_ERRORS)
        if broad and not reraises:
            found.append((node.lineno, alias.lineno if alias is not None else None))
    return found


def test_the_catch_check_sees_through_a_tuple_name(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from core.model.load import ModelError\n"
                      "PROBLEMS = (ModelError, ValueError, OSError)\n"
                      "NARROW = (ModelError, OSError)\n"
                      "GROUP = (LookupError, RuntimeError)\n"
                      "try:\n    pass\nexcept PROBLEMS:\n    pass\n"                  # line 7
                      "try:\n    pass\nexcept NARROW:\n    pass\n"                    # line 11
                      "try:\n    pass\nexcept GROUP:\n    pass\n"                     # line 15
                      "try:\n    pass\nexcept (core.errors.UserError, ValueError):\n    pass\n"  # line 19
                      "try:\n    pass\nexcept PROBLEMS:\n    raise\n")                # line 23: re-raised
    assert _broad_handlers(source) == [(7, 2), (15, 4), (19, None)]
    assert {"ModelError", "GradCamUnavailable", "RunSchemaError", "DerivedError"} <= USER_ERRORS


def test_no_broad_catch_outside_the_boundaries():
    """Library calls whose errors come in many types (onnxruntime, pyarrow, TensorFlow) may catch
    Exception where they translate it into a UserError naming the file: those lines say so with
    '# boundary:'; everything else catches what it can handle."""
    offenders = []
    for package in ("core", "dashboard"):
        for path in sorted((REPO / package).rglob("*.py")):
            source = path.read_text(encoding="utf-8").splitlines()
            for line, alias in _broad_handlers(path):
                # the mark on the clause, or on the tuple it names (which then is a boundary wherever used)
                marked = [source[line - 1]] + ([source[alias - 1]] if alias else [])
                if not any("# boundary:" in text for text in marked):
                    offenders.append(f"{path.relative_to(REPO)}:{line}: {source[line - 1].strip()}")
    assert offenders == []
