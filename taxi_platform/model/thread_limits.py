"""How many OpenMP threads fitting and predicting use: one for small data, else all (or what the config says).

scikit-learn (through the training code) is imported inside the functions, so importing this module stays light.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


def small_data_threads(threads: int | None, rows: int) -> int | None:
    """OpenMP threads for ``rows`` rows: ``threads`` if set, else one below ``SMALL_FIT_ROWS``, else all (None).

    The rule the training code applies to fitting, extended to predicting: a tree ensemble's predict opens one
    parallel region per tree, and on a busy 2-core machine a second thread spinning at each one turns a 0.1 s
    predict of a sample month into 1-2 s. Above the threshold nothing changes.
    """
    from taxi_platform.model.training import SMALL_FIT_ROWS

    return threads or (1 if rows < SMALL_FIT_ROWS else None)


@contextmanager
def openmp_threads(threads: int | None) -> Iterator[None]:
    """Limit OpenMP to ``threads`` inside the block (None: leave it alone).

    scikit-learn is imported first: threadpoolctl only limits OpenMP runtimes already loaded.
    """
    if threads is None:
        yield
        return
    import sklearn.ensemble  # noqa: F401  (loads the OpenMP runtime the limit applies to)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads, user_api="openmp"):
        yield
