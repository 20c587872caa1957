"""Derived analyses: registered kinds computed once, stored in the run, recomputed when stale,
and added atomically (a writer killed mid-way leaves the run exactly as it was)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import derived
from core.store import RunStore
from core.synthetic import make_synthetic_run

REPO = Path(__file__).resolve().parents[2]
CALLS = []


@derived.register("confidence_hist", version=1, defaults={"bins": 4},
                  description="histogram of the top-1 confidence (a test kind)")
def _confidence_hist(run, config, progress):
    CALLS.append(dict(config))
    conf = run.predictions["confidence"].to_numpy()
    counts, edges = np.histogram(conf, bins=config["bins"], range=(0, 1))
    return derived.DerivedResult(
        arrays={"counts": counts}, tables={"edges": pd.DataFrame({"edge": edges})},
        summary={"n": int(len(conf)), "max_bin": int(counts.argmax())})


@pytest.fixture
def run(tmp_path):
    CALLS.clear()
    return make_synthetic_run(RunStore(tmp_path), "r", n=200, with_images=False, history=False)


def test_computed_once_stored_and_read_back(run, tmp_path):
    assert derived.status(run, "confidence_hist") == "missing"
    first = derived.get(run, "confidence_hist")
    conf = run.predictions["confidence"].to_numpy()
    assert first.array("counts").tolist() == np.histogram(conf, bins=4, range=(0, 1))[0].tolist()
    assert first.summary["n"] == 200 and len(first.table("edges")) == 5
    # a fresh reader sees it in the manifest, with its config and version, and does not recompute
    again = RunStore(tmp_path).load("r")
    entry = json.loads((again.path / "manifest.json").read_text())["derived"]["confidence_hist"]
    assert entry["version"] == 1 and entry["config"] == {"bins": 4}
    assert derived.status(again, "confidence_hist") == "current"
    assert derived.get(again, "confidence_hist").array("counts").tolist() == first.array("counts").tolist()
    assert len(CALLS) == 1


def test_another_config_or_version_recomputes_and_replaces(run, monkeypatch):
    derived.get(run, "confidence_hist")
    assert derived.status(run, "confidence_hist", {"bins": 8}) == "stale"
    assert derived.get(run, "confidence_hist", {"bins": 8}, compute=False) is None
    eight = derived.get(run, "confidence_hist", {"bins": 8})
    assert eight.array("counts").shape == (8,) and len(CALLS) == 2
    assert len(list((run.path / "derived").iterdir())) == 1  # the 4-bin result is gone
    bumped = derived.kind("confidence_hist").__class__(
        **{**derived.kind("confidence_hist").__dict__, "version": 2})
    monkeypatch.setitem(derived._REGISTRY, "confidence_hist", bumped)
    assert derived.status(run, "confidence_hist", {"bins": 8}) == "stale"


def test_unknown_kind_or_option_lists_the_valid_ones(run):
    with pytest.raises(derived.DerivedError, match=r"Unknown derived analysis 'nope'. Available: \[.*'confidence_hist'"):
        derived.get(run, "nope")
    with pytest.raises(derived.DerivedError, match=r"Unknown option\(s\) \['bin'\].*Options: \['bins'\]"):
        derived.get(run, "confidence_hist", {"bin": 3})


def test_a_run_remade_with_force_has_no_stale_results(run, tmp_path):
    derived.get(run, "confidence_hist")
    remade = make_synthetic_run(RunStore(tmp_path), "r", n=120, with_images=False, history=False)
    assert derived.status(remade, "confidence_hist") == "missing"
    assert derived.get(remade, "confidence_hist").summary["n"] == 120


def test_delete(run):
    derived.get(run, "confidence_hist")
    derived.delete(run, "confidence_hist")
    assert derived.status(run, "confidence_hist") == "missing"
    assert [p.name for p in (run.path / "derived").iterdir()] == []


def _snapshot(run_path: Path) -> dict:
    """Every visible file of the run with its bytes (hidden temporaries excluded)."""
    out = {}
    for p in sorted(run_path.rglob("*")):
        rel = p.relative_to(run_path)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            out[str(rel)] = p.read_bytes()
    return out


@pytest.mark.parametrize("stage", ["computing", "committing"])
def test_a_writer_killed_while_adding_leaves_the_run_exactly_as_it_was(tmp_path, stage):
    store = RunStore(tmp_path)
    run = make_synthetic_run(store, "k", n=100, with_images=False, history=False)
    derived.get(run, "confidence_hist")  # one result already there, which must survive intact
    before = _snapshot(run.path)
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        import numpy as np
        import core.store
        from core import derived
        from core.store import RunStore
        run = RunStore({str(tmp_path)!r}).load("k")

        @derived.register("slow", version=1)
        def slow(run, config, progress):
            if {stage!r} == "computing":
                print("ready", flush=True); time.sleep(60)
            return derived.DerivedResult(arrays={{"x": np.arange(10)}}, summary={{"ok": True}})

        real = core.store._stage_json
        def slow_stage(*args):  # killed with the new manifest half-written
            staged = real(*args); staged.write_text("{{half"); print("ready", flush=True); time.sleep(60)
        core.store._stage_json = slow_stage
        derived.get(run, "slow")
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert _snapshot(run.path) == before
    again = store.load("k")
    assert [i.name for i in again.derived_infos()] == ["confidence_hist"]
    assert derived.get(again, "confidence_hist", compute=False) is not None
    store.sweep()  # the killed writer's temporary files go at the next start
    assert sorted(p.name for p in (again.path / "derived").iterdir()) == [again.derived_info("confidence_hist").folder]
    assert sorted(p.name for p in again.path.iterdir() if p.name.startswith(".manifest")) == []


def test_the_sweep_removes_a_result_folder_no_manifest_names(run, tmp_path):
    derived.get(run, "confidence_hist")
    orphan = run.path / "derived" / "slow.0123abcd"  # as left by a kill between the two renames
    orphan.mkdir()
    (orphan / "x.npy").write_bytes(b"")
    RunStore(tmp_path).sweep()
    assert not orphan.exists() and derived.status(run, "confidence_hist") == "current"


def test_reading_a_derived_result_imports_neither_tensorflow_nor_umap(run, tmp_path):
    derived.get(run, "confidence_hist")
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from core.store import RunStore
        from core.derived import StoredDerived
        run = RunStore({str(tmp_path)!r}).load("r")
        got = StoredDerived(run, run.derived_info("confidence_hist"))
        print(int(got.array("counts").sum()), sorted(m for m in ("tensorflow", "keras", "umap") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["200", "[]"]
