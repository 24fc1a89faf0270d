"""Budget strings (``"300M"``, ``"1.2G"``, ``"5ms"``, ``"50MB"``, ``"60%"``) parsed in one place.

Every budget in the product -- CLI flags, study specs, REST bodies -- goes through
:func:`parse_budget`, so all of them accept the same spellings and fail with the same one-line
message. A budget is either absolute or a fraction of the teacher's figure; :meth:`Budget.resolve`
turns both into an absolute figure once the teacher has been measured. Absolute figures are

* flops / params: a count (flops are MACs, fvcore's convention; or parameters), with SI suffixes k/M/G/T;
* latency: milliseconds, written with a time unit (``5ms``, ``800us``, ``0.01s``);
* memory: bytes, written with a byte unit, decimal (``50MB``, ``512kB``) or binary (``64MiB``).

Latency and memory always need their unit: a bare ``5`` could be milliseconds or seconds, and a
bare ``50M`` could be a params count pasted into the wrong flag.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal

from structsearch.errors import BudgetError

__all__ = ["UNITS", "Budget", "format_bytes", "format_count", "format_ms", "parse_budget"]

#: Decimal multipliers of the accepted suffixes (lower-cased). SI prefixes, not binary ones:
#: a "1.2G" FLOPs budget is 1.2e9 MACs, as in timm's and the papers' tables.
_SUFFIXES: dict[str, int] = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}

#: Largest-first suffixes used when writing counts back out.
_WRITE_SUFFIXES: tuple[tuple[str, int], ...] = (("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3))

#: A plain decimal number (optionally with an exponent) followed by an optional suffix or "%".
#: Signs are deliberately not accepted: a negative budget is always a mistake.
_BUDGET_RE = re.compile(r"^(?P<number>(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*(?P<unit>[kmgt%]?)$", re.IGNORECASE)

#: A leading number, to tell "300MB" (bad suffix) from "abc" (no number at all) in messages.
_NUMBER_PREFIX_RE = re.compile(r"^(?:\d+\.?\d*|\.\d+)\s*(?P<rest>.*)$", re.DOTALL)

_LABELS: dict[str, str] = {
    "flops": "FLOPs (MACs) budget",
    "params": "params budget",
    "latency": "latency budget",
    "memory": "memory budget",
}
_EXAMPLES: dict[str, str] = {
    "flops": "300M, 1.2G",
    "params": "5M, 850k",
    "latency": "5ms, 800us, 0.01s",
    "memory": "50MB, 512kB, 1.5GB, 64MiB",
}

#: What each kind of budget measures; ``Budget.unit`` ("" for counts).
UNITS: dict[str, str] = {"flops": "", "params": "", "latency": "ms", "memory": "B"}

#: Latency units in milliseconds (lower-cased; "µ" in both of its Unicode spellings).
_TIME_UNITS: dict[str, Decimal] = {
    "ns": Decimal("0.000001"),
    "us": Decimal("0.001"),
    "\u00b5s": Decimal("0.001"),
    "\u03bcs": Decimal("0.001"),
    "ms": Decimal(1),
    "s": Decimal(1000),
}
#: Memory units as written back (their canonical spelling): decimal SI as in "50MB", binary IEC as in "64MiB".
_WRITE_BYTE_UNITS: tuple[tuple[str, int], ...] = (
    ("kB", 10**3),
    ("MB", 10**6),
    ("GB", 10**9),
    ("TB", 10**12),
    ("KiB", 2**10),
    ("MiB", 2**20),
    ("GiB", 2**30),
    ("TiB", 2**40),
)
#: Memory units in bytes as read (lower-cased, so "50mb" and "64mib" parse too).
_BYTE_UNITS: dict[str, int] = {"b": 1} | {unit.lower(): scale for unit, scale in _WRITE_BYTE_UNITS}
_MEASURED_RE = re.compile(r"^(?P<number>(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*(?P<unit>[^\d\s.][^\s]*)?$", re.IGNORECASE)


@dataclass(frozen=True)
class Budget:
    """A flops (MACs), params, latency or memory budget, absolute or relative to the teacher.

    Attributes:
        value: the absolute figure (``relative=False``) in the budget's unit -- a count, milliseconds
            or bytes -- or the fraction of the teacher's figure in ``(0, 1]`` (``relative=True``;
            ``"60%"`` is ``0.6``).
        relative: whether ``value`` is a fraction of the teacher.
        unit: ``""`` for counts (MACs, params), ``"ms"`` for latency, ``"B"`` for memory; it only
            decides how the budget is written back and whether :meth:`resolve` rounds.
    """

    value: float
    relative: bool
    unit: str = ""

    def resolve(self, reference: float) -> int | float:
        """Return the absolute budget; ``reference`` is the teacher's figure, used only if relative.

        Relative budgets are kept symbolic until now because the teacher's cost depends on the input
        size the search runs at (and its latency on the device), which the parser does not know.
        Counts and bytes are whole numbers (rounded); a latency stays a float number of ms.
        """
        if self.relative and reference <= 0:
            raise ValueError(f"reference must be positive to resolve {self}, got {reference}")
        value = self.value * reference if self.relative else self.value
        return float(value) if self.unit == "ms" else round(value)

    def __str__(self) -> str:
        """Canonical spelling (``"300M"``, ``"1.2G"``, ``"60%"``) that :func:`parse_budget` maps
        back to an equal Budget.

        Worked in decimal so no digits are lost or invented: ``repr`` of a float is the shortest
        decimal that reads back as the same float, and scaling it by a power of ten is exact.
        """
        exact = Decimal(repr(self.value))
        if self.relative:
            return f"{_plain(exact * 100)}%"
        if self.unit == "ms":
            return f"{_plain(exact)}ms" if exact >= 1 else f"{_plain(exact * 1000)}us"
        if self.unit == "B":
            return _bytes_text(exact)
        for suffix, scale in _WRITE_SUFFIXES:
            if exact >= scale:
                return f"{_plain(exact / scale)}{suffix}"
        return _plain(exact)


def _bytes_text(exact: Decimal) -> str:
    """Shortest exact spelling of a byte count among decimal and binary units (``50MB``, ``64MiB``)."""
    options = [f"{_plain(exact)}B"]
    options += [f"{_plain(exact / scale)}{unit}" for unit, scale in _WRITE_BYTE_UNITS if exact >= scale]
    return min(options, key=len)


def _plain(number: Decimal) -> str:
    """Decimal without exponent or trailing zeros: ``Decimal("300.0")`` -> ``"300"``."""
    text = f"{number:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def parse_budget(text: str | int | float, what: str = "flops") -> Budget:
    """Parse a budget such as ``"300M"``, ``"1.2g"``, ``"850k"``, ``"5ms"``, ``"50MB"`` or ``"60%"``.

    Args:
        text: the user's budget. Numbers are taken as absolute counts (flops = MACs, or params; a
            latency or memory budget needs its unit).
        what: ``"flops"`` (MACs), ``"params"`` (counts with k/M/G/T suffixes), ``"latency"`` (ns/us/ms/s,
            resolved in ms) or ``"memory"`` (B/kB/MB/GB/TB or KiB/MiB/GiB/TiB, resolved in bytes).

    Raises:
        BudgetError: with one line naming the offending text and showing valid budgets.
    """
    if what not in _LABELS:
        raise ValueError(f"what must be one of {sorted(_LABELS)}, got {what!r}")
    if isinstance(text, bool):  # bool is an int subclass; True is not a budget of 1
        raise _invalid(text, what, "a boolean is not a count")
    if isinstance(text, (int, float)):
        if UNITS[what]:
            raise _invalid(text, what, "a bare number has no unit")
        return _absolute(Decimal(repr(text)) if math.isfinite(text) else None, text, what)
    if not isinstance(text, str):
        raise _invalid(text, what, f"expected text or a number, got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise _invalid(text, what, "it is empty")
    if stripped.startswith("-"):
        raise _invalid(text, what, "a budget must be positive")
    match = (_MEASURED_RE if UNITS[what] else _BUDGET_RE).match(stripped)
    if match is None:
        raise _invalid(text, what, "not a number with a unit" if UNITS[what] else _why_unparsed(stripped))
    number = Decimal(match["number"])  # the regex lets only valid literals through
    unit = (match["unit"] or "").lower()
    if unit == "%":
        if not 0 < number <= 100:
            raise _invalid(text, what, "a percentage must be above 0% and at most 100%")
        return Budget(value=float(number / 100), relative=True, unit=UNITS[what])
    if UNITS[what]:
        return _measured(number, unit, match["unit"], text, what)
    return _absolute(number * _SUFFIXES[unit], text, what)


def _measured(number: Decimal, unit: str, written: str | None, text: str, what: str) -> Budget:
    """An absolute latency or memory budget: ``number`` in ``unit`` (mandatory), as written."""
    units: dict[str, Decimal] = _TIME_UNITS if what == "latency" else {k: Decimal(v) for k, v in _BYTE_UNITS.items()}
    if not unit:
        raise _invalid(text, what, "it has no unit")
    if unit not in units:
        raise _invalid(text, what, f"unknown unit {written!r}")
    value = number * units[unit]
    if not value.is_finite() or value <= 0:
        raise _invalid(text, what, "a budget must be positive")
    if what == "memory" and value < 1:
        raise _invalid(text, what, "must be at least 1 byte")
    as_float = float(value)
    if not math.isfinite(as_float):
        raise _invalid(text, what, "too large")
    return Budget(value=as_float, relative=False, unit=UNITS[what])


def _why_unparsed(stripped: str) -> str:
    """Name the bad suffix when the text starts like a number ("300MB"), else say it is no number."""
    suffix = _NUMBER_PREFIX_RE.match(stripped)
    if suffix is not None and suffix["rest"]:
        return f"unknown suffix {suffix['rest']!r}"
    return "not a number"


def _absolute(count: Decimal | None, text: object, what: str) -> Budget:
    """Validate an absolute count; at least one MAC/parameter, finite."""
    if count is None or not count.is_finite():
        raise _invalid(text, what, "not a finite number")
    if count <= 0:
        raise _invalid(text, what, "a budget must be positive")
    if count < 1:
        raise _invalid(text, what, "must be at least 1")
    value = float(count)
    if not math.isfinite(value):
        raise _invalid(text, what, "too large")
    return Budget(value=value, relative=False)


def _invalid(text: object, what: str, reason: str) -> BudgetError:
    """Build the one-line error; ``repr`` keeps control characters from breaking the line."""
    shown = repr(text) if isinstance(text, str) else f"'{text}'"
    if what == "latency":
        fix = f"use a time with a unit ({_EXAMPLES[what]}) or a percentage of the teacher's latency (60%)"
    elif what == "memory":
        fix = f"use a size with a unit ({_EXAMPLES[what]}) or a percentage of the teacher's memory (60%)"
    else:
        fix = f"use a number with an optional k/M/G/T suffix ({_EXAMPLES[what]}) or a percentage of the teacher (60%)"
    return BudgetError(f"invalid {_LABELS[what]} {shown}: {reason}; {fix}")


def format_ms(ms: float) -> str:
    """Human-readable latency for tables: ``12.3ms``, ``1.52ms``, ``850us``, ``1.25s``.

    Three significant digits: run-to-run noise makes more meaningless. Parses back with
    :func:`parse_budget` (``what="latency"``).
    """
    if ms >= 1000:
        return f"{ms / 1000:.3g}s"
    if ms >= 1:
        return f"{ms:.3g}ms"
    return f"{ms * 1000:.3g}us"


def format_bytes(n: int | float) -> str:
    """Human-readable size in decimal units for tables: ``12.85MB``, ``850.0kB``, ``999B``.

    Decimal (not binary) so the figure reads against budgets like ``50MB`` without conversion;
    parses back with :func:`parse_budget` (``what="memory"``).
    """
    return f"{format_count(n)}B"


def format_count(n: int | float) -> str:
    """Human-readable count for tables: ``1.82G``, ``11.69M``, ``850.0k``, ``999``.

    Two decimals for M/G/T (enough to tell students apart), one for k. The output parses back with
    :func:`parse_budget` to within half a unit of its last digit.
    """
    magnitude = abs(n)
    if magnitude < 1000:
        return f"{n:.0f}" if isinstance(n, float) else str(n)
    units = _WRITE_SUFFIXES[::-1]  # k, M, G, T
    index = max(i for i, (_, scale) in enumerate(units) if magnitude >= scale)
    decimals = _decimals(units[index][0])
    # 999_999 would print as "1000.0k"; move up a unit when rounding reaches the next one.
    if round(magnitude / units[index][1], decimals) >= 1000 and index + 1 < len(units):
        index += 1
        decimals = _decimals(units[index][0])
    suffix, scale = units[index]
    return f"{n / scale:.{decimals}f}{suffix}"


def _decimals(suffix: str) -> int:
    """Decimals shown per unit: one for k, two for M/G/T."""
    return 1 if suffix == "k" else 2
