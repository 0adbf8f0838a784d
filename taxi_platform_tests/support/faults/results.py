"""What one fault-matrix case reports: the e2e tests assert on it, ``benchmarks/bench_faults.py`` prints it.

Every scenario module under this package exposes ``SCENARIOS``: a mapping of case name to a function
``(workdir: Path) -> FaultResult`` that starts the real components it needs on loopback, injects its fault(s)
into a live flow, lets the platform recover on its own (no person), compares the outcome with what a fault-free
run leaves, tears everything down and returns the figures. A scenario raises only when it could not run at all
(a component failed to start); a fault the platform did not survive is a result with ``survived=False`` and the
reason in ``detail``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FaultResult:
    """The outcome of one case of the fault matrix."""

    case: str
    faults_injected: int
    faults_survived: int
    partitions_expected: int = 0  # partitions (asset x month) the flow must end with; 0 for serving cases
    partitions_lost: int = 0  # of those, not materialised at the end (or different from a fault-free run)
    quotes_sent: int = 0  # serving cases: requests answered 200 ...
    quotes_lost: int = 0  # ... and not found in the prediction log
    recovery_seconds: list[float] = field(default_factory=list)  # per fault: injection -> flow healthy again
    detail: str = ""  # how it went, in one or two sentences; the reason when something was not survived
    gives_up: bool = False  # the case checks that the platform gives up clearly: its loss is what it proves

    @property
    def survived(self) -> bool:
        return (
            self.faults_survived == self.faults_injected
            and self.partitions_lost == 0
            and self.quotes_lost == 0
        )

    def explain(self) -> str:
        return (
            f"{self.case}: {self.faults_survived}/{self.faults_injected} faults survived, "
            f"{self.partitions_lost}/{self.partitions_expected} partitions lost, "
            f"{self.quotes_lost}/{self.quotes_sent} quotes lost, recovery {self.recovery_seconds} s; {self.detail}"
        )


Scenario = Callable[[Path], FaultResult]
Scenarios = Mapping[str, Scenario]
