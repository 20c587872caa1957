"""Who may switch on loading a model that can run code: the person running the process, never the store.

A model that needs Python code to load (a Lambda layer) or that can run
arbitrary operations (a SavedModel) is loaded outside Keras safe mode only when
the process was told so by its operator:

- the command line's ``--unsafe-load`` (passed to the function as ``opt_in``);
- ``CLASSIFIER_TRUSTED_MODELS``: the path of a text file of SHA-256 hashes (one
  a line, ``#`` comments), kept outside the store, listing the model files the
  operator trusts. The hash compared is the one of the file on disk now
  (``core.model.load.file_sha256``), not the one a run's manifest records.

A run's manifest records whether it was analysed with the opt-in
(``model.unsafe_load``), for information only: anyone who can write to the
store, or who hands over a copied store, could set that field.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from core.errors import UserError

ENV_TRUSTED = "CLASSIFIER_TRUSTED_MODELS"
_SHA = re.compile(r"^[0-9a-f]{64}$")


def trusted_hashes(*, store_root: str | Path | None = None) -> frozenset[str]:
    """SHA-256 hashes listed in the file named by ``CLASSIFIER_TRUSTED_MODELS`` (empty without one).

    Raises UserError (one line, naming the file or the line) for a file that
    cannot be read, a line that is not a SHA-256, or a file inside ``store_root``
    (a list kept with the data it vouches for vouches for nothing).
    """
    name = os.environ.get(ENV_TRUSTED, "").strip()
    if not name:
        return frozenset()
    path = Path(name).expanduser().resolve()
    if store_root is not None:
        root = Path(store_root).resolve()
        if path == root or root in path.parents:
            raise UserError(f"{ENV_TRUSTED}={name!r} is inside the store {str(root)!r}; keep the list of "
                            "trusted model hashes outside the store")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{ENV_TRUSTED}={name!r} cannot be read: {exc}") from None
    hashes = set()
    for number, line in enumerate(text.splitlines(), start=1):
        value = line.split("#", 1)[0].strip().lower()
        if not value:
            continue
        value = value.split()[0]  # 'HASH  file-name', as sha256sum writes it
        if not _SHA.match(value):
            raise UserError(f"{ENV_TRUSTED}={name!r} line {number}: {value[:80]!r} is not a SHA-256 (64 hex digits)")
        hashes.add(value)
    return frozenset(hashes)


def unsafe_load_allowed(path: str | Path, *, opt_in: bool = False, store_root: str | Path | None = None) -> bool:
    """Whether the model at ``path`` may be loaded outside Keras safe mode in this process.

    True when the caller's operator opted in now (``opt_in``, the CLI's
    ``--unsafe-load``), or when the file's current SHA-256 is in the trusted
    list (``CLASSIFIER_TRUSTED_MODELS``). Nothing in a run's manifest counts.
    """
    if opt_in:
        return True
    trusted = trusted_hashes(store_root=store_root)
    if not trusted:
        return False
    from core.model.load import file_sha256

    return file_sha256(path) in trusted
