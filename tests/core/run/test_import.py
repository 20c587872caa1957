"""``python -m core import``: runs from predictions made by any framework (CSV or .npz).

The predictions come from a real analysis (the tiny ONNX classifier of test_onnx on the
3-class image tree of conftest: 15 PNGs and a corrupt dog/broken.jpg, which the analysis
skips), so a round trip must give back the same per-class table. Rows of ``probs`` are
images, columns classes (cat, dog, fox).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.analysis import projection as projection_module
from core.analysis.projection import stored_projection
from core.cli import main
from core.data.datasets import load_dataset
from core.model.load import file_sha256
from core.run.analyze import analyze
from core.run.importer import PredictionsError, align_columns, check_probabilities, import_predictions, match_paths
from core.run.store import RunStore
from tests.core.model.test_onnx import make_onnx_classifier

pytest.importorskip("onnxruntime")


@pytest.fixture
def analysed(tmp_path, image_tree):
    """(data set, run of the tiny ONNX classifier on it, store)."""
    model = tmp_path / "tiny.onnx"
    make_onnx_classifier(model, seed=5)
    store = RunStore(tmp_path / "store")
    dataset = load_dataset(image_tree)
    run = analyze(model, dataset, store=store, progress=False, projection=False)
    return dataset, run, store


def predictions_csv(run, file, *, shuffle: bool = True) -> pd.DataFrame:
    """The run's probabilities as a predictions CSV: 'path' + one column per class, rows and columns shuffled."""
    table = pd.DataFrame(np.asarray(run.probs), columns=run.classes)
    table.insert(0, "path", run.predictions["path"].tolist())
    if shuffle:
        rng = np.random.default_rng(0)
        table = table.iloc[rng.permutation(len(table))][["path", *run.classes[::-1]]]
    table.to_csv(file, index=False, float_format="%.9g")
    return table


def test_csv_round_trip_gives_the_same_per_class_table(tmp_path, analysed):
    dataset, run, store = analysed
    csv = tmp_path / "preds.csv"
    predictions_csv(run, csv)
    imported = import_predictions(dataset, csv, store=store, progress=False, projection=False)
    pd.testing.assert_frame_equal(imported.per_class, run.per_class)
    assert imported.predictions["path"].tolist() == run.predictions["path"].tolist()  # data set order
    np.testing.assert_allclose(imported.probs, run.probs, atol=1e-7)
    assert imported.metrics == run.metrics
    # broken.jpg did not decode in the analysis, so the CSV has no row for it
    assert imported.skipped.to_dict("records") == [{"path": "dog/broken.jpg", "reason": "no prediction in preds.csv"}]
    m = imported.manifest["model"]
    assert m["format"] == "predictions" and m["path"] is None
    assert imported.config.model_sha256 == file_sha256(csv) == m["sha256"]
    assert imported.embeddings is None
    again = import_predictions(dataset, csv, store=store, progress=False, projection=False)
    assert again.id == imported.id and again.uid == imported.uid  # cached like analyze


def test_npz_with_embeddings_gets_its_map(tmp_path, analysed, monkeypatch):
    dataset, run, store = analysed
    calls = []

    def fake_project(embeddings, **options):  # UMAP itself is tested in test_projection; this checks the wiring
        calls.append(np.array(embeddings))
        return np.asarray(embeddings)[:, :2] * 2, {"method": "umap", "seed": options["seed"]}

    monkeypatch.setattr(projection_module, "project", fake_project)
    npz = tmp_path / "preds.npz"
    order = np.arange(run.n_images)[::-1]  # any row order
    np.savez(npz, paths=np.array(run.predictions["path"])[order].astype(str), probs=np.asarray(run.probs)[order],
             embeddings=np.asarray(run.embeddings)[order])
    imported = import_predictions(dataset, npz, store=store, progress=False, projection=True, seed=3)
    pd.testing.assert_frame_equal(imported.per_class, run.per_class)
    np.testing.assert_allclose(imported.embeddings, run.embeddings)
    assert len(calls) == 1 and imported.config.projection.seed == 3
    np.testing.assert_allclose(stored_projection(imported), np.asarray(run.embeddings)[:, :2] * 2)


