"""A read-only view of a folder for tests: a read-only bind mount when the tests run as root (root
ignores permission bits), else the folder with every write permission removed."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def read_only(folder: Path, mount_point: Path) -> Iterator[Path]:
    """``folder`` seen read-only: yields its read-only path (``mount_point`` when root). Skips the
    test when root cannot mount (no CAP_SYS_ADMIN)."""
    folder, mount_point = Path(folder), Path(mount_point)
    if os.geteuid() != 0:
        modes = {}
        for p in [folder, *folder.rglob("*")]:
            if not p.is_symlink():
                modes[p] = p.stat().st_mode
                p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        try:
            yield folder
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    mount_point.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(f"mount --bind '{folder}' '{mount_point}' && mount -o remount,ro,bind '{mount_point}'",
                          shell=True, capture_output=True, text=True)
    if done.returncode != 0:
        subprocess.run(["umount", str(mount_point)], capture_output=True)
        pytest.skip(f"cannot make a read-only bind mount as root: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        # lazy: a test process may still hold a file of the store open (memory-mapped arrays, SQLite)
        subprocess.run(["umount", "-l", str(mount_point)], check=True)
