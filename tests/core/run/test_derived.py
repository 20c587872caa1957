"""Derived analyses: registered kinds computed once, stored in the run, recomputed when stale,
and added atomically (a writer killed mid-way leaves the run exactly as it was)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.run import derived
from core.run.store import RunStore
from core.run.synthetic import make_synthetic_run

REPO = Path(__file__).resolve().parents[3]
CALLS = []


@dataclass(frozen=True)
class _HistConfig:
    bins: int = 4


@derived.register("confidence_hist", version=1, config=_HistConfig,
                  description="histogram of the top-1 confidence (a test kind)")
def _confidence_hist(run, config, progress):
    CALLS.append(asdict(config))
    conf = run.predictions["confidence"].to_numpy()
    counts, edges = np.histogram(conf, bins=config.bins, range=(0, 1))
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


@derived.register("mean_bin", version=1, reads=("confidence_hist",), description="reads confidence_hist (a test kind)")
def _mean_bin(run, config, progress):
    counts = derived.get(run, "confidence_hist").array("counts")
    return derived.DerivedResult(arrays={}, tables={}, summary={"mean": float(np.average(np.arange(len(counts)),
                                                                                       weights=counts))})


@derived.register("mean_bin_note", version=1, reads=("mean_bin",), description="reads mean_bin (a test kind)")
def _mean_bin_note(run, config, progress):
    return derived.DerivedResult(arrays={}, tables={},
                                 summary={"note": f"mean bin {derived.get(run, 'mean_bin').summary['mean']:.2f}"})


def test_a_result_is_stale_when_a_result_it_read_is_computed_again_down_the_chain(run, tmp_path):
    derived.get(run, "mean_bin_note")  # computes confidence_hist and mean_bin on the way
    hist = run.derived_info("confidence_hist").folder
    assert run.derived_info("mean_bin").inputs == {"confidence_hist": hist}
    assert run.derived_info("mean_bin_note").inputs == {"mean_bin": run.derived_info("mean_bin").folder}
    assert run.derived_info("confidence_hist").inputs is None  # it reads nothing
    assert all(derived.status(run, k) == "current" for k in ("confidence_hist", "mean_bin", "mean_bin_note"))
    derived.get(run, "confidence_hist", force=True)  # same version and config, computed again
    fresh = RunStore(tmp_path).load("r")  # as another process sees it
    assert [derived.status(fresh, k) for k in ("confidence_hist", "mean_bin", "mean_bin_note")] == \
        ["current", "stale", "stale"]
    assert derived.get(fresh, "mean_bin_note", compute=False) is None
    derived.get(fresh, "mean_bin_note")
    assert derived.status(fresh, "mean_bin") == derived.status(fresh, "mean_bin_note") == "current"
    assert len(CALLS) == 2  # confidence_hist: computed twice, not a third time by the chain
    # another config of the input (the 8-bin one replaces the default): what read the default is stale
    derived.get(fresh, "confidence_hist", {"bins": 8})
    assert derived.status(fresh, "mean_bin") == derived.status(fresh, "mean_bin_note") == "stale"


def test_a_result_stored_before_inputs_were_recorded_is_judged_by_version_and_config(run, tmp_path):
    derived.get(run, "mean_bin")
    manifest = json.loads((run.path / "manifest.json").read_text())
    del manifest["derived"]["mean_bin"]["inputs"]  # as stored by an older version of the tool
    (run.path / "manifest.json").write_text(json.dumps(manifest))
    older = RunStore(tmp_path).load("r")
    assert older.derived_info("mean_bin").inputs is None
    assert derived.status(older, "mean_bin") == "current"  # not recomputed on upgrade


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
        import core.run.store
        from core.run import derived
        from core.run.store import RunStore
        run = RunStore({str(tmp_path)!r}).load("k")

        @derived.register("slow", version=1)
        def slow(run, config, progress):
            if {stage!r} == "computing":
                print("ready", flush=True); time.sleep(60)
            return derived.DerivedResult(arrays={{"x": np.arange(10)}}, summary={{"ok": True}})

        real = core.run.store._stage_json
        def slow_stage(*args):  # killed with the new manifest half-written
            staged = real(*args); staged.write_text("{{half"); print("ready", flush=True); time.sleep(60)
        core.run.store._stage_json = slow_stage
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
        from core.run.store import RunStore
        from core.run.derived import StoredDerived
        run = RunStore({str(tmp_path)!r}).load("r")
        got = StoredDerived(run, run.derived_info("confidence_hist"))
        print(int(got.array("counts").sum()), sorted(m for m in ("tensorflow", "keras", "umap") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["200", "[]"]


# --------------------------------------------------------------------------- typed configs, row inputs, findings


from core.diagnose.findings import Caption, Card, Column, Filter, Findings  # noqa: E402
from core.errors import UserError  # noqa: E402

ROW_CALLS = []


@dataclass(frozen=True)
class _SquareConfig:
    scale: float = 1.0
    names: tuple[str, ...] = ("a",)

    def __post_init__(self):
        if self.scale <= 0:
            raise UserError(f"scale must be positive. Received: scale={self.scale!r}")


def _square_findings(run, stored):
    rows = np.asarray(stored.array("rows"))
    columns = pd.DataFrame({"squared": np.full(run.n_images, np.nan)})
    columns.loc[rows, "squared"] = np.asarray(stored.array("value"))
    return Findings(cards=(Card("squares", "row_square", "Squares", f"{len(rows)} rows", rows, "row order"),),
                    columns=columns, column_specs=(Column("squared", "squared"),),
                    captions=(Caption("squared {squared:.0f}", when="squared"),),
                    filters=(Filter("squared", "Squared at least", "min", "sq"),))


@derived.register("row_square", version=1, config=_SquareConfig, row_inputs=True, findings=_square_findings,
                  libraries=("scikit-learn",), description="row * row * scale, per requested row (a test kind)")
def _row_square(run, config, progress, *, rows, previous):
    ROW_CALLS.append((type(config).__name__, None if rows is None else rows.tolist(), previous is not None))
    rows = np.arange(3) if rows is None else rows
    skipped = {int(r): "odd one out" for r in rows if r == 7}
    rows = np.array([r for r in rows if r != 7], np.int64)
    return derived.DerivedResult(arrays={"rows": rows, "value": (rows * rows * config.scale).astype(np.float64)},
                                 summary={"n": int(len(rows)) + (previous.summary["n"] if previous else 0)},
                                 skipped=skipped)


def test_row_inputs_extend_the_stored_result_and_compute_only_new_rows(run):
    ROW_CALLS.clear()
    first = derived.get(run, "row_square", rows=[5, 2])
    assert ROW_CALLS == [("_SquareConfig", [2, 5], False)]  # the typed config, the rows asked for
    assert first.array("rows").tolist() == [2, 5] and first.array("value").tolist() == [4.0, 25.0]
    assert derived.get(run, "row_square", rows=[5]).array("rows").tolist() == [2, 5]
    assert len(ROW_CALLS) == 1  # stored rows are read back, not recomputed
    grown = derived.get(run, "row_square", rows=[2, 9, 7])
    assert ROW_CALLS[-1] == ("_SquareConfig", [7, 9], True)  # only the missing rows, with what is stored
    assert grown.array("rows").tolist() == [2, 5, 9] and grown.array("value").tolist() == [4.0, 25.0, 81.0]
    assert grown.skipped == {7: "odd one out"} and grown.summary["n"] == 3
    assert derived.get(run, "row_square", rows=[7], compute=False) is None  # a skipped row is not stored
    other = derived.get(run, "row_square", {"scale": 2.0}, rows=[3])  # another config starts afresh
    assert other.array("rows").tolist() == [3] and other.array("value").tolist() == [18.0]
    with pytest.raises(derived.DerivedError, match="'confidence_hist' takes no rows"):
        derived.get(run, "confidence_hist", rows=[1])


def test_a_typed_config_is_validated_before_computing_and_read_back_typed(run):
    ROW_CALLS.clear()
    with pytest.raises(UserError, match=r"scale must be positive. Received: scale=-1"):
        derived.get(run, "row_square", {"scale": -1}, rows=[1])
    with pytest.raises(derived.DerivedError, match=r"Unknown option\(s\) \['bogus'\] for 'row_square'"):
        derived.get(run, "row_square", {"bogus": 1})
    assert ROW_CALLS == []
    stored = derived.get(run, "row_square", _SquareConfig(scale=3.0, names=("x", "y")), rows=[1])
    assert stored.config == _SquareConfig(scale=3.0, names=("x", "y"))  # tuple again after JSON's list
    assert derived.status(run, "row_square", {"scale": 3.0, "names": ["x", "y"]}) == "current"


def test_library_versions_are_recorded_with_each_result(run):
    from importlib import metadata

    derived.get(run, "row_square", rows=[1])
    info = run.derived_info("row_square")
    assert info.versions["numpy"] == np.__version__ and info.versions["pandas"] == pd.__version__
    assert info.versions["scikit-learn"] == metadata.version("scikit-learn")
    entry = json.loads((run.path / "manifest.json").read_text())["derived"]["row_square"]
    assert entry["versions"] == info.versions


def test_findings_are_read_from_the_current_result_only(run):
    assert derived.findings(run, "row_square") is None  # nothing stored: nothing computed either
    assert derived.findings(run, "confidence_hist") is None  # declares no findings
    derived.get(run, "row_square", rows=[4, 1])
    found = derived.findings(run, "row_square")
    assert [c.key for c in found.cards] == ["squares"] and found.cards[0].rows.tolist() == [1, 4]
    assert found.columns["squared"].iloc[[1, 4]].tolist() == [1.0, 16.0]
    assert "row_square" in derived.all_findings(run)
    with pytest.raises(ValueError, match=r"Unknown filter type 'range'. The available types are \['min'"):
        Filter("squared", "x", "range", "x")


def test_a_kind_config_must_be_a_frozen_dataclass():
    @dataclass
    class Loose:
        bins: int = 4

    for bad in (Loose, dict):
        with pytest.raises(TypeError, match="config must be a frozen dataclass"):
            derived.register("loose", version=1, config=bad)
    assert "loose" not in derived.kinds()
