"""The ids of a fare-service request: the server's quote id and the client's ``X-Request-ID``."""

from __future__ import annotations

from itertools import count
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import bentoml


def request_ids(ctx: bentoml.Context, ids: count, prefix: str) -> tuple[str, str | None]:
    """``(server id, client id)``. The server's id names the request's quotes in the prediction log (unique:
    a random per-worker prefix and a counter) and is answered as ``X-Quote-ID``; the client's ``X-Request-ID``
    (at most 128 printable characters, else ignored) is logged as ``client_request_id`` and echoed as
    ``X-Request-ID`` (the server's id when the client sent none), never used to identify a quote."""
    server = f"{prefix}-{next(ids)}"
    given = ctx.request.headers.get("x-request-id")
    client = given if given and len(given) <= 128 and given.isprintable() else None
    ctx.response.headers["X-Quote-ID"] = server
    ctx.response.headers["X-Request-ID"] = client or server
    return server, client
