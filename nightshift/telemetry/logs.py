"""Structured logs for nightshift's own loggers: one JSON object per line, or plain text.

Every record carries the batch it belongs to (``batch_id``, ``flow_run_id``, ``shard`` when
known) from a context set where the work starts (``log_context``), so a log pipeline can follow one
batch across the flow, its watch thread and the CLI without parsing messages.

Prefect's own run logs are left alone: ``prefect.*`` loggers keep Prefect's handlers (console and
the API handler that feeds the UI). nightshift's loggers stop propagating to the root logger (so a
line is not printed twice, once by Prefect's console handler) and are listed in
``PREFECT_LOGGING_EXTRA_LOGGERS`` by the deployments, which gives them Prefect's API handler too:
inside a flow run they also appear in the run's logs in the UI.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO

from pythonjsonlogger.json import JsonFormatter

from nightshift.settings import LogConfig

#: Loggers nightshift owns (module loggers under these names).
LOGGERS = ("nightshift", "flows", "tasks", "blocks", "deployments")
#: The fields every record may carry, in this order in the text format.
CONTEXT_FIELDS = ("batch_id", "flow_run_id", "shard")

_context: ContextVar[dict[str, str]] = ContextVar("nightshift_log_context", default={})  # noqa: B039 - never mutated


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Add ``fields`` (None values are skipped) to every record logged inside the block, in
    this thread and in threads started from a copy of its context."""
    token = _context.set({**_context.get(), **{k: str(v) for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the current log context onto each record (explicit ``extra=`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class _TextFormatter(logging.Formatter):
    """``time level logger [batch_id=… shard=…] message``."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        tags = " ".join(f"{k}={getattr(record, k)}" for k in CONTEXT_FIELDS if hasattr(record, k))
        return line.replace(" | ", f" | [{tags}] ", 1) if tags else line


class _Handler(logging.StreamHandler):
    """Marks the handler ``configure_logging`` installed, so a second call replaces it."""

    def __init__(self, stream: IO[str], *, owns_stream: bool) -> None:
        super().__init__(stream)
        self.owns_stream = owns_stream

    def close(self) -> None:
        super().close()
        if self.owns_stream:
            self.owns_stream = False
            self.stream.close()


def build_formatter(config: LogConfig) -> logging.Formatter:
    """The JSON or text formatter ``config`` asks for."""
    if config.format == "json":
        return JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )
    return _TextFormatter("%(asctime)s %(levelname)s %(name)s | %(message)s")


def configure_logging(config: LogConfig, stream: IO[str] | None = None) -> None:
    """Send nightshift's loggers to ``stream`` (else ``config.file``, else stderr) in
    ``config.format``; a second call replaces the first's handler."""
    owns = stream is None and config.file is not None
    if stream is None and config.file is not None:
        config.file.parent.mkdir(parents=True, exist_ok=True)
        stream = open(config.file, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - the handler closes it
    handler = _Handler(stream or sys.stderr, owns_stream=owns)
    handler.setFormatter(build_formatter(config))
    handler.addFilter(ContextFilter())
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _Handler)]:
            logger.removeHandler(old)
            old.close()
        logger.addHandler(handler)
        logger.setLevel(config.level)
        logger.propagate = False
