"""The ``taxi-platform`` command.

Each subcommand lives in its own module of ``taxi_platform.commands`` exposing ``add_arguments(parser)`` and
``run(args) -> int``, imported only when chosen so ``taxi-platform --help`` stays fast; the module's docstring
is the subcommand's ``--help`` text.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "sample-mirror": (
        "taxi_platform.commands.sample_mirror",
        "write (and optionally serve) a synthetic TLC-format mirror",
    ),
    "demo": ("taxi_platform.commands.demo", "run the whole platform end to end on sample data, offline"),
    "serve": ("taxi_platform.commands.serve", "serve the fare model over HTTP (BentoML) on port 3000"),
    "ui": (
        "taxi_platform.commands.ui",
        "open the Dagster and MLflow UIs (and the drift reports) on this data",
    ),
    "build-bento": (
        "taxi_platform.commands.build_bento",
        "build the fare-service Bento from the MLflow champion",
    ),
    "score": (
        "taxi_platform.commands.score",
        "price a Parquet or CSV file of quotes with a registered model version (batch scoring)",
    ),
    "repackage": (
        "taxi_platform.commands.repackage",
        "bring a rate-card change to the champion without retraining (a new, gated version)",
    ),
    "compare-services": (
        "taxi_platform.commands.compare_services",
        "canary check: compare a candidate fare service with the stable one on probe quotes",
    ),
}

DESCRIPTION = """\
taxi_platform: NYC TLC trip files -> a fare-quote model, monitored for drift and served over HTTP.

Start with `taxi-platform demo` (the whole platform, offline, on synthetic data), then `taxi-platform ui`
to look around and `taxi-platform serve` to get fare quotes. Settings come from environment variables
(TAXI_DATA_DIR, TAXI_LAKE_ROOT, TLC_BASE_URL, MLFLOW_TRACKING_URI, ...; see the README)."""

EPILOG = "Run `taxi-platform COMMAND --help` for a command's options and examples."


def help_text(module) -> str:
    """A command module's docstring as ``--help`` text: reST literals become plain text."""
    doc = (module.__doc__ or "").strip().replace("``", "`").replace("**", "")
    first, _, rest = doc.partition("\n")
    if first.startswith("`taxi-platform") and "`: " in first:
        first = first.split("`: ", 1)[1].strip()  # "`taxi-platform ui`: open ..." -> "open ..."
    return (first[:1].upper() + first[1:] + "\n" + rest).strip()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="taxi-platform",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, summary) in SUBCOMMANDS.items():
        if name == chosen:
            module = importlib.import_module(module_name)
            p = sub.add_parser(
                name,
                help=summary,
                description=help_text(module),
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            module.add_arguments(p)
            p.description = help_text(module)  # the docstring wins over a description set in add_arguments
            p.set_defaults(_run=module.run)
        else:
            sub.add_parser(name, help=summary)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
