"""Tariff-free fares: a per-quote affine map between dollars and "meter units" set by the rate card in force.

The TLC changes its tariff by rule on known dates (:mod:`.rate_card`). A model that learns dollars quotes the old
tariff for months after a change; a model that learns what the tariff does not change — how much meter a trip
runs, or which share of the flat fare it pays — is priced at the tariff in force at each quote's pickup instead.

A quote's **pair kind** is known before the ride from its zones:

- ``jfk_flat`` (:data:`JFK_FLAT`): JFK <-> Manhattan, the flat-fare pairs (the ``is_jfk_manhattan`` feature);
  ``units = 100 × fare / jfk_flat_fare(t)``, the fare as a percentage of the flat fare;
- ``newark`` (:data:`NEWARK`): pickup or dropoff in zone 1 (EWR);
  ``units = (fare − initial_charge(t) − newark_surcharge(t)) / per_unit(t)``;
- ``metered`` (:data:`METERED`): every other pair; ``units = (fare − initial_charge(t)) / per_unit(t)``.

Every map is ``dollars = offset + scale × units`` with ``scale > 0``, so :func:`to_units` and :func:`to_dollars`
are exact inverses (up to float rounding) and order-preserving: a range in units stays a range in dollars.

:class:`Tariff` reads a rate card once into one table: the dates on which any of the four components changes
(for either service) and, per (service, period, kind), the offset and scale. A lookup is one
``np.searchsorted`` and two fancy-indexes (a few µs for one quote). Before a component's first row of the card
the map uses that first row's amount (the card's baseline), so the map never divides by zero.

numpy only besides :mod:`.rate_card` and :mod:`.matrix` (this module ships with every model version).
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from .matrix import COL, MIN_FARE
from .rate_card import SERVICES, RateCard, load_rate_card

METERED, NEWARK, JFK_FLAT = 0, 1, 2
KINDS = ("metered", "newark", "jfk_flat")  # index = the kind code
NEWARK_ZONE = 1
TARGETS = ("fare", "tariff_units")  # what a model learns: dollars as charged, or tariff-free meter units
TARIFF_COMPONENTS = ("initial_charge", "per_unit", "newark_surcharge", "jfk_flat_fare")


def pair_kinds(pickup_zone: ArrayLike, dropoff_zone: ArrayLike, is_jfk_manhattan: ArrayLike) -> np.ndarray:
    """int8 kind code (:data:`METERED`, :data:`NEWARK`, :data:`JFK_FLAT`) per quote from its zones."""
    pu = np.asarray(pickup_zone)
    do = np.asarray(dropoff_zone)
    kind = ((pu == NEWARK_ZONE) | (do == NEWARK_ZONE)).astype(np.int8)
    kind[np.asarray(is_jfk_manhattan) > 0] = JFK_FLAT
    return kind


def kinds_from_matrix(X: np.ndarray) -> np.ndarray:
    """Kind code per row of a :func:`~.matrix.build_matrix` matrix."""
    return pair_kinds(X[:, COL["pickup_zone"]], X[:, COL["dropoff_zone"]], X[:, COL["is_jfk_manhattan"]])


def service_codes(service: ArrayLike) -> np.ndarray:
    """int8 service codes (0 yellow, 1 green) from service names or codes (as in the design matrix)."""
    arr = np.asarray(service)
    if arr.dtype.kind in "iuf":
        return (arr >= 1).view(np.int8)  # 0 yellow, 1 (or more) green, as the design matrix's codes
    return (arr.astype(str) == SERVICES[1]).view(np.int8)


def pickup_micros(pickup: ArrayLike) -> np.ndarray:
    """Pickup instants as int64 microseconds since the epoch (naive New York time, as the TLC files): from
    ``datetime64`` of any unit, ISO strings, or integers already in microseconds."""
    arr = np.asarray(pickup)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind != "M":
        arr = arr.astype("datetime64[us]")
    return arr.astype("datetime64[us]").view(np.int64)


@dataclass(frozen=True)
class Tariff:
    """The four fare-setting components of a rate card as one lookup table.

    ``starts`` holds the int64 µs instants at which any component changes for any service, ascending (the first
    is the earliest row); ``offset`` and ``scale`` are float64 ``(len(SERVICES), len(starts), len(KINDS))``:
    in period ``p`` (from ``starts[p]`` to ``starts[p + 1]``) a fare of kind ``k`` for service ``s`` is
    ``offset[s, p, k] + scale[s, p, k] × units``. ``initial`` is ``(len(SERVICES), len(starts))``: the initial
    charge, the fare floor of a tariff-aware model.
    """

    starts: np.ndarray
    offset: np.ndarray
    scale: np.ndarray
    initial: np.ndarray

    @classmethod
    def from_card(cls, card: RateCard) -> Tariff:
        """The table of ``card``; raises ``ValueError`` when a component has no row or a scale is not positive."""
        histories = {
            (s, c): card.history(c, s) for s in SERVICES for c in TARIFF_COMPONENTS
        }  # (dates, amounts) per service and component
        for (service, component), (dates, _) in histories.items():
            if not len(dates):
                raise ValueError(
                    f"the rate card has no {component} row for {service}: cannot map fares to units"
                )
        starts = np.unique(np.concatenate([d for d, _ in histories.values()])).view(np.int64)
        offset = np.empty((len(SERVICES), len(starts), len(KINDS)))
        scale = np.empty_like(offset)
        initial = np.empty((len(SERVICES), len(starts)))
        for s, service in enumerate(SERVICES):

            def amount(component: str, service: str = service) -> np.ndarray:
                dates, amounts = histories[(service, component)]
                idx = np.searchsorted(dates.view(np.int64), starts, side="right") - 1
                return amounts[np.maximum(idx, 0)]  # before the first row: the baseline amount

            init, per_unit = amount("initial_charge"), amount("per_unit")
            newark, jfk = amount("newark_surcharge"), amount("jfk_flat_fare")
            if (per_unit <= 0).any() or (jfk <= 0).any():
                raise ValueError(f"the rate card's per_unit and jfk_flat_fare for {service} must be positive")
            offset[s, :, METERED], scale[s, :, METERED] = init, per_unit
            offset[s, :, NEWARK], scale[s, :, NEWARK] = init + newark, per_unit
            offset[s, :, JFK_FLAT], scale[s, :, JFK_FLAT] = 0.0, jfk / 100.0
            initial[s] = init
        return cls(starts=starts, offset=offset, scale=scale, initial=initial)

    def _lookup_one(
        self, when: int, kind: ArrayLike, service: ArrayLike, shape: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = int(service_codes(service).reshape(-1)[0])
        k = int(np.asarray(kind).reshape(-1)[0])
        out = np.array([[v] for v in self.lookup_one(when, k, s)])
        if shape != (1,):
            out = out.reshape((3, *shape))
        return out[0], out[1], out[2]

    def lookup_one(self, when: int, kind: int, service: int) -> tuple[float, float, float]:
        """``(offset, scale, initial_charge)`` of one quote picked up at ``when`` (int µs), of kind code ``kind``
        for service code ``service``: Python scalars from lists built once (the serving hot path)."""
        rows = self.__dict__.get("_rows")
        if rows is None:  # per (service, period): (offsets by kind, scales by kind, initial), as Python lists
            rows = (
                self._bounds_array().tolist(),
                self.offset.tolist(),
                self.scale.tolist(),
                self.initial.tolist(),
            )
            object.__setattr__(self, "_rows", rows)
        bounds, offset, scale, initial = rows
        p = bisect.bisect_right(bounds, when) - 1
        return offset[service][p][kind], scale[service][p][kind], initial[service][p]

    def _bounds_array(self) -> np.ndarray:
        bounds = self.__dict__.get("_bounds")
        if bounds is None:  # starts with the first open to the past: every instant falls in a period
            bounds = self.starts.copy()
            bounds[0] = np.iinfo(np.int64).min
            object.__setattr__(self, "_bounds", bounds)
        return bounds

    def _period(self, pickup: ArrayLike) -> np.ndarray:
        return np.searchsorted(self._bounds_array(), pickup_micros(pickup), side="right") - 1

    def lookup(
        self, pickup: ArrayLike, kind: ArrayLike, service: ArrayLike
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(offset, scale, initial_charge)`` per quote at its pickup instant (one period lookup)."""
        when = pickup_micros(pickup)
        if when.size == 1:  # one quote (the serving hot path): Python scalars beat a dozen numpy calls
            return self._lookup_one(int(when.reshape(-1)[0]), kind, service, when.shape)
        sp = np.searchsorted(self._bounds_array(), when, side="right") - 1  # flat (service, period) index
        sp += service_codes(service).astype(np.intp) * len(self.starts)
        spk = sp * len(KINDS)
        spk += np.asarray(kind)
        return self.offset.take(spk), self.scale.take(spk), self.initial.take(sp)

    def coefficients(
        self, pickup: ArrayLike, kind: ArrayLike, service: ArrayLike
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(offset, scale)`` per quote: ``dollars = offset + scale × units`` at its pickup instant."""
        offset, scale, _ = self.lookup(pickup, kind, service)
        return offset, scale

    def initial_charge(self, pickup: ArrayLike, service: ArrayLike) -> np.ndarray:
        """The initial charge (float64 dollars) in force at each pickup."""
        sp = self._period(pickup)
        sp += service_codes(service).astype(np.intp) * len(self.starts)
        return self.initial.take(sp)

    def to_units(self, fare: ArrayLike, pickup: ArrayLike, kind: ArrayLike, service: ArrayLike) -> np.ndarray:
        """Fares (dollars) as meter units at their pickups (the inverse of :meth:`to_dollars`)."""
        offset, scale = self.coefficients(pickup, kind, service)
        return (np.asarray(fare, dtype=np.float64) - offset) / scale

    def to_dollars(
        self, units: ArrayLike, pickup: ArrayLike, kind: ArrayLike, service: ArrayLike
    ) -> np.ndarray:
        """Meter units as fares (dollars) at the tariff in force at their pickups."""
        offset, scale = self.coefficients(pickup, kind, service)
        return offset + scale * np.asarray(units, dtype=np.float64)


@functools.cache
def _packaged_tariff() -> Tariff:
    return Tariff.from_card(load_rate_card())


def load_tariff(card: RateCard | str | Path | None = None) -> Tariff:
    """The :class:`Tariff` of ``card`` (a :class:`RateCard`, a card file, or ``None`` for the packaged card,
    read once per process)."""
    if card is None:
        return _packaged_tariff()
    return Tariff.from_card(card if isinstance(card, RateCard) else load_rate_card(card))


def to_units(
    fare: ArrayLike,
    pickup: ArrayLike,
    kind: ArrayLike,
    service: ArrayLike,
    card: RateCard | str | Path | None = None,
) -> np.ndarray:
    """Fares (dollars) as meter units at their pickup instants, by pair kind and service (see the module doc)."""
    return load_tariff(card).to_units(fare, pickup, kind, service)


def to_dollars(
    units: ArrayLike,
    pickup: ArrayLike,
    kind: ArrayLike,
    service: ArrayLike,
    card: RateCard | str | Path | None = None,
) -> np.ndarray:
    """Meter units as fares (dollars) at the tariff in force at their pickup instants (inverse of :func:`to_units`)."""
    return load_tariff(card).to_dollars(units, pickup, kind, service)


@dataclass(frozen=True)
class FareScale:
    """How a batch of quotes' model values become dollars, and the fare floor of each quote.

    ``offset``/``scale`` map a value of the model's target to dollars (``0``/``1`` for a dollar model);
    ``floor`` is the lowest fare (dollars) quoted: the initial charge in force at the pickup for a tariff-aware
    model, else a fixed minimum fare. ``floor_value`` is the same floor in the target's scale.
    """

    offset: np.ndarray
    scale: np.ndarray
    floor: np.ndarray

    @classmethod
    def of(
        cls,
        target: str,
        pickup: ArrayLike | None,
        kind: ArrayLike,
        service: ArrayLike,
        tariff: Tariff | None = None,
        min_fare: float | None = None,
    ) -> FareScale:
        """The scale of quotes for a model learning ``target``. ``min_fare`` fixes the floor; ``None`` means the
        initial charge at the pickup (tariff-aware models) or :data:`~.matrix.MIN_FARE` (dollar models, and
        where no pickup is known)."""
        n = len(np.asarray(kind))
        if target == "fare":
            floor = np.full(n, MIN_FARE if min_fare is None else float(min_fare))
            return cls(np.zeros(n), np.ones(n), floor)
        if target != "tariff_units":
            raise ValueError(f"unknown model target {target!r}: expected one of {list(TARGETS)}")
        if pickup is None:
            raise ValueError("a tariff-aware model needs each quote's pickup time to price it")
        offset, scale, initial = (tariff or _packaged_tariff()).lookup(pickup, kind, service)
        return cls(offset, scale, initial if min_fare is None else np.full(n, float(min_fare)))

    @property
    def floor_value(self) -> np.ndarray:
        """The floor in the target's scale."""
        return (self.floor - self.offset) / self.scale

    def values(self, fares: ArrayLike) -> np.ndarray:
        """Dollars as the target's values (meter units or dollars)."""
        return (np.asarray(fares, dtype=np.float64) - self.offset) / self.scale

    def dollars(self, values: ArrayLike) -> np.ndarray:
        """The target's values as dollars (no floor)."""
        return self.offset + self.scale * np.asarray(values, dtype=np.float64)

    def floored(self, values: ArrayLike) -> np.ndarray:
        """The target's values raised to the floor (still in the target's scale)."""
        return np.maximum(np.asarray(values, dtype=np.float64), self.floor_value)

    def fares(self, values: ArrayLike) -> np.ndarray:
        """Served fares: the floored values as dollars (never below the floor, whatever the rounding)."""
        return np.maximum(self.dollars(self.floored(values)), self.floor)
