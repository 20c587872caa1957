"""Any derived kind can be computed after the run, in a background process (core.run.jobs), the way the
UMAP map is: 'missing', then 'computing' while the process holds the lock, then 'ready'."""

from __future__ import annotations

import fcntl
import os

import pytest

from core.errors import UserError
from core.run import derived, jobs
from core.run.store import RunStore
from core.run.synthetic import make_synthetic_run


@pytest.fixture
def run(tmp_path):
    return make_synthetic_run(RunStore(tmp_path), "r", n=300, with_images=False, history=False)


def test_a_diagnosis_computed_in_a_background_process(run):
    assert jobs.status(run, "calibration") == "missing"
    child = jobs.start(run, "calibration")
    assert child is not None
    assert jobs.start(run, "calibration") is None or jobs.status(run, "calibration") == "ready"
    assert child.wait(timeout=240) == 0, jobs.log_file(run, "calibration").read_text()
    assert jobs.status(run, "calibration") == "ready"
    assert derived.get(jobs.fresh(run), "calibration", compute=False) is not None
    assert not jobs.progress_file(run, "calibration").exists()  # removed once stored


def test_computing_while_another_process_holds_the_lock(run):
    fd = os.open(jobs.lock_file(run, "calibration"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert jobs.status(run, "calibration") == "computing"
        assert jobs.start(run, "calibration") is None  # nobody starts a second one
        jobs.ensure(run, "calibration", background=True, progress=False)  # returns at once
        assert jobs.status(run, "calibration") == "computing"
    finally:
        os.close(fd)
    assert jobs.status(run, "calibration") == "missing"  # the lock died with its holder
    ready = jobs.ensure(run, "calibration", progress=False)
    assert jobs.status(ready, "calibration") == "ready"


@derived.register("needs_pixels", version=1, unavailable=lambda run: "the run has no images",
                  description="a kind this run cannot have (a test kind)")
def _needs_pixels(run, config, progress):
    raise AssertionError("never computed: the kind is unavailable")


def test_an_unavailable_kind_says_why_and_is_never_computed(run):
    assert jobs.status(run, "needs_pixels") == "unavailable"
    assert jobs.reason(run, "needs_pixels") == "the run has no images"
    said = []
    jobs.ensure(run, "needs_pixels", progress=lambda m, f: said.append(m))
    assert said == ["Run 'r': no a kind this run cannot have (a test kind) (the run has no images)"]


def test_an_unknown_kind_fails_before_a_process_starts(run):
    with pytest.raises(UserError, match=r"Unknown derived analysis 'nope'"):
        jobs.start(run, "nope")
