"""CSV files handed to people: written atomically, their free-text cells made safe for spreadsheets."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd


def write_csv_atomic(table: pd.DataFrame, out: Path) -> None:
    """Write ``table`` to ``out`` as CSV: a temporary file beside it, flushed to disk, then renamed over it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            table.to_csv(fh, index=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


FREE_TEXT_COLUMNS = ("note", "reviewer")


_INVISIBLE_LEAD = r"^[\s\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]+"  # white space, zero-width, bidi marks


def spreadsheet_safe(table: pd.DataFrame, columns: tuple[str, ...] = FREE_TEXT_COLUMNS) -> pd.DataFrame:
    """``table`` with the free text of ``columns`` that a spreadsheet would run as a formula (a cell
    starting with = + - @, a tab or a carriage return) prefixed with an apostrophe, OWASP's advice
    against CSV injection. Only free text: paths and labels are read back by ``read_corrections``.

    >>> spreadsheet_safe(pd.DataFrame({"note": ["=1+2", "blurry", "-2 px", " =1", "\\xa0@x"]}))["note"].tolist()
    ["'=1+2", 'blurry', "'-2 px", "' =1", "'\\xa0@x"]
    """
    out = table.copy()
    for column in columns:
        if column in out:
            text = out[column].fillna("").astype(str)
            # spreadsheets skip leading spaces (NBSP included) and invisible characters before a formula
            bare = text.str.replace(_INVISIBLE_LEAD, "", regex=True)
            out[column] = np.where(text.str.startswith(FORMULA_STARTS) | bare.str.startswith(FORMULA_STARTS),
                                   "'" + text, text)
    return out


def corrections_csv(corrections: pd.DataFrame) -> bytes:
    """``RunReview.corrections()`` as the CSV bytes ``write_corrections`` writes (the dashboard's export)."""
    return spreadsheet_safe(corrections).to_csv(index=False).encode("utf-8")
