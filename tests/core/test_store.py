"""The run store: round trip, listing, atomic writes, schema checks, safe image paths."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.runs import write_run
from core.store import RunNotFoundError, RunSchemaError, RunStore
from core.synthetic import make_synthetic_run

REPO = Path(__file__).resolve().parents[2]


def test_round_trip_tables_and_arrays(tmp_path):
    store = RunStore(tmp_path)
    run = make_synthetic_run(store, "r1", n=300, n_classes=4, seed=3)
    again = store.load("r1")
    assert again.n_images == 300 and again.classes == run.classes
    preds = again.predictions
    assert len(preds) == 300 and preds["id"].tolist() == list(range(300))
    assert (preds["predicted"].to_numpy() == again.probs.argmax(axis=1)).all()
    assert preds["correct"].tolist() == (preds["true"] == preds["predicted"]).tolist()
    assert again.embeddings.shape == (300, 32) and again.projection.shape == (300, 2)
    # the metrics describe the test split only
    mask = again.eval_mask()
    assert again.eval_split == "test" and mask.sum() == again.metrics["n"] < 300
    assert again.metrics["accuracy"] == pytest.approx(preds["correct"][mask].mean())
    table = again.per_class
    assert list(table.columns) == ["class", "precision", "recall", "f1", "support",
                                   "tp", "fp", "fn", "tn", "cer"]
    assert table["support"].sum() == mask.sum()
    assert again.per_class_csv() == (tmp_path / "r1" / "per_class.csv").read_bytes()
    assert again.image(0).shape == (16, 16)
    assert again.history["epoch"].tolist() == list(range(1, 9))


def test_list_delete_and_errors(tmp_path):
    store = RunStore(tmp_path)
    assert store.list_runs() == []
    make_synthetic_run(store, "one", n=50, with_images=False, history=False)
    make_synthetic_run(store, "two", n=60, with_images=False, history=False)
    assert sorted(s.run_id for s in store.list_runs()) == ["one", "two"]
    assert {s.n_images for s in store.list_runs()} == {50, 60}
    store.delete("one")
    assert store.run_ids() == ["two"]
    with pytest.raises(RunNotFoundError, match="No run 'one' in .*Runs: two"):
        store.load("one")
    with pytest.raises(ValueError, match=r"Invalid run name '\.\./x'"):
        store.load("../x")


def test_failure_inside_writing_leaves_nothing(tmp_path):
    store = RunStore(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        with store.writing("half") as w:
            w.save_array("probs", np.zeros((2, 2)))
            raise RuntimeError("boom")
    assert store.run_ids() == [] and list(tmp_path.iterdir()) == []


def test_rewrite_replaces_the_old_run_whole(tmp_path):
    store = RunStore(tmp_path)
    make_synthetic_run(store, "same", n=40, with_images=True, history=False)
    make_synthetic_run(store, "same", n=70, with_images=False, history=False)
    run = store.load("same")
    assert run.n_images == 70 and not (run.path / "images.npy").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["same"]


def test_run_killed_mid_write_is_invisible(tmp_path):
    # A writer process is SIGKILLed while the run's files are being written.
    script = textwrap.dedent(f"""
        import sys, time, numpy as np
        sys.path.insert(0, {str(REPO)!r})
        from core.store import RunStore
        store = RunStore({str(tmp_path)!r})
        with store.writing("killed") as w:
            w.save_array("probs", np.zeros((10, 3)))
            print("writing", flush=True)
            time.sleep(60)
            w.save_manifest({{}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    store = RunStore(tmp_path)
    assert store.run_ids() == [] and store.list_runs() == []
    with pytest.raises(RunNotFoundError):
        store.load("killed")
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-killed-")
    # a day later the next writer sweeps the leftover away
    old = time.time() - 2 * 24 * 3600
    os.utime(tmp_path / leftovers[0], (old, old))
    make_synthetic_run(store, "next", n=10, with_images=False, history=False)
    assert [p.name for p in tmp_path.iterdir()] == ["next"]


def test_old_schema_says_what_to_rerun(tmp_path):
    store = RunStore(tmp_path)
    make_synthetic_run(store, "old", n=20, with_images=False, history=False)
    manifest = tmp_path / "old" / "manifest.json"
    m = json.loads(manifest.read_text()); m["schema_version"] = 0
    manifest.write_text(json.dumps(m))
    with pytest.raises(RunSchemaError, match="schema version 0.*Re-run the analysis: python -m core analyze"):
        store.load("old")
    assert store.list_runs()[0].schema_version == 0


def test_images_outside_the_data_root_are_refused(tmp_path):
    root = tmp_path / "data"; root.mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    store = RunStore(tmp_path / "store")
    run = write_run(store, "paths", classes=["a", "b"], y_true=np.array([0, 1]),
                    probs=np.array([[0.9, 0.1], [0.2, 0.8]]), paths=["ok.png", "../secret.png"],
                    data={"root": str(root), "name": "data"})
    assert run.image_file(0) == (root / "ok.png").resolve()
    with pytest.raises(PermissionError, match="outside the data set root"):
        run.image_file(1)


def test_write_run_checks_shapes(tmp_path):
    with pytest.raises(ValueError, match="probs has 3 columns but there are 2 classes"):
        write_run(RunStore(tmp_path), "bad", classes=["a", "b"], y_true=np.array([0]),
                  probs=np.ones((1, 3)) / 3, paths=["x"])
    assert RunStore(tmp_path).run_ids() == []


def test_a_reader_process_imports_neither_tensorflow_nor_umap(tmp_path):
    store = RunStore(tmp_path)
    make_synthetic_run(store, "light", n=100)
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from core.store import RunStore
        from core.reports import errors_table
        run = RunStore({str(tmp_path)!r}).load("light")
        n = len(run.predictions) + len(run.per_class) + run.probs.shape[0] + len(errors_table(run))
        run.image(0)
        heavy = sorted(m for m in ("tensorflow", "keras", "umap", "numba", "streamlit") if m in sys.modules)
        print(n, heavy)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    n, heavy = out.stdout.strip().split(" ", 1)
    assert heavy == "[]"
    assert int(n) > 200


def test_plain_pandas_and_numpy_read_a_run(tmp_path):
    make_synthetic_run(RunStore(tmp_path), "plain", n=30, with_images=False, history=False)
    df = pd.read_parquet(tmp_path / "plain" / "predictions.parquet")
    probs = np.load(tmp_path / "plain" / "probs.npy", allow_pickle=False)
    assert probs.shape == (30, 10) and len(df) == 30
    assert json.loads((tmp_path / "plain" / "manifest.json").read_text())["counts"]["images"] == 30
