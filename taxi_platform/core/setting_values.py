"""Parsers for values read from environment variables: numbers, sizes, memory limits, flags.

Each takes the variable's name, so a bad value fails with a message naming the variable and a good example.
:mod:`taxi_platform.core.settings` decides which variables exist and what they default to.
"""

from __future__ import annotations

import re


class SettingsError(ValueError):
    """A setting read from the environment has a bad value."""


def parse_positive_float(value: str, variable: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise SettingsError(f"{variable}={value!r} is not a number of seconds, e.g. 1800") from None
    if not number > 0 or number == float("inf"):
        raise SettingsError(f"{variable}={value!r} must be a positive, finite number of seconds, e.g. 1800")
    return number


_BYTE_UNITS = {
    "": 1,
    "B": 1,
    "K": 1 << 10,
    "KB": 10**3,
    "KIB": 1 << 10,
    "M": 1 << 20,
    "MB": 10**6,
    "MIB": 1 << 20,
    "G": 1 << 30,
    "GB": 10**9,
    "GIB": 1 << 30,
    "T": 1 << 40,
    "TB": 10**12,
    "TIB": 1 << 40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_byte_size(value: str, variable: str) -> int:
    """``1073741824``, ``1GiB``, ``500MB`` … → bytes (positive)."""
    match = _SIZE_RE.match(value)
    unit = match.group(2).upper() if match else ""
    if not match or unit not in _BYTE_UNITS:
        raise SettingsError(f"{variable}={value!r} is not a size: expected bytes or e.g. '2GiB', '500MB'")
    size = int(float(match.group(1)) * _BYTE_UNITS[unit])
    if size <= 0:
        raise SettingsError(f"{variable}={value!r} must be a positive size, e.g. '2GiB'")
    return size


_MEMORY_LIMIT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB|%)\s*$", re.IGNORECASE)


def parse_memory_limit(value: str, variable: str = "TAXI_DUCKDB_MEMORY_LIMIT") -> str:
    """A DuckDB ``memory_limit``: a size such as ``4GB`` / ``512MiB`` or a share of RAM such as ``50%``."""
    match = _MEMORY_LIMIT_RE.match(value)
    if not match:
        raise SettingsError(
            f"{variable}={value!r} is not a memory limit: expected a size such as '4GB' or '512MiB', or a share "
            "of the machine's memory such as '50%'"
        )
    number, unit = float(match.group(1)), match.group(2).upper()
    if number <= 0 or (unit == "%" and number > 100):
        raise SettingsError(f"{variable}={value!r} must be above 0 (and at most 100%), e.g. '4GB' or '50%'")
    return f"{match.group(1)}{'%' if unit == '%' else unit.replace('IB', 'iB')}"


def parse_whole_number(value: str, variable: str, example: int, minimum: int = 1) -> int:
    """A whole number of seconds or runs, at least ``minimum``."""
    try:
        number = int(value.strip())
    except ValueError:
        raise SettingsError(
            f"{variable}={value!r} is not a whole number of seconds/runs, e.g. {example}"
        ) from None
    if number < minimum:
        raise SettingsError(f"{variable}={value!r} is below the minimum {minimum}")
    return number


def parse_flag(value: str, variable: str) -> bool:
    """``true``/``1``/``yes``/``on`` or ``false``/``0``/``no``/``off`` (any case); empty: False."""
    flag = value.strip().lower()
    if flag in ("", "false", "0", "no", "off"):
        return False
    if flag in ("true", "1", "yes", "on"):
        return True
    raise SettingsError(f"{variable}={value!r}: expected true or false")
