"""Derived results computed after a run is usable: in this process, or in a background process.

Any derived kind (``core.run.derived``) can be computed this way; the UMAP map
(``core.analysis.projection``) is, so that a run opens before its map is ready. While a
process computes kind ``K`` of a run it holds an ``flock`` on the run's
``.K.lock``: the kernel releases it when the process ends, so 'computing' never
outlives a killed process. It writes what it is doing to ``.K-progress.json``
(at most twice a second) and its output to ``.K.log``.

``status`` says 'ready', 'computing', 'missing' or 'unavailable' (the kind
says the run cannot have it: ``DerivedKind.unavailable``); ``ensure`` computes
or starts it; ``start`` starts the background process
(``python -m core.run.jobs RUN_FOLDER KIND``); ``progress`` reads its report.
Nothing here imports TensorFlow or umap.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from core.errors import UserError, first_line
from core.progress import Progress, say_function
from core.run import derived
from core.run.store import Run, RunCorruptError, RunNotFoundError, read_manifest, try_flock

REPO_ROOT = Path(__file__).resolve().parents[2]


def lock_file(run: Run, name: str) -> Path:
    return run.path / f".{name}.lock"


def progress_file(run: Run, name: str) -> Path:
    return run.path / f".{name}-progress.json"


def log_file(run: Run, name: str) -> Path:
    return run.path / f".{name}.log"


def fresh(run: Run) -> Run:
    """``run`` with its manifest as on disk now (another process may have added a derived result)."""
    try:
        manifest = read_manifest(run.path)
    except (RunNotFoundError, RunCorruptError):
        return run
    if manifest == run.manifest:
        return run
    again = copy.copy(run)  # shares the cached tables and arrays, which a derived result never changes
    again.manifest = manifest
    return again


def stored_state(run: Run, name: str) -> str | None:
    """'ready' or 'unavailable' as the files and the manifest on disk say now; None when neither."""
    k = derived.kind(name)
    if k.ready is not None and k.ready(run):  # e.g. a map stored before maps were derived
        return "ready"
    if k.unavailable is not None and k.unavailable(run) is not None:
        return "unavailable"
    now = fresh(run)
    if derived.status(now, name) == "current":
        info = now.derived_info(name)
        return "unavailable" if info.summary.get("reason") and not info.files else "ready"
    return None


def status(run: Run, name: str) -> str:
    """'ready', 'computing' (a live process holds the run's lock for ``name``), 'missing' or
    'unavailable' (the run cannot have it; the kind or the stored summary's 'reason' says why)."""
    held = lock_is_held(run, name)  # checked before the manifest: a writer commits, then releases
    return stored_state(run, name) or ("computing" if held else "missing")


def reason(run: Run, name: str) -> str | None:
    """Why ``name`` is unavailable for ``run`` (None when it is not)."""
    k = derived.kind(name)
    why = k.unavailable(run) if k.unavailable is not None else None
    if why is None:
        info = fresh(run).derived_info(name)
        why = info.summary.get("reason") if info is not None else None
    return why


def progress(run: Run, name: str) -> dict | None:
    """What the process computing ``name`` last reported: {'message', 'fraction', 'error', 'time'}, or None."""
    try:
        data = json.loads(progress_file(run, name).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _open_lock(run: Run, name: str) -> int | None:
    """The lock file opened for a blocking flock, or None in a read-only store."""
    try:
        return os.open(lock_file(run, name), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None


def try_lock(run: Run, name: str) -> int | None:
    """An fd holding the lock of ``name``, or None when another process holds it (or the store is
    read-only: nobody can be computing into it)."""
    try:
        return try_flock(lock_file(run, name))
    except OSError:
        return None


def lock_is_held(run: Run, name: str) -> bool:
    """True while a live process holds the lock of ``name`` (a read-only open suffices to test)."""
    try:
        fd = os.open(lock_file(run, name), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing also releases the lock taken for the test
    return False


def ensure(run: Run, name: str, *, background: bool = False, progress: bool | Progress = True,
           start_at: float = 0.0) -> Run:
    """Make sure ``run`` gets ``name``: compute it now, or start a background process.

    Does nothing when it is ready or unavailable, and (with ``background``)
    when another process is computing it; in the foreground it waits for
    that process, then computes only what is still missing. Returns the run
    with its manifest updated. ``progress`` runs from ``start_at`` to 1.0.
    """
    say = say_function(progress)
    label = derived.kind(name).description or name
    state = status(run, name)
    if state in ("ready", "unavailable"):
        say(_done_message(run, name, state), 1.0)
        return fresh(run)
    if background:
        if state == "missing":
            start(run, name)
        say(f"Run {run.id!r}: {label} is being computed in the background", 1.0)
        return run
    fd = _open_lock(run, name)
    if fd is None:
        raise UserError(f"Cannot store {label} in run {run.id!r}: {run.path} is read-only")
    try:
        if state == "computing":
            say(f"Waiting for the {label} another process is computing", start_at)
        fcntl.flock(fd, fcntl.LOCK_EX)
        now = fresh(run)
        if stored_state(now, name) is None:  # still missing now that we hold the lock
            compute_holding_lock(now, name, progress, start_at=start_at)
    finally:
        os.close(fd)
    now = fresh(run)
    say(_done_message(now, name, status(now, name)), 1.0)
    return now


def _done_message(run: Run, name: str, state: str) -> str:
    label = derived.kind(name).description or name
    if state == "ready":
        return f"Run {run.id!r}: {label} ready"
    return f"Run {run.id!r}: no {label} ({reason(run, name) or 'not asked for'})"


def compute_holding_lock(run: Run, name: str, progress: bool | Progress, *, start_at: float = 0.0) -> None:
    """Compute and store ``name`` (the caller holds its lock); progress also goes to the progress file."""
    say = say_function(progress)
    file = progress_file(run, name)
    written, said = [0.0], [0.0, ""]

    def report(message: str, fraction: float) -> None:
        # a kind may report every epoch or row block: the file at most twice a second; the caller at
        # each new step (the text before ':') and otherwise every 2 s, so that a log gets lines, not
        # one line per epoch
        now, step = time.monotonic(), message.split(":", 1)[0]
        if step != said[1] or now - said[0] >= 2.0 or fraction >= 1.0:
            said[0], said[1] = now, step
            say(message, start_at + (1.0 - start_at) * fraction)
        if now - written[0] >= 0.5 or fraction >= 1.0:
            written[0] = now
            _write_progress(file, message=message, fraction=fraction)

    try:
        derived.get(run, name, progress=report)
    except BaseException as exc:
        _write_progress(file, message=f"{name} could not be computed", fraction=None,
                        error=f"{type(exc).__name__}: {first_line(exc)}")
        raise
    file.unlink(missing_ok=True)


def _write_progress(file: Path, *, message: str, fraction: float | None, error: str | None = None) -> None:
    tmp = file.with_name(f"{file.name}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps({"message": message, "fraction": fraction, "error": error, "time": time.time()}))
        os.replace(tmp, file)
    except OSError:
        pass  # a read-only or full disk: the report is a courtesy, the result is what counts


def start(run: Run, name: str) -> subprocess.Popen | None:
    """Start ``python -m core.run.jobs`` computing ``name`` for ``run``; None if a process already is.

    The lock is taken here and handed to the child (an inherited descriptor
    of the same open file), so the run reads 'computing' from this call on,
    and until the child ends however it ends. The child runs in its own
    session (Ctrl-C in the terminal that started it does not cut it short)
    and writes its output to the run's ``.<name>.log``.
    """
    derived.kind(name)  # an unknown kind fails here, not in the child
    fd = try_lock(run, name)
    if fd is None:
        return None
    try:
        with open(log_file(run, name), "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "core.run.jobs", str(run.path), name, "--lock-fd", str(fd)],
                cwd=REPO_ROOT, pass_fds=(fd,), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
    finally:
        os.close(fd)  # the child's copy keeps the lock


def main(argv: list[str] | None = None) -> int:
    """``python -m core.run.jobs RUN_FOLDER KIND [--background]``: compute one derived result of a run (or
    start a background process computing it)."""
    import argparse

    from core.quiet import quiet_start

    quiet_start()
    parser = argparse.ArgumentParser(prog="python -m core.run.jobs", description=main.__doc__)
    parser.add_argument("run_folder", help="the run's folder (its version folder or the store's link)")
    parser.add_argument("kind", help="the derived kind, e.g. projection")
    parser.add_argument("--background", action="store_true", help="start a background process if it is missing")
    parser.add_argument("--lock-fd", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        run = Run(Path(args.run_folder))
        if args.lock_fd is None:
            ensure(run, args.kind, background=args.background, progress=True)
        else:
            try:
                if stored_state(run, args.kind) is None:
                    compute_holding_lock(run, args.kind, True)
            finally:
                os.close(args.lock_fd)
    except KeyboardInterrupt:
        return 130
    except (UserError, OSError) as exc:  # this process's boundary, like the CLI's
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
