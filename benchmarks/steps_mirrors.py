"""The TLC mirrors of ``bench_steps.py`` beyond the sample one: a big synthetic yellow month made by
``gen_month.py`` (kept in ``out/`` across runs), and a mirror with only the zone lookup."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
BIG_MONTH = "2024-03"


def gen_month(root: Path, month: str, rows: int) -> None:
    """A synthetic ``rows``-row yellow ``month`` (``YYYY-MM``) in the mirror ``root``, by ``gen_month.py``."""
    cmd = [
        sys.executable,
        str(HERE / "gen_month.py"),
        str(root),
        "--month",
        month,
        "--rows",
        str(rows),
    ]
    subprocess.run(cmd, check=True)


def write_zones(root: Path) -> None:
    """The zone lookup in the mirror ``root``."""
    from taxi_platform.ingest.zones import zone_csv_bytes

    (root / "misc").mkdir(parents=True, exist_ok=True)
    (root / "misc" / "taxi_zone_lookup.csv").write_bytes(zone_csv_bytes())


def big_mirror(rows: int) -> Path:
    """A mirror with one synthetic yellow month of ``rows`` rows (made by ``gen_month.py`` once, kept in out/)."""
    root = OUT / f"mirror-yellow-{BIG_MONTH}-{rows}"
    trip = root / "trip-data" / f"yellow_tripdata_{BIG_MONTH}.parquet"
    if not trip.exists():
        print(f"generating a {rows:,}-row yellow {BIG_MONTH} with gen_month.py (once)...", flush=True)
        gen_month(root, BIG_MONTH, rows)
    if not (root / "misc" / "taxi_zone_lookup.csv").exists():
        write_zones(root)
    return root


def zones_only_mirror(work: Path) -> Path:
    """A mirror with only the zone lookup: enough for ``taxi_zones``."""
    root = work / "zones-mirror"
    write_zones(root)
    return root