def test_cli_import_with_a_separate_embeddings_file(tmp_path, analysed, capsys, image_tree):
    _, run, store = analysed
    csv, emb = tmp_path / "p.csv", tmp_path / "e.npy"
    predictions_csv(run, csv, shuffle=False)
    np.save(emb, np.asarray(run.embeddings))
    code = main(["import", "--data", str(image_tree), "--predictions", str(csv), "--embeddings", str(emb),
                 "--name", "imported", "--store", str(store.root), "--no-projection"])
    out = capsys.readouterr().out.strip()
    assert code == 0 and out == "imported"
    imported = store.load("imported")
    np.testing.assert_allclose(imported.embeddings, run.embeddings)
    assert imported.manifest["model"]["embeddings_file"] == str(emb.resolve())
    assert imported.config.model_sha256 not in (file_sha256(csv), file_sha256(emb))  # both files count


def test_partial_predictions_and_path_forms(tmp_path, analysed, image_tree):
    dataset, run, store = analysed
    table = predictions_csv(run, tmp_path / "all.csv", shuffle=False).iloc[:6].copy()
    table["path"] = ["./" + table["path"].iloc[0], str(image_tree / table["path"].iloc[1]),
                     table["path"].iloc[2].replace("/", "\\"), *table["path"].iloc[3:]]
    table.to_csv(tmp_path / "part.csv", index=False, float_format="%.9g")
    imported = import_predictions(dataset, tmp_path / "part.csv", store=store, progress=False, projection=False)
    assert imported.n_images == 6
    assert imported.predictions["path"].tolist() == run.predictions["path"].tolist()[:6]
    skipped = imported.skipped
    assert len(skipped) == 10 and set(skipped["reason"]) == {"no prediction in part.csv"}


def test_builtin_data_set_keeps_its_pixels(tmp_path):
    dataset = load_dataset("digits")
    test_rows = np.flatnonzero(dataset.splits == "test")
    probs = np.full((len(test_rows), 10), 0.02, np.float32)
    probs[np.arange(len(test_rows)), dataset.labels[test_rows]] = 0.82
    npz = tmp_path / "digits.npz"
    np.savez(npz, paths=np.array([dataset.paths[i] for i in test_rows]), probs=probs)
    run = import_predictions(dataset, npz, store=RunStore(tmp_path / "s"), progress=False, projection=False)
    assert run.accuracy == 1.0 and run.n_images == len(test_rows) and run.eval_split == "test"
    np.testing.assert_array_equal(run.image(0), dataset.pixels[test_rows[0]])


# --------------------------------------------------------------------------- errors

def write_csv(file, rows, columns=("path", "cat", "dog", "fox")):
    pd.DataFrame(rows, columns=list(columns)).to_csv(file, index=False)
    return file


GOOD = [["cat/cat_0.png", 0.7, 0.2, 0.1], ["dog/dog_0.png", 0.1, 0.8, 0.1]]


@pytest.mark.parametrize("make, expected, also", [
    (lambda t: write_csv(t / "p.csv", GOOD + [["cat/nope.png", 1, 0, 0], ["wolf/w.png", 1, 0, 0]]),
     "error: p.csv: 2 of its 4 paths are not in the data set 'images' (", "'cat/nope.png', 'wolf/w.png'"),
    (lambda t: write_csv(t / "p.csv", [r[:3] for r in GOOD], ("path", "cat", "dog")),
     "error: p.csv: no probability column for classes of the data set ['fox']", None),
    (lambda t: write_csv(t / "p.csv", [r + [0.0] for r in GOOD], ("path", "cat", "dog", "fox", "wolf")),
     "error: p.csv: columns ['wolf'] are not classes of the data set", None),
    (lambda t: write_csv(t / "p.csv", GOOD + [["fox/fox_0.png", 0.5, 0.3, 0.1]]),
     "error: p.csv: line 4 ('fox/fox_0.png') sums to 0.9; rows must be probabilities", None),
    (lambda t: write_csv(t / "p.csv", GOOD + [["fox/fox_0.png", 2.5, -1.0, 0.3]]),
     "error: p.csv: line 4 ('fox/fox_0.png') has -1 in column 'dog'; rows must be probabilities", None),
    (lambda t: write_csv(t / "p.csv", GOOD + [["fox/fox_0.png", 0.5, np.nan, 0.5]]),
     "error: p.csv: line 4 ('fox/fox_0.png') has nan in column 'dog'", None),
    (lambda t: write_csv(t / "p.csv", GOOD + [["fox/fox_0.png", 0.5, "high", 0.5]]),
     "error: p.csv: line 4 ('fox/fox_0.png') has 'high' in column 'dog', which is not a number", None),
    (lambda t: write_csv(t / "p.csv", GOOD + [["./cat/cat_0.png", 1, 0, 0]]),
     "error: p.csv: path 'cat/cat_0.png' appears more than once (line 2 and line 4)", None),
    (lambda t: write_csv(t / "p.csv", [r[1:] for r in GOOD], ("cat", "dog", "fox")),
     "error: p.csv: no 'path' column", None),
    (lambda t: (t / "p.txt").write_text("x") and t / "p.txt", "error: Unknown predictions file type", None),
])
def test_bad_predictions_give_one_line(tmp_path, capsys, image_tree, make, expected, also):
    file = make(tmp_path)
    code = main(["import", "--data", str(image_tree), "--predictions", str(file), "--store", str(tmp_path / "s"),
                 "--no-projection"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith(expected), err
    assert also is None or also in err[-1]
    assert sum(line.startswith("error:") for line in err) == 1
    assert not (tmp_path / "s").exists() or not RunStore(tmp_path / "s").list_runs()


def test_a_path_the_data_set_skipped_is_named_with_its_reason(tmp_path, capsys, image_tree):
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes((image_tree / "cat" / "cat_0.png").read_bytes())
    (image_tree / "cat" / "link.png").symlink_to(outside)
    file = write_csv(tmp_path / "p.csv", GOOD + [["cat/link.png", 1, 0, 0]])
    assert main(["import", "--data", str(image_tree), "--predictions", str(file), "--store", str(tmp_path / "s"),
                 "--no-projection"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "'cat/link.png' (skipped when the data set was read: symbolic link" in err, err


def npz_case(folder, **arrays):
    """``arrays`` saved as p.npz in a new sub-folder of ``folder`` (each case keeps its own file)."""
    case = folder / f"case{len(list(folder.glob('case*')))}"
    case.mkdir()
    np.savez(case / "p.npz", **arrays)
    return case / "p.npz"


def run_import(tmp_path, image_tree, predictions, *extra):
    return main(["import", "--data", str(image_tree), "--predictions", str(predictions),
                 "--store", str(tmp_path / "s"), "--no-projection", *extra])


def test_bad_npz_and_embeddings_give_one_line(tmp_path, capsys, image_tree):
    paths = np.array(["cat/cat_0.png", "dog/dog_0.png"])
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    cases = [
        (npz_case(tmp_path, paths=paths.astype(object), probs=probs), (),
         "error: p.npz: array 'paths' holds Python objects, which are not loaded (allow_pickle=False"),
        (npz_case(tmp_path, paths=paths.astype(bytes), probs=probs), (),
         "error: p.npz: array 'paths' must be 1-D unicode strings"),
        (npz_case(tmp_path, paths=paths, probs=probs[:, :2]), (),
         "error: p.npz: 'probs' has 2 columns but the data set has 3 classes"),
        (npz_case(tmp_path, paths=paths, probs=probs * 3), (),
         "error: p.npz: row 0 ('cat/cat_0.png') sums to 3; rows must be probabilities"),
        (npz_case(tmp_path, paths=paths, probs=probs, embeddings=np.zeros((3, 4))), (),
         "error: p.npz['embeddings']: 3 rows of embeddings but p.npz has 2 predictions"),
        (npz_case(tmp_path, paths=paths, prob=probs), (), "error: p.npz: no array ['probs']"),
    ]
    np.save(tmp_path / "e.npy", np.zeros((5, 4)))
    cases.append((npz_case(tmp_path, paths=paths, probs=probs), ("--embeddings", str(tmp_path / "e.npy")),
                  "error: e.npy: 5 rows of embeddings but p.npz has 2 predictions"))
    np.save(tmp_path / "nan.npy", np.array([[0.0, 1.0], [np.nan, 0.0]]))
    cases.append((npz_case(tmp_path, paths=paths, probs=probs), ("--embeddings", str(tmp_path / "nan.npy")),
                  "error: nan.npy: embedding row 1 is not finite"))
    np.save(tmp_path / "two.npy", np.zeros((2, 4)))
    cases.append((npz_case(tmp_path, paths=paths, probs=probs, embeddings=np.zeros((2, 4))),
                  ("--embeddings", str(tmp_path / "two.npy")), "error: Embeddings given twice"))
    for predictions, extra, expected in cases:
        code = run_import(tmp_path, image_tree, predictions, *extra)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err[-1].startswith(expected), (expected, err)
    # and one that is fine: classes named in the file, in another order
    good = npz_case(tmp_path, paths=paths, probs=probs[:, ::-1], classes=np.array(["fox", "dog", "cat"]))
    assert run_import(tmp_path, image_tree, good) == 0
    run = RunStore(tmp_path / "s").load(capsys.readouterr().out.strip())
    np.testing.assert_allclose(run.probs, probs, atol=1e-7)


# --------------------------------------------------------------------------- the checks on arrays

def test_check_probabilities_accepts_softmax_rows_and_refuses_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 7)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    paths, classes = [f"{i}.png" for i in range(50)], [str(k) for k in range(7)]
    check_probabilities(probs.astype(np.float32), paths=paths, classes=classes, file="p")  # no error
    with pytest.raises(PredictionsError, match=r"row 0 \('0.png'\) has .* rows must be probabilities"):
        check_probabilities(logits, paths=paths, classes=classes, file="p")
    nudged = probs.copy()
    nudged[17] *= 1.002  # off by 0.002 > 1e-3
    with pytest.raises(PredictionsError, match=r"row 17 \('17.png'\) sums to 1.002.* \(1 rows are off\)"):
        check_probabilities(nudged, paths=paths, classes=classes, file="p")
    nudged[17] = probs[17] * 1.0005  # within the tolerance
    check_probabilities(nudged, paths=paths, classes=classes, file="p")


def test_align_columns_and_match_paths():
    rng = np.random.default_rng(1)
    classes = [f"c{k}" for k in range(6)]
    columns = list(rng.permutation(classes))
    order = align_columns(columns, classes, file="p")
    assert [columns[i] for i in order] == classes
    known = [f"x/{i}.png" for i in range(20)]
    wanted = rng.permutation(20)[:8]
    assert match_paths([known[i] for i in wanted], known, file="p", data_name="d").tolist() == wanted.tolist()
    with pytest.raises(PredictionsError, match=r"7 of its 7 paths are not in the data set d: 'y/0.png', "
                                               r"'y/1.png', 'y/2.png', 'y/3.png', 'y/4.png' \.\.\."):
        match_paths([f"y/{i}.png" for i in range(7)], known, file="p", data_name="d")


def test_a_csv_read_for_longer_than_two_seconds_reports_its_progress(tmp_path, monkeypatch):
    """The progress line every 2 s asked the text file for its position while the csv module iterated it,
    which Python refuses: every import that took over 2 s failed as 'not a readable CSV'."""
    from core.run import importer

    clock = iter(range(0, 10_000_000, 3))  # each call 3 s later
    monkeypatch.setattr(importer.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(importer, "CSV_CELLS_PER_CHUNK", 30)  # chunks of 10 rows: progress between them
    file = tmp_path / "p.csv"
    pd.DataFrame({"path": [f"x/{i}.png" for i in range(300)], "a": 0.25, "b": 0.75}).to_csv(file, index=False)
    heard = []
    preds = importer.read_predictions(file, classes=["a", "b"], say=lambda message, fraction: heard.append(fraction))
    assert len(preds.paths) == 300 and np.allclose(preds.probs[:, 1], 0.75)
    assert heard and all(0 <= f <= 1 for f in heard)
