"""The site's own log (`logs/site.log`): size-rotated, as text or JSON lines.

`site.yaml` says how (`log_format`, `log_max_mb`, `log_keep`). syft's and uvicorn's
output (`logs/server.log`, the process's stdout and stderr) cannot be rotated under a
running process by Python's handlers; it is rotated at each start instead
(`rotate_at_start`). Must never log a secret: the records are medsyft's own, written
without secrets by construction.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.handlers
from pathlib import Path

from sites.operator.config import SiteConfig

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonLines(logging.Formatter):
    """One JSON object per record: at (UTC, ISO 8601), level, logger, message[, error]."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"at": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
                "level": record.levelname, "logger": record.name,
                "message": record.getMessage()}
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def handler(log_file: Path, cfg: SiteConfig) -> logging.Handler:
    """A size-rotating handler for `log_file`, formatted as site.yaml says."""
    h = logging.handlers.RotatingFileHandler(
        log_file, maxBytes=cfg.log_max_mb * 1024 * 1024, backupCount=cfg.log_keep,
        encoding="utf-8")
    h.setFormatter(JsonLines() if cfg.log_format == "json" else
                   logging.Formatter(TEXT_FORMAT))
    return h


def rotate_at_start(log_file: Path, cfg: SiteConfig) -> bool:
    """Rotate `log_file` (.1 … .N, the oldest dropped) if it reached log_max_mb."""
    try:
        size = log_file.stat().st_size
    except FileNotFoundError:
        return False
    if size < cfg.log_max_mb * 1024 * 1024:
        return False
    for i in range(cfg.log_keep - 1, 0, -1):
        older = log_file.with_name(f"{log_file.name}.{i}")
        if older.exists():
            older.replace(log_file.with_name(f"{log_file.name}.{i + 1}"))
    log_file.replace(log_file.with_name(f"{log_file.name}.1"))
    return True
