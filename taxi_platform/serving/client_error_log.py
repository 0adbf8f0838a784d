"""The fare service's log of rejected requests: one INFO line per client mistake, tracebacks for server errors."""

from __future__ import annotations

import logging

from bentoml.exceptions import BentoMLException
from pydantic import ValidationError
from starlette.requests import ClientDisconnect


class ClientErrorLogFilter(logging.Filter):
    """BentoML logs every rejected request as an ERROR with a traceback. A 4xx is the caller's mistake, already
    explained in the response: log one INFO line instead (tracebacks stay for real server errors). So is a client
    that disconnects before its body is read (or is disconnected by the body deadline): nothing to answer."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
        if isinstance(exc, ClientDisconnect):
            record.msg = str(record.msg).replace("Exception on", "Client disconnected during", 1)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
            return True
        if isinstance(exc, ValidationError) or (
            isinstance(exc, BentoMLException) and int(exc.error_code) < 500
        ):
            summary = (
                f"{exc.error_count()} validation error(s)" if isinstance(exc, ValidationError) else str(exc)
            )
            record.msg = str(record.msg).replace("Exception on", "Rejected", 1) + f": {summary[:200]}"
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True
