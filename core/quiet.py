"""Quiet start: no TensorFlow start-up chatter in what the commands and the dashboard print.

``quiet_start()`` is called first thing by the CLI, the background map
process and the dashboard, before anything imports TensorFlow. It

* sets ``TF_CPP_MIN_LOG_LEVEL=2`` (TensorFlow's C++ INFO and WARNING lines),
  unless the user set it;
* filters what TensorFlow's import writes to the process' standard error:
  with TensorFlow 2.21 two lines survive any log level, "WARNING: All log
  messages before absl::InitializeLog() is called are written to STDERR" and
  "I0000 ... port.cc:153] oneDNN custom operations are on ..." (each printed
  twice), and a GPU build on a machine without a GPU adds CUDA probing errors
  (``cuInit``, cuDNN/cuFFT/cuBLAS factory registration). Only those lines are
  dropped, only while ``import tensorflow`` runs; anything else it prints (a
  real error) is passed on. The alternative, ``TF_ENABLE_ONEDNN_OPTS=0``,
  also silences the oneDNN line but switches off oneDNN's kernels, which the
  bfloat16 training and the analysis rely on for speed.

Nothing here imports TensorFlow: the filter waits for the first import.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from contextlib import contextmanager

# What TensorFlow's import prints that is never worth showing (C++ log lines: level letter, date, time,
# thread, file:line).
TENSORFLOW_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWE]\d{4} [\d:.]+ +\d+ (port|cpu_feature_guard|cuda_\w+|gpu_\w+)\.cc:\d+\] .*"
    r"|To enable the following instructions: .* in other operations, rebuild TensorFlow .*)$"
)


def quiet_start() -> None:
    """Set TensorFlow's and OpenCV's log levels and filter TensorFlow's import noise (idempotent; a
    user's setting is kept). OpenCV at ERROR: a truncated file is a recorded skip with its reason, not
    also a "[ WARN:0@2.591] global grfmt_png.cpp:793 ... PNG input buffer is incomplete" line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # read when OpenCV first logs
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def filter_noise(text: str) -> str:
    """``text`` without the lines that match ``TENSORFLOW_NOISE``.

    >>> filter_noise("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n"
    ...              "real problem\\n")
    'real problem\\n'
    """
    return "".join(line for line in text.splitlines(keepends=True) if not TENSORFLOW_NOISE.match(line.rstrip("\n")))


@contextmanager
def _stderr_filtered():
    """Send file descriptor 2 to a temporary file, then pass on what is not noise."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (e.g. closed): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = filter_noise(captured.read().decode("utf-8", "replace"))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Runs the first ``import tensorflow`` inside ``_stderr_filtered`` (then steps aside)."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once, and so that the lookup below does not come back here
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _FilteringLoader(spec.loader)
        return spec


class _FilteringLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self.loader  # what TensorFlow's own code may look at afterwards
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        with _stderr_filtered():
            self.loader.exec_module(module)

    def __getattr__(self, name):  # get_resource_reader, is_package, ...
        return getattr(self.loader, name)
