"""Tools for the demo, the tests and the benchmarks: the sample generator, the TLC-format mirror, loopback helpers
and a local Dagster home. Pipeline code never imports this package."""
