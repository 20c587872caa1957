"""core.model.formats: the model-format registry (discovery, detection, capabilities), and that no other
module matches format names or closes an import circle with it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from core.data.preprocess import PREPROCESS_CHOICES
from core.model import formats
from core.model.formats.base import ModelError

ROOT = Path(__file__).resolve().parents[3]


def test_every_format_declares_its_capabilities():
    found = formats.all_formats()
    assert list(found) == ["keras", "h5", "onnx", "savedmodel"]
    assert {n for n, f in found.items() if "gradcam" in f.attention} == {"keras", "h5"}
    assert all("occlusion" in f.attention for f in found.values())   # model-agnostic attention: every format
    assert {n for n, f in found.items() if f.embeddings} == {"keras", "h5", "onnx"}
    assert {n for n, f in found.items() if f.risk} == {"savedmodel"}
    assert {n for n, f in found.items() if f.ray} == {"keras", "h5", "savedmodel"}
    assert all(set(f.preprocessing) == set(PREPROCESS_CHOICES) for f in found.values())
    assert formats.model_suffixes() == (".keras", ".h5", ".hdf5", ".onnx")


def test_detect_by_path(tmp_path):
    (tmp_path / "m.keras").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip archive
    (tmp_path / "m.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 8)
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"")
    assert [formats.detect(tmp_path / n).name for n in ("m.keras", "m.h5", "m.onnx", "sm")] == \
        ["keras", "h5", "onnx", "savedmodel"]
    (tmp_path / "w.pt").write_bytes(b"x")
    with pytest.raises(ModelError, match=r"Not a model file: '.*w.pt' \(expected: .keras file, legacy .h5 file, "
                                         r"\.onnx file, SavedModel folder\)"):
        formats.detect(tmp_path / "w.pt")
    (tmp_path / "bad.h5").write_bytes(b"nope")
    with pytest.raises(ModelError, match=r"Not a Keras model file: '.*bad.h5' \(not an HDF5 file\)"):
        formats.detect(tmp_path / "bad.h5")
    with pytest.raises(ModelError, match="Unknown model format 'pt'. Known formats:"):
        formats.get("pt")
    assert formats.find("synthetic") is None and formats.find(None) is None
    with pytest.raises(ModelError, match="Not a model this tool can run: object"):
        formats.of_model(object())


def test_a_new_format_is_one_module(tmp_path, monkeypatch):
    (tmp_path / "tinyformat.py").write_text(
        "from pathlib import Path\n"
        "from core.model.formats.base import ModelFormat\n"
        "FORMATS = (ModelFormat(name='tiny', description='.tiny file', suffixes=('.tiny',),\n"
        "    claims=lambda p: p.suffix == '.tiny', check=lambda p: None, hash=lambda p: 'h',\n"
        "    load=lambda p, unsafe=False: ('tiny', p), owns=lambda m: isinstance(m, tuple) and m[0] == 'tiny',\n"
        "    inference=lambda m, **o: o, attention=('occlusion',), preprocessing=('auto', 'unit')),)\n")
    monkeypatch.setattr(formats, "__path__", [*formats.__path__, str(tmp_path)])
    monkeypatch.setattr(formats, "_REGISTRY", {})
    (tmp_path / "m.tiny").write_bytes(b"1")
    from core.model.load import build_inference_model, file_sha256, load_model, model_format

    assert model_format(tmp_path / "m.tiny") == "tiny" and file_sha256(tmp_path / "m.tiny") == "h"
    assert load_model(tmp_path / "m.tiny") == ("tiny", tmp_path / "m.tiny")
    assert ".tiny" in formats.model_suffixes()
    model = load_model(tmp_path / "m.tiny")
    assert build_inference_model(model, preprocessing="unit+bgr")["preprocessing"].spec == "unit+bgr"
    with pytest.raises(ModelError, match=r"--preprocess caffe is not available for a .tiny file. Available: "
                                         r"\['auto', 'unit'\]"):
        build_inference_model(model, preprocessing="caffe")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_no_import_circle_between_models_and_formats():
    assert "core.model.load" not in _imports(ROOT / "core" / "model" / "onnx_model.py")
    for module in (ROOT / "core" / "model" / "formats").glob("*.py"):
        assert "core.model.load" not in _imports(module), module.name


def test_no_format_name_matched_outside_the_registry():
    """Comparisons with a model format's name (== 'onnx', in ('keras', ...)) live in core/formats only."""
    names = set(formats.all_formats())
    offenders = []
    for path in [*ROOT.glob("core/**/*.py"), *ROOT.glob("dashboard/**/*.py")]:
        if "formats" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                for side in [node.left, *node.comparators]:
                    values = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                    for v in values:
                        if isinstance(v, ast.Constant) and v.value in names:
                            offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
