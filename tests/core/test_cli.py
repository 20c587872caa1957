"""The command line: a real subprocess run, and one-line errors for each bad input."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from core.cli import main
from core.run.store import RunStore
from core.run.synthetic import make_synthetic_run
from tests.conftest import write_image

REPO = Path(__file__).resolve().parents[2]


def _cli(*args, store):
    return subprocess.run([sys.executable, "-m", "core", *args, "--store", str(store)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # costs more CPU than the fast lane affords (CLASSIFIER_TEST_CPU_LOG)
def test_analyze_runs_report_errors_in_subprocesses(tmp_path, image_tree, tiny_model_path):
    store = tmp_path / "store"
    out = _cli("analyze", "--model", str(tiny_model_path), "--data", str(image_tree), "--name", "tiny-run",
               "--no-projection", store=store)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "tiny-run"
    assert "Traceback" not in out.stderr
    listed = _cli("runs", store=store)
    assert listed.returncode == 0 and "tiny-run" in listed.stdout and "tiny.keras" in listed.stdout
    report = _cli("report", "tiny-run", "--out", str(tmp_path / "per_class.csv"), store=store)
    assert report.returncode == 0, report.stderr
    run = RunStore(store).load("tiny-run")
    assert (tmp_path / "per_class.csv").read_bytes() == run.per_class_csv()
    table = pd.read_csv(tmp_path / "per_class.csv")
    assert table["class"].tolist() == ["cat", "dog", "fox"] and table["support"].sum() == 15
    errs = _cli("errors", "tiny-run", "--min-confidence", "0.0", "--out", str(tmp_path / "e.csv"), store=store)
    assert errs.returncode == 0, errs.stderr
    errors = pd.read_csv(tmp_path / "e.csv")
    assert len(errors) == run.metrics["errors"]
    assert (errors["true_label"] != errors["predicted_label"]).all()
    assert errors["confidence"].is_monotonic_decreasing


def test_errors_command_filters_by_confidence(tmp_path, capsys):
    make_synthetic_run(RunStore(tmp_path), "syn", n=400, with_images=False, history=False)
    assert main(["errors", "syn", "--min-confidence", "0.9", "--store", str(tmp_path)]) == 0
    from io import StringIO
    table = pd.read_csv(StringIO(capsys.readouterr().out))
    assert len(table) > 0 and (table["confidence"] >= 0.9).all()
    assert table["rank"].tolist() == list(range(1, len(table) + 1))


@pytest.mark.parametrize("make_bad, expected", [
    (lambda t, m: ["analyze", "--model", str(t / "none.keras"), "--data", str(t)],
     "error: Model path does not exist: '"),
    (lambda t, m: ["analyze", "--model", m, "--data", str(t / "missing")],
     "error: Data path does not exist: '"),
    (lambda t, m: ["analyze", "--model", m, "--data", str(t / "list.txt")],
     "error: Unknown data layout for file '"),
    (lambda t, m: ["analyze", "--model", m, "--data", str(t / "empty")],
     "error: Unknown layout: '"),
    (lambda t, m: ["analyze", "--model", m, "--data", str(t / "noimages")],
     "error: Class folder has no images: '"),
    (lambda t, m: ["analyze", "--model", str(t / "list.txt"), "--data", str(t / "ok")],
     "error: Not a model file: '"),
    (lambda t, m: ["analyze", "--model", str(t / "m.keras"), "--data", str(t / "ok")],
     "error: Not a Keras model file: '"),
    (lambda t, m: ["report", "nope"], "error: No run 'nope' in "),
    (lambda t, m: ["errors", "nope", "--min-confidence", "0.5"], "error: No run 'nope' in "),
])
def test_bad_inputs_give_one_line(tmp_path, capsys, tiny_model_path, make_bad, expected):
    (tmp_path / "m.keras").write_bytes(b"not a zip")
    (tmp_path / "list.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "noimages" / "cat").mkdir(parents=True)
    write_image(tmp_path / "noimages" / "dog" / "1.png", (0, 0, 0))
    write_image(tmp_path / "ok" / "dog" / "1.png", (0, 0, 0))
    rc = main([*make_bad(tmp_path, str(tiny_model_path)), "--store", str(tmp_path / "store")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith(expected), err
    assert not any("Traceback" in line for line in err)


def test_bad_confidence_is_named(tmp_path, capsys):
    make_synthetic_run(RunStore(tmp_path), "syn", n=20, with_images=False, history=False)
    assert main(["errors", "syn", "--min-confidence", "1.5", "--store", str(tmp_path)]) == 2
    assert "min_confidence=1.5" in capsys.readouterr().err


def test_empty_store_tells_what_to_do(tmp_path, capsys, monkeypatch):
    assert main(["runs", "--store", str(tmp_path)]) == 0
    assert "python -m core demo" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")  # a file given as the store: said, not "No runs in"
    assert main(["runs", "--store", str(tmp_path / "afile")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --store {tmp_path / 'afile'}: not a folder"
    monkeypatch.setenv("ARTIFACTS_DIR", str(tmp_path))  # no --store: the store of $ARTIFACTS_DIR (it crashed)
    assert main(["runs"]) == 0 and "python -m core demo" in capsys.readouterr().err


def test_class_order_beside_the_model_wins(tmp_path, image_tree, tiny_model_path):
    import shutil

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    shutil.copy(tiny_model_path, model_dir / "m.keras")
    (model_dir / "classes.txt").write_text("fox\ncat\ndog\n")
    rc = main(["analyze", "--model", str(model_dir / "m.keras"), "--data", str(image_tree), "--name", "ordered",
               "--no-projection", "--store", str(tmp_path / "s")])
    assert rc == 0
    run = RunStore(tmp_path / "s").load("ordered")
    assert run.classes == ["fox", "cat", "dog"]
    assert run.predictions.loc[run.predictions["path"] == "fox/fox_0.png", "true"].item() == 0


def _imported_modules(*args: str, tmp_path) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -X importtime -m core ARGS`` and return it with the top-level packages it imported."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "core", *args], cwd=REPO,
                         capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)})
    names = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in out.stderr.splitlines()
             if line.startswith("import time:") and "|" in line}
    return out, names


def test_runs_and_train_help_import_neither_tensorflow_nor_keras(tmp_path):
    runs, imported = _imported_modules("runs", "--store", str(tmp_path / "store"), tmp_path=tmp_path)
    assert runs.returncode == 0, runs.stderr[-2000:]
    assert {"core", "numpy", "pandas"} <= imported  # the import log was read
    assert not imported & {"tensorflow", "keras", "umap"}
    # The train and demo options are built without TensorFlow too.
    for command, option in (("train", "--oversample-to"), ("demo", "--time-budget")):
        shown, imported = _imported_modules(command, "--help", tmp_path=tmp_path)
        assert shown.returncode == 0 and option in shown.stdout
        assert not imported & {"tensorflow", "keras", "umap"}


def test_runs_lists_a_broken_run_with_its_reason_and_report_names_the_file(tmp_path, capsys):
    from core.run.store import RunStore
    from core.run.synthetic import make_synthetic_run

    store = RunStore(tmp_path)
    make_synthetic_run(store, "fine", n=20, with_images=False, history=False)
    bad = make_synthetic_run(store, "bad", n=20, with_images=False, history=False)
    (bad.path / "manifest.json").write_text("[1]")
    hurt = make_synthetic_run(store, "hurt", n=20, with_images=False, history=False)
    (hurt.path / "predictions.parquet").write_bytes(b"PAR1 truncated")
    assert main(["runs", "--store", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("fine ") or out[2].startswith("fine ")
    assert any(line.startswith("bad ") and f"BROKEN: {tmp_path / 'bad' / 'manifest.json'}: expected a JSON object"
               in line for line in out)
    assert main(["report", "hurt", "--store", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {tmp_path / 'hurt' / 'predictions.parquet'}: not a readable Parquet file "
                   f"({err.split('(', 1)[1]}") and len(err.splitlines()) == 1
