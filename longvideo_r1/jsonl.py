"""JSON-lines files: reading them line by line with clear errors, and surviving a crash mid-write."""

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



def json_lines(text: str, where: str, fix: str):
    """``(line number, value)`` of every non-blank line of ``text``; a line that is not JSON is an
    :class:`~longvideo_r1.errors.InputError` naming ``where`` and the line, with the advice ``fix``."""
    from longvideo_r1.errors import InputError

    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where} line {n}: not valid JSON ({exc.msg}); {fix}") from None
