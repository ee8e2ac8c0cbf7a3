"""How jobkit's own processes log: text for people, or one JSON object per line for log shippers.

`jobkit worker`, `jobkit cron` and `jobkit dev` call `configure_logging` with
`JOBKIT_LOG_FORMAT` (`text`, the default, or `json`) unless the application configured
logging already. `JsonFormatter` writes a record's message and level, its logger and time,
and every attribute given through `extra=` as a key of its own: the job outcome lines of
`jobkit.jobs` carry their job id, name, queue, engine, attempt, outcome, duration and error
that way, so a formatter of the user's own that writes extra attributes gets them too.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any, Literal

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# What every record has: anything else on a record came through `extra=`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: `time` (UTC, ISO 8601), `level`, `logger`,
    `message`, the record's extra attributes, and `exc_info` (the traceback) if any."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            data["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(data, default=str, ensure_ascii=False)


def configure_logging(log_format: LogFormat = "text", *, stream: IO[str] | None = None) -> None:
    """Log INFO and above to `stream` (stderr) as `log_format` says, unless the root logger
    has handlers already: an application's own logging configuration wins."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root.addHandler(handler)
    root.setLevel(logging.INFO)
