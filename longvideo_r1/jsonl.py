"""Append-only JSON-lines files that survive a crash: the bytes up to the last whole record."""

from __future__ import annotations

import json
from pathlib import Path


def complete_lines(path: str | Path, repair: bool = False) -> bytes:
    """The content of ``path`` without a half-written last line (a crash mid-write).

    A last line without its newline that still parses as JSON is kept (and given its newline);
    ``repair`` writes the result back so later appends start on a fresh line.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        keep = raw[: raw.rfind(b"\n") + 1]
        try:
            json.loads(raw[len(keep):])
            keep = raw + b"\n"
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
        if repair:
            path.write_bytes(keep)
        raw = keep
    return raw

