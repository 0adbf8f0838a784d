"""Single fare quotes that arrive in the same event-loop turn, priced together in one model call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from taxi_platform.serving.quotes import Quote


class QuoteBatcher:
    """Prices single quotes that arrive in the same event-loop turn with one model call.

    ``submit`` queues a quote and, if no flush is pending, schedules one with ``loop.call_soon``: it runs after
    the requests already in the loop's ready queue have been parsed and queued their quotes. An idle server
    prices a lone quote right away; a busy one prices several per call.
    """

    def __init__(self, price: Callable[[list[Quote]], np.ndarray], max_size: int = 64) -> None:
        self.price = price
        self.max_size = max_size
        self._quotes: list[Quote] = []
        self._futures: list[asyncio.Future] = []
        self._scheduled = False

    def submit(self, quote: Quote) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._quotes.append(quote)
        self._futures.append(future)
        if len(self._quotes) >= self.max_size:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        quotes, futures = self._quotes, self._futures
        if not quotes:
            return
        self._quotes, self._futures = [], []
        try:
            fares = self.price(quotes)
        except Exception as exc:  # every waiting request gets the error
            for f in futures:
                if not f.done():
                    f.set_exception(exc)
            return
        for f, fare in zip(futures, fares, strict=True):
            if not f.done():
                f.set_result(fare)
