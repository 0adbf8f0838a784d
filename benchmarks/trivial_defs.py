"""One asset that does nothing: the cost of a Dagster run itself (process start, ``import dagster``, the instance,
the event log), for ``bench_steps.py``'s run-start figures beside the platform's own definitions."""

import dagster as dg


@dg.asset
def noop() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"dagster/row_count": 0})


defs = dg.Definitions(assets=[noop], executor=dg.in_process_executor)
