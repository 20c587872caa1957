"""The run store: round trip, listing, atomic writes, schema checks, safe image paths."""

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

from core.analysis.projection import stored_projection
from core.run.store import RunBusyError, RunCorruptError, RunNotFoundError, RunSchemaError, RunStore
from core.run.synthetic import make_synthetic_run
from core.run.write import write_run

REPO = Path(__file__).resolve().parents[3]


def test_round_trip_tables_and_arrays(tmp_path):
    store = RunStore(tmp_path)
    run = make_synthetic_run(store, "r1", n=300, n_classes=4, seed=3)
    again = store.load("r1")
    assert again.n_images == 300 and again.classes == run.classes
    preds = again.predictions
    assert len(preds) == 300 and preds["id"].tolist() == list(range(300))
    assert (preds["predicted"].to_numpy() == again.probs.argmax(axis=1)).all()
    assert preds["correct"].tolist() == (preds["true"] == preds["predicted"]).tolist()
    assert again.embeddings.shape == (300, 32) and stored_projection(again).shape == (300, 2)
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


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_failure_inside_writing_leaves_nothing(tmp_path):
    store = RunStore(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        with store.writing("half") as w:
            w.save_array("probs", np.zeros((2, 2)))
            raise RuntimeError("boom")
    assert store.run_ids() == [] and _entries(tmp_path / ".runs") == []
    assert [p for p in _entries(tmp_path) if p not in (".runs", ".locks")] == []


def test_rewrite_replaces_the_old_run_whole(tmp_path):
    store = RunStore(tmp_path)
    make_synthetic_run(store, "same", n=40, with_images=True, history=False)
    make_synthetic_run(store, "same", n=70, with_images=False, history=False)
    run = store.load("same")
    assert run.n_images == 70 and not (run.path / "images.npy").exists()
    assert [p for p in _entries(tmp_path) if not p.startswith(".")] == ["same"]
    assert len(_entries(tmp_path / ".runs")) == 1  # the old version is gone


def _writer_script(tmp_path: Path, body: str) -> str:
    return textwrap.dedent(f"""
        import os, sys, time, numpy as np
        sys.path.insert(0, {str(REPO)!r})
        import core.run.store
        from core.run.store import RunStore
        from core.run.synthetic import make_synthetic_run
        store = RunStore({str(tmp_path)!r})
    """) + textwrap.dedent(body)


def _run_until(script: str, marker: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line == marker, f"writer printed {line!r}"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_run_killed_mid_write_is_invisible_and_swept_at_next_start(tmp_path):
    proc = _run_until(_writer_script(tmp_path, """
        with store.writing("killed") as w:
            w.save_array("probs", np.zeros((10, 3)))
            print("writing", flush=True)
            time.sleep(60)
            w.save_manifest({})
    """), "writing")
    store = RunStore(tmp_path)
    # while the writer lives, its temporary folder is left alone and the name is taken
    assert store.sweep() == []
    with pytest.raises(RunBusyError, match="'killed' is being written by another process"):
        with store.reserve("killed"):
            pass
    _kill(proc)
    assert store.run_ids() == [] and store.list_runs() == []
    with pytest.raises(RunNotFoundError):
        store.load("killed")
    leftovers = _entries(tmp_path / ".runs")
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-killed.")
    # its writer is dead: the next start removes the leftover at once, not a day later
    assert store.sweep() == leftovers
    assert _entries(tmp_path / ".runs") == []


def test_a_crash_while_replacing_keeps_the_old_run(tmp_path):
    store = RunStore(tmp_path)
    make_synthetic_run(store, "keep", n=30, with_images=False, history=False)
    # the writer of the replacement is killed after its new version is complete but
    # before the link moves to it
    proc = _run_until(_writer_script(tmp_path, """
        real = core.run.store.os.symlink
        def slow_symlink(*args):
            print("publishing", flush=True); time.sleep(60); real(*args)
        core.run.store.os.symlink = slow_symlink
        make_synthetic_run(store, "keep", n=99, with_images=False, history=False)
    """), "publishing")
    assert store.load("keep").n_images == 30  # the old run stays visible meanwhile
    _kill(proc)
    assert store.load("keep").n_images == 30
    store.sweep()
    assert store.load("keep").n_images == 30 and len(_entries(tmp_path / ".runs")) == 1


def test_a_legacy_run_folder_is_replaced_and_a_crash_in_between_recovers(tmp_path):
    store = RunStore(tmp_path)
    run = make_synthetic_run(store, "legacy", n=20, with_images=False, history=False)
    # the layout before versioned folders: the run is a plain folder at <store>/<id>
    link = tmp_path / "legacy"
    link.unlink()
    os.rename(run.path, link)
    assert store.load("legacy").n_images == 20
    proc = _run_until(_writer_script(tmp_path, """
        real = core.run.store.os.symlink
        def slow_symlink(*args):
            print("publishing", flush=True); time.sleep(60); real(*args)
        core.run.store.os.symlink = slow_symlink
        make_synthetic_run(store, "legacy", n=44, with_images=False, history=False)
    """), "publishing")
    _kill(proc)  # killed between moving the old folder aside and linking the new one
    store.sweep()
    assert store.load("legacy").n_images == 44  # the complete new version is linked
    assert len(_entries(tmp_path / ".runs")) == 1
    make_synthetic_run(store, "legacy", n=50, with_images=False, history=False)
    assert store.load("legacy").n_images == 50 and len(_entries(tmp_path / ".runs")) == 1


def test_a_deleted_run_is_not_resurrected_by_the_sweep(tmp_path):
    store = RunStore(tmp_path)
    make_synthetic_run(store, "gone", n=20, with_images=False, history=False)
    store.delete("gone")
    store.sweep()
    assert store.run_ids() == [] and _entries(tmp_path / ".runs") == []


def test_old_schema_says_what_to_rerun(tmp_path):
    store = RunStore(tmp_path)
    make_synthetic_run(store, "old", n=20, with_images=False, history=False)
    manifest = store.load("old").path / "manifest.json"
    m = json.loads(manifest.read_text()); m["schema_version"] = 0
    manifest.write_text(json.dumps(m))
    with pytest.raises(RunSchemaError, match="schema version 0.*Re-run the analysis: python -m core analyze"):
        store.load("old")
    summary, = store.list_runs()
    assert summary.schema_version == 0 and "Re-run the analysis" in summary.problem


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


def test_image_files_changed_since_the_run_was_made_are_told(tmp_path, capsys):
    from core.cli import main

    root = tmp_path / "data"; root.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (root / name).write_bytes(b"x")
    store = RunStore(tmp_path / "store")
    run = write_run(store, "files", classes=["a", "b"], y_true=np.array([0, 1, 1]),
                    probs=np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), paths=["a.png", "b.png", "c.png"],
                    data={"root": str(root), "name": "data"})
    assert run.data_change_line() is None
    (root / "a.png").unlink()
    later = os.stat(root / "b.png").st_mtime + 3600
    os.utime(root / "b.png", (later, later))
    line = run.data_change_line()
    assert line == (f"The data changed since run 'files' was made: of its 3 image files, 1 missing (e.g. 'a.png') "
                    f"and 1 modified since {run.created} (e.g. 'b.png'). Its predictions and diagnoses are of the "
                    "old files: analyse again with --force.")
    main(["diagnose", "files", "--only", "calibration", "--store", str(store.root)])
    assert f"warning: {line}" in capsys.readouterr().err
    # pixels stored with the run never change
    held = write_run(store, "held", classes=["a", "b"], y_true=np.array([0, 1]),
                     probs=np.array([[0.9, 0.1], [0.2, 0.8]]),
                     paths=["x", "y"], images=np.zeros((2, 4, 4, 3), np.uint8),
                     data={"root": None, "name": "d", "images_in_run": True})
    assert held.data_change_line() is None


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
        from core.run.store import RunStore
        from core.report.tables import errors_table
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


@pytest.mark.parametrize("text, reason", [
    ("[1]", "expected a JSON object, found list"),
    ("null", "expected a JSON object, found NoneType"),
    ('{"schema_version": 2, "classes": null, "counts": {"images": 3}}', "'classes' must be a non-empty list"),
    ('{"schema_version": 2, "classes": ["a"], "counts": {"images": "3"}}', "'counts.images' must be a whole number"),
    ('{"schema_version": 2, "classes": ["a"], "coun', "not valid JSON"),
])
def test_a_malformed_manifest_is_listed_as_broken_and_others_keep_working(tmp_path, text, reason):
    store = RunStore(tmp_path)
    make_synthetic_run(store, "good", n=20, with_images=False, history=False)
    bad = make_synthetic_run(store, "bad", n=20, with_images=False, history=False)
    manifest = bad.path / "manifest.json"
    manifest.write_text(text)
    good, broken = store.list_runs()
    assert good.run_id == "good" and good.ok
    assert broken.run_id == "bad" and str(tmp_path / "bad" / "manifest.json") in broken.problem and reason in broken.problem
    with pytest.raises(RunCorruptError, match=reason.replace("(", r"\(")):
        store.load("bad")
    assert store.load("good").n_images == 20


def _damage(run, name: str, how: str) -> Path:
    file = run.path / name
    if how == "truncate":
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    elif how == "remove":
        file.unlink()
    elif how == "pickle":
        np.save(file, np.array([{"x": 1}] * run.n_images, dtype=object), allow_pickle=True)
    elif how == "reshape":
        np.save(file, np.zeros((run.n_images + 1, 2), np.float32))
    return file


@pytest.mark.parametrize("name, how, reason", [
    ("predictions.parquet", "truncate", "not a readable Parquet file"),
    ("predictions.parquet", "remove", "missing"),
    ("probs.npy", "remove", "missing"),
    ("probs.npy", "pickle", "not a plain numeric array"),
    ("projection.npy", "reshape", "21 rows, expected 20"),
])
def test_damaged_run_files_are_named_when_the_run_is_opened(tmp_path, name, how, reason):
    store = RunStore(tmp_path)
    run = make_synthetic_run(store, "hurt", n=20, with_images=False, history=False)
    _damage(run, name, how)
    with pytest.raises(RunCorruptError) as info:
        store.load("hurt")
    assert str(info.value).startswith(str(tmp_path / "hurt" / name)) and reason in str(info.value)


def test_images_are_not_served_from_the_file_system_root_or_home(tmp_path):
    store = RunStore(tmp_path / "store")
    for root in ("/", str(Path.home())):
        run = write_run(store, "wide", classes=["a", "b"], y_true=np.array([0, 1]),
                        probs=np.array([[0.9, 0.1], [0.2, 0.8]]), paths=["etc/hostname", "x.png"],
                        data={"root": root, "name": "everything"})
        with pytest.raises(PermissionError, match="not a data set folder"):
            run.image(0)


def test_copy_run_makes_an_independent_run_under_another_name(tmp_path):
    store = RunStore(tmp_path)
    src = make_synthetic_run(store, "src", n=25, with_images=False, history=False)
    copy = store.copy_run("src", "dst")
    assert copy.id == "dst" and copy.name == "dst" and copy.cache_key == src.cache_key
    assert np.array_equal(copy.probs, src.probs)
    store.delete("src")
    assert store.load("dst").n_images == 25


def test_metrics_of_images_the_model_learnt_from_are_said_to_be(tmp_path):
    """An import without its test rows reported 'accuracy on all' of training images, and corrections that
    dropped the test split reported the val split that chose the checkpoint, both without a word."""
    store = RunStore(tmp_path)
    common = dict(classes=["a", "b"], y_true=np.array([0, 1, 1]), paths=["x", "y", "z"],
                  probs=np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]]))
    train_only = write_run(store, "t", splits=np.array(["train"] * 3), **common)
    assert train_only.eval_split == "all" and train_only.notes[-1].startswith(
        "No test or val split: the metrics are of all 3 images, the 3 training images among them")
    val = write_run(store, "v", splits=np.array(["train", "val", "val"]), training={"history": {}}, **common)
    assert val.notes[-1].startswith("No test split: the metrics are of the val split, which training watched")
    assert write_run(store, "ok", splits=np.array(["train", "test", "test"]), training={}, **common).notes == []
