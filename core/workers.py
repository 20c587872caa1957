"""Worker processes for loops that are mostly Python between small OpenCV calls (the image scan, the duplicates'
verification): threads run such Python one at a time (the GIL), processes side by side.

joblib's loky backend: fresh interpreters (the caller's ``__main__`` is not run again, so a user's script without a
main guard is safe), kept between calls for ``IDLE_SECONDS`` (the scan's workers verify the duplicates' pairs
next), a large array sent to them once, memory-mapped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool

POOL_FAILURES = (OSError, BrokenProcessPool)  # worker processes that cannot start or die (loky's errors subclass it)
IDLE_SECONDS = 30  # workers not needed again this soon leave, with their memory


def cores(limit: int = 4) -> int:
    """Worker processes to start: the cores this process may use (joblib counts a container's CPU quota and its
    affinity; 1 where worker processes cannot run, no semaphores), at most ``limit``."""
    from joblib import cpu_count

    return max(1, min(limit, cpu_count()))


def in_processes(fn: Callable, tasks: Iterable[tuple], n_workers: int, **kwargs) -> Iterator:
    """``fn(*task, **kwargs)`` of each task in ``n_workers`` processes, the results in the tasks' order as they
    come. ``fn`` must be importable (a module's top-level function). Raises one of ``POOL_FAILURES`` where the
    processes cannot start or one dies: the caller falls back to threads."""
    from joblib import Parallel, delayed

    run = Parallel(n_jobs=n_workers, backend="loky", return_as="generator", batch_size=1, max_nbytes="1M",
                   idle_worker_timeout=IDLE_SECONDS)
    yield from run(delayed(fn)(*task, **kwargs) for task in tasks)
