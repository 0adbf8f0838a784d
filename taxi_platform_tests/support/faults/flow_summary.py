"""What a fault matrix flow's data dir holds, and how it differs from the fault-free reference's.

:func:`summarize` reduces a data dir to what must be equal, :func:`compare` lists what is not:

* the lake: raw files byte for byte (sha256), every cleaned_trips / trip_features partition's rows (count and a
  digest of the sorted rows), every drift report's figures (report.json without paths, times and run ids);
* the registry: every version of ``taxi_fare_model`` as (validation month, training months, validation MAE,
  family, failed checks, promoted, gate reason) -- as a multiset, so an extra version left by a killed run counts;
* the champion: its validation and training months, its MLflow run's params (training, validation and window
  row counts among them) and every metric but wall times, and the fares and ranges it quotes for fixed probe
  quotes.

Strings and integers must be equal; floats within :data:`REL_TOL` relative, a margin for arithmetic that is
not bit-reproducible across processes (the training sample's rows come in the same order wherever they were
written: ``core.sql.hashed_rows`` hashes their content; when it hashed their place in the file, a rebuild that
wrote them in another order moved the linear family's metrics by ~1e-8 and, once, past the margin). Version numbers in the registry
are not compared (allocation order), nor MLflow run ids or wall times.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from taxi_platform_tests.support.faults.flow_setup import HISTORY, MONTHS, PROBE_QUOTES, SERVICES


# -- what a data dir holds (the comparison) -------------------------------------------------------------
def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _rows_digest(files: list[str]) -> dict[str, Any]:
    import duckdb

    con = duckdb.connect()
    try:
        (count, digest) = con.execute(
            "SELECT count(*), md5(string_agg(r, '|' ORDER BY r)) "
            "FROM (SELECT CAST(t AS VARCHAR) AS r FROM read_parquet(?, union_by_name=true) AS t)",
            [files],
        ).fetchone()
    finally:
        con.close()
    return {"rows": int(count), "digest": digest}


_REPORT_VOLATILE = {"html_path", "json_path", "generated_at", "created_at", "path", "uri", "run_id", "version",
                    "champion_alias_version", "data_source", "wall_seconds", "timestamp"}  # fmt: skip


def _stable(value: Any) -> Any:
    """A report document without what differs between two data dirs or two runs (paths, times, ids, numbers of
    versions)."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in sorted(value.items()) if k not in _REPORT_VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def summarize_lake(lake_root: Path) -> dict[str, Any]:
    from taxi_platform.lake.lake import Lake

    lake = Lake(str(lake_root))
    out: dict[str, Any] = {}
    for key in (HISTORY, *MONTHS):
        month = key[:7]
        for service in SERVICES:
            path = lake.raw_trips_path(service, key)
            out[f"raw_trips/{service}/{month}"] = _sha256(path) if lake.exists(path) else None
        for table in ("cleaned_trips", "trip_features"):
            files = lake.partition_files(table, key) if lake.has_partition(table, key) else []
            out[f"{table}/{month}"] = _rows_digest(list(files)) if files else None
    # hidden temporary files a killed writer left (not data: readers skip them); reported, not compared
    out["_leftovers"] = sorted(
        str(p.relative_to(lake_root))
        for p in Path(lake_root).rglob(".*")
        if p.is_file() and p.name.endswith(".tmp")
    )
    for key in MONTHS:
        report = Path(lake_root) / "drift_report" / f"month={key[:7]}" / "report.json"
        out[f"drift_report/{key[:7]}"] = _stable(json.loads(report.read_text())) if report.exists() else None
    return out


