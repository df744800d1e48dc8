"""Logging setup of the `meshfs` processes: stderr, with levels, journald-aware.

Owns: the handler and format of the "meshfs" logger tree. Must not import anything else from meshfs.

Under systemd (stderr connected to the journal, `$JOURNAL_STREAM` matching it) each line is
prefixed with the syslog priority `<N>` so journald records the level, and carries no timestamp
(the journal has its own). Otherwise lines look like
`2026-11-25 15:04:01.123 WARNING meshfs.vfs: write /home/a.txt: quota exceeded`.
Messages are kept to one line: embedded newlines are escaped, so a log line can never be forged
by a file name and a traceback stays one record.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Final, TextIO

LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                 "error": logging.ERROR}  # fmt: skip

_SYSLOG_PRIORITY: Final = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def stderr_is_journal(stream: TextIO | None = None) -> bool:
    """True when `stream` (stderr) is the journald stream systemd gave us ($JOURNAL_STREAM=dev:ino)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    stream = stream or sys.stderr
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class _OneLineFormatter(logging.Formatter):
    def __init__(self, journal: bool) -> None:
        fmt = (
            "%(name)s: %(message)s"
            if journal
            else "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s"
        )
        super().__init__(fmt, datefmt="%Y-%m-%d %H:%M:%S")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\r", "\\r").replace("\n", "\\n")
        if self.journal:
            return f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>{text}"
        return text


def setup_logging(level: str | int = "info", stream: TextIO | None = None) -> logging.Logger:
    """Send the "meshfs" logger tree to `stream` (stderr) at `level`; idempotent."""
    stream = stream or sys.stderr
    if isinstance(level, str):
        try:
            level = LEVELS[level.lower()]
        except KeyError:
            raise ValueError(f"log level {level!r}: expected one of {', '.join(LEVELS)}") from None
    logger = logging.getLogger("meshfs")
    for handler in list(logger.handlers):
        if getattr(handler, "_meshfs", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_OneLineFormatter(stderr_is_journal(stream)))
    handler._meshfs = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger
