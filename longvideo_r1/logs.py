"""Where log lines go: ``longvideo_r1.*`` loggers on stderr, in the driver and inside Ray actors.

Standard output carries results only (the CLI's JSON, tables, YAML); progress and library chatter
go to stderr. The level comes from the CLI (``-v`` / ``--log-level``), else ``LVR1_LOG_LEVEL``,
else INFO; the CLI exports the level it chose in ``LVR1_LOG_LEVEL`` so processes started after it
(a local Ray, its actors) inherit it.

Inside a Ray actor the ``longvideo_r1`` loggers have no handler (Ray leaves the root logger bare,
so only WARNING and above reach stderr, through logging's last-resort handler).
:func:`setup_worker_logging` gives them one on the actor's stderr, which Ray writes to its
``worker-*.err`` file and, when the driver asked for it (:func:`ray_log_to_driver`), forwards to
the driver's stderr: that is how actor logs reach ``ray job logs``.

This module sits in the bottom layer (beside :mod:`~longvideo_r1.errors`): actor code in every
room may call it.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

from longvideo_r1.errors import InputError

LEVEL_ENV = "LVR1_LOG_LEVEL"
"""environment variable holding the log level (a name such as DEBUG, or a number)"""
LOGGER = "longvideo_r1"
FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
DATE_FORMAT = "%H:%M:%S"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
JOB_ENV = ("RAY_JOB_CONFIG_JSON_ENV_VAR", "RAY_JOB_ID", "RAY_ADDRESS")
"""set in the driver of a Ray job (``ray job submit`` / ``lvr1 submit`` set the first and the last)"""


def resolve_level(level: str | int | None = None) -> int:
    """The numeric level of ``level`` (a name, any case, or a number); None: ``LVR1_LOG_LEVEL``, else INFO."""
    where = "log level"
    if level is None or (isinstance(level, str) and not level.strip()):
        level = os.environ.get(LEVEL_ENV, "").strip() or "INFO"
        where = f"{LEVEL_ENV}"
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    text = str(level).strip().upper()
    if text.lstrip("-").isdigit():
        return int(text)
    if text == "WARN":
        text = "WARNING"
    if text not in LEVELS:
        raise InputError(f"{where} {level!r}: use one of {', '.join(LEVELS)}")
    return getattr(logging, text)


def _our_handler(logger: logging.Logger) -> logging.Handler | None:
    return next((h for h in logger.handlers if getattr(h, "_lvr1", False)), None)


def _point(handler: logging.StreamHandler, stream: TextIO) -> None:
    """``handler.setStream(stream)`` that also copes with an old stream already closed (setStream
    flushes it first)."""
    try:
        handler.setStream(stream)
    except (ValueError, OSError):
        with handler.lock:
            handler.stream = stream


def setup_logging(level: str | int | None = None, stream: TextIO | None = None,
                  export: bool = False) -> logging.Logger:
    """Print the ``longvideo_r1.*`` loggers on ``stream`` (stderr) as ``time room LEVEL message``.

    Calling it again changes the level and the stream; it never adds a second handler. ``export``
    also writes the level to ``LVR1_LOG_LEVEL`` for processes started later (a local Ray's actors).
    Returns the ``longvideo_r1`` logger.
    """
    number = resolve_level(level)
    logger = logging.getLogger(LOGGER)
    handler = _our_handler(logger)
    if handler is None:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler._lvr1 = True
        handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
        logger.addHandler(handler)
    else:
        _point(handler, stream or sys.stderr)
    logger.setLevel(number)
    if export:
        os.environ[LEVEL_ENV] = logging.getLevelName(number) if logging.getLevelName(number) in LEVELS else str(number)
    return logger


def setup_worker_logging(level: str | int | None = None) -> logging.Logger:
    """Inside a Ray actor (or task): the ``longvideo_r1.*`` loggers print on the actor's stderr.

    Call it first thing in an actor's ``__init__``. The level is ``level``, else ``LVR1_LOG_LEVEL``
    of the actor's environment (pass :func:`worker_env` in its runtime env), else INFO. Lines do
    not propagate to the root logger, so a root handler installed by Ray or a library does not
    print them twice.
    """
    logger = setup_logging(level, sys.stderr)
    logger.propagate = False
    return logger


def worker_env(level: str | int | None = None) -> dict[str, str]:
    """``{"LVR1_LOG_LEVEL": NAME}`` for an actor's ``runtime_env["env_vars"]``: the driver's level."""
    number = resolve_level(level) if level is not None else logging.getLogger(LOGGER).getEffectiveLevel()
    name = logging.getLevelName(number)
    return {LEVEL_ENV: name if name in LEVELS else str(number)}


def in_ray_job() -> bool:
    """True in the driver of a submitted Ray job, or wherever ``RAY_ADDRESS`` points at a cluster."""
    return any(os.environ.get(name) for name in JOB_ENV)


def ray_log_to_driver(level: str | int | None = None) -> bool:
    """The ``log_to_driver`` argument of ``ray.init``: forward the actors' stdout and stderr to this
    process when it runs inside a Ray job (so they reach ``ray job logs`` / ``lvr1 submit``) or when
    the log level is DEBUG; otherwise actor output stays in Ray's log files
    (``/tmp/ray/session_latest/logs/worker-*``), keeping a local run's terminal readable."""
    if in_ray_job():
        return True
    number = resolve_level(level) if level is not None else logging.getLogger(LOGGER).getEffectiveLevel()
    return number <= logging.DEBUG


def send_library_logs_to_stderr(stdout: TextIO) -> int:
    """Repoint every logging handler that writes to ``stdout`` (DeepSpeed's and vLLM's loggers
    print on stdout) at stderr; returns how many were moved."""
    moved = 0
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                        if isinstance(lg, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is stdout:
                _point(handler, sys.stderr)
                moved += 1
    return moved


__all__ = ["LEVEL_ENV", "resolve_level", "setup_logging", "setup_worker_logging", "worker_env", "in_ray_job",
           "ray_log_to_driver", "send_library_logs_to_stderr"]