def summarize_registry(tracking_uri: str) -> dict[str, Any]:
    """The registry's versions (a sorted multiset) and the champion, described without ids or version numbers."""
    import mlflow
    import pandas as pd

    from taxi_platform.core.settings import MODEL_NAME
    from taxi_platform.model.champion_lookup import current_champion
    from taxi_platform.model.registry_records import list_versions, registry_client
    from taxi_platform.model.version_tags import (
        CHECKS_FAILED_TAG,
        FAMILY_TAG,
        GATE_REASON_TAG,
        PROMOTED_TAG,
        TRAIN_MONTHS_TAG,
        VALIDATION_MAE_TAG,
        VALIDATION_MONTH_TAG,
    )
    from taxi_platform_tests.support.mlflow_globals import mlflow_store

    client = registry_client(tracking_uri)
    numbers: dict[str, str] = {}

    def describe(mv) -> dict[str, Any]:
        tags = dict(mv.tags or {})
        return {
            "validation_month": tags.get(VALIDATION_MONTH_TAG),
            "train_months": tags.get(TRAIN_MONTHS_TAG),
            "validation_mae": tags.get(VALIDATION_MAE_TAG),
            "family": tags.get(FAMILY_TAG),
            "checks_failed": tags.get(CHECKS_FAILED_TAG),
            "promoted": tags.get(PROMOTED_TAG),
            # the gate's reason names version numbers: keep its words, not the numbers
            "gate_reason": "".join(c for c in tags.get(GATE_REASON_TAG, "") if not c.isdigit()),
        }

    versions = []
    for mv in list_versions(client, MODEL_NAME):
        described = describe(mv)
        numbers[str(mv.version)] = json.dumps(described, sort_keys=True)
        versions.append(described)
    versions.sort(key=lambda d: json.dumps(d, sort_keys=True))
    champion_mv = current_champion(client, MODEL_NAME)
    champion: dict[str, Any] | None = None
    if champion_mv is not None:
        run = client.get_run(champion_mv.run_id)
        with mlflow_store(tracking_uri):
            model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{champion_mv.version}")
            quoted = model.predict(pd.DataFrame(PROBE_QUOTES))
        cols = [c for c in ("fare_amount", "fare_low", "fare_high") if c in quoted.columns]
        champion = {
            **describe(champion_mv),
            # every metric but wall times
            "metrics": {k: v for k, v in sorted(run.data.metrics.items()) if "seconds" not in k},
            "params": dict(sorted(run.data.params.items())),
            "quotes": [[float(row[c]) for c in cols] for _, row in quoted.iterrows()],
        }
    running = [r.info.run_id for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "attributes.status = 'RUNNING'")]  # fmt: skip
    return {
        "versions": versions,
        "champion": champion,
        "champion_version": None if champion_mv is None else str(champion_mv.version),
        "runs_left_running": len(running),
    }


def summarize(data_dir: Path) -> dict[str, Any]:
    return {
        "lake": summarize_lake(data_dir / "lake"),
        **summarize_registry(f"sqlite:///{data_dir / 'mlflow.db'}"),
    }


REL_TOL = 1e-6  # a margin for floating-point arithmetic that two processes may not reproduce bit for bit


def same(a: Any, b: Any) -> bool:
    """Equal, floats within :data:`REL_TOL` (relative): same keys, same lengths, same strings, same ints."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-12)
    return type(a) is type(b) and a == b


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where ``a`` and ``b`` are not :func:`same`: one ``path: a != b`` line per differing leaf (a key only one
    side has, a list of another length, a value)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [
            f"{path}.{k}: {_short(a.get(k), 80)} != {_short(b.get(k), 80)}"
            for k in sorted(a.keys() ^ b.keys())
        ]
        for k in sorted(a.keys() & b.keys()):
            out += differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]")
        ]
    return [] if same(a, b) else [f"{path}: {_short(a, 80)} != {_short(b, 80)}"]


def compare(flow: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """What differs between a flow's summary and the reference's: one line per difference (empty: the same)."""
    diffs: list[str] = []
    for key, want in reference["lake"].items():
        if key == "_leftovers":
            continue
        got = flow["lake"].get(key)
        if not same(got, want):
            diffs.append(f"lake {key}: {_short(got)} != reference {_short(want)}")
    if not same(flow["versions"], reference["versions"]):
        diffs.append(
            f"registry: {len(flow['versions'])} versions {_short(flow['versions'])} != reference "
            f"{len(reference['versions'])} {_short(reference['versions'])}"
        )
    got, want = flow["champion"] or {}, reference["champion"] or {}
    if not want:
        diffs.append("the reference has no champion")
    for where in differences(got, want):
        diffs.append(f"champion{where} (flow != reference)")
    return diffs


def lake_partition(diff: str) -> tuple[str, str] | None:
    """``lake raw_trips/yellow/2024-01: ...`` -> (raw_trips, 2024-01-01); None for registry/champion lines."""
    if not diff.startswith("lake "):
        return None
    path = diff.split()[1].rstrip(":").split("/")
    return path[0], f"{path[-1]}-01"


def _short(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit] + "..."
