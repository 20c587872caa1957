"""Issue 22 item 5: a --ray-address where no Ray listens fails within seconds, in one line.

Before, ``--ray-address 127.0.0.1:1`` (a closed port) never ended: Ray retried for over 10 minutes
printing 45 lines of warnings and no error line.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_a_closed_ray_address_fails_in_one_line_within_60_s(tmp_path, image_tree, tiny_model_path):
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "core", "analyze", "--model", str(tiny_model_path),
                           "--data", str(image_tree), "--store", str(tmp_path / "store"), "--no-projection",
                           "--engine", "ray", "--ray-address", "127.0.0.1:1"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: Cannot reach the Ray cluster at '127.0.0.1:1': Connection refused (is its head "
                      "node running? 'ray start --head' prints the address to give)"], done.stderr[-3000:]
    assert done.stderr.rstrip().endswith(errors[0]) and "Traceback" not in done.stderr
    assert elapsed < 60, elapsed


def test_an_address_that_is_not_host_port_is_refused(monkeypatch):
    from core.run.ray_engine import RayEngineError, _check_reachable

    for bad in ("10.0.0.5", "host:port", ":6379"):
        with pytest.raises(RayEngineError, match="must be HOST:PORT"):
            _check_reachable(bad)
    _check_reachable("auto")  # left to Ray
