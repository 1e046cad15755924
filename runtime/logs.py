"""The server's logs: ``text`` (``time level logger: message``) or ``json`` (one object per line:
``time``, ``level``, ``logger``, ``message`` and, for access lines, their fields), and the access
log (logger ``inferstack.access``, off unless ``--access-log`` / ``INFERSTACK_ACCESS_LOG``): one
line per answered request with ``method``, ``path``, ``model`` (``-`` when none), ``status``,
``bytes`` (the answer's body), ``duration_ms`` (from the request read to its answer written) and,
for a 4xx or 5xx, ``reason`` (the error message the client got).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from inferstack.runtime.config import ServerConfig

ACCESS_LOGGER = "inferstack.access"
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
access_log = logging.getLogger(ACCESS_LOGGER)


class JSONFormatter(logging.Formatter):
    """One JSON object per record; an access record's fields (``record.access``) are merged in."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "access", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def setup_logging(config: ServerConfig) -> None:
    """Configure the root logger from ``--log-level`` and ``--log-format``, unless it has handlers
    already (as :func:`logging.basicConfig`: a host process, e.g. a test runner, keeps its own)."""
    # the access log is at INFO: on with --access-log whatever --log-level says
    access_log.setLevel(logging.INFO if config.access_log else logging.CRITICAL + 1)
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    if config.log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(config.log_level.upper())


def log_access(method: str, path: str, model: str, status: int, size: int, duration_s: float,
               reason: str | None) -> None:
    """Write one access line (text: ``METHOD PATH model=M status=S bytes=B duration_ms=D``)."""
    fields: dict[str, Any] = {"method": method, "path": path, "model": model, "status": status,
                              "bytes": size, "duration_ms": round(duration_s * 1000, 3)}
    text = (f"{method} {path} model={model} status={status} bytes={size} "
            f"duration_ms={fields['duration_ms']}")
    if reason is not None:
        fields["reason"] = reason
        text += f" reason={orjson.dumps(reason).decode()}"
    access_log.info(text, extra={"access": fields})
