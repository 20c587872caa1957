"""Reading runs in the dashboard imports neither TensorFlow nor umap (checked in a fresh process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import os, sys
from core.run.store import RunStore
from core.run.synthetic import make_synthetic_run
from streamlit.testing.v1 import AppTest
os.environ["ARTIFACTS_DIR"] = sys.argv[1]
store = RunStore(sys.argv[1])
make_synthetic_run(store, "a", n=300, n_classes=4)
make_synthetic_run(store, "b", n=300, n_classes=4, accuracy=0.9)
at = AppTest.from_file(sys.argv[2], default_timeout=60).run()
for page in ["overview", "per_class", "confusion", "errors", "embeddings", "compare", "try_image"]:
    at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, (page, at.exception[0].value)
heavy = sorted(m for m in ("tensorflow", "keras", "umap") if m in sys.modules)
print("heavy:", heavy)
"""


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_pages_do_not_import_tensorflow_or_umap(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), str(ROOT / "dashboard" / "app.py")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "heavy: []" in out.stdout
