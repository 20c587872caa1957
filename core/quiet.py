"""Quiet start: no TensorFlow start-up chatter in what the commands and the dashboard print.

``quiet_start()`` is called first thing by the CLI and the dashboard, before
anything imports TensorFlow: the variables it sets are read when TensorFlow
loads.
"""

from __future__ import annotations

import os


def quiet_start() -> None:
    """Set TensorFlow's logging variables (a value the user set is kept)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
