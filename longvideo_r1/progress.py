"""Progress bars of the long stages (SFT and RL steps)."""

from __future__ import annotations


def progress_bar(total: int, done: int, what: str):
    """A tqdm bar on stderr for an interactive terminal (log lines carry the same figures otherwise)."""
    import sys

    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=what, unit="step", file=sys.stderr, leave=False,
                disable=not sys.stderr.isatty())
