"""``taxi-platform`` console script: a thin dispatcher over ``taxi_platform.commands``.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``,
imported only when chosen so ``taxi-platform --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "sample-mirror": ("taxi_platform.commands.sample_mirror", "write (and optionally serve) a synthetic TLC-format mirror"),
    "demo": ("taxi_platform.commands.demo", "run the whole platform end to end on sample data, offline"),
    "serve": ("taxi_platform.commands.serve", "serve the fare model over HTTP (BentoML) on port 3000"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="taxi-platform", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
