"""Budget strings (``"300M"``, ``"1.2G"``, ``"60%"``) parsed in one place.

Every budget in the product -- CLI flags, study specs, REST bodies -- goes through
:func:`parse_budget`, so all of them accept the same spellings and fail with the same one-line
message. A budget is either an absolute count (MACs in fvcore's convention, or parameters) or a
fraction of the teacher's count; :meth:`Budget.resolve` turns both into an absolute integer once
the teacher has been measured.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from structsearch.errors import BudgetError

__all__ = ["Budget", "format_count", "parse_budget"]

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

_LABELS: dict[str, str] = {"flops": "FLOPs budget", "params": "params budget"}
_EXAMPLES: dict[str, str] = {"flops": "300M, 1.2G", "params": "5M, 850k"}


@dataclass(frozen=True)
class Budget:
    """A FLOPs or params budget, absolute or relative to the teacher.

    Attributes:
        value: the absolute count (``relative=False``), or the fraction of the teacher's count in
            ``(0, 1]`` (``relative=True``; ``"60%"`` is ``0.6``).
        relative: whether ``value`` is a fraction of the teacher.
    """

    value: float
    relative: bool

    def resolve(self, reference: int) -> int:
        """Return the absolute budget; ``reference`` is the teacher's count, used only if relative.

        Relative budgets are kept symbolic until now because the teacher's cost depends on the input
        size the search runs at, which the parser does not know.
        """
        if not self.relative:
            return round(self.value)
        if reference <= 0:
            raise ValueError(f"reference count must be positive to resolve {self}, got {reference}")
        return round(self.value * reference)

    def __str__(self) -> str:
        """Canonical spelling (``"300M"``, ``"1.2G"``, ``"60%"``) that :func:`parse_budget` maps
        back to an equal Budget.

        Worked in decimal so no digits are lost or invented: ``repr`` of a float is the shortest
        decimal that reads back as the same float, and scaling it by a power of ten is exact.
        """
        exact = Decimal(repr(self.value))
        if self.relative:
            return f"{_plain(exact * 100)}%"
        for suffix, scale in _WRITE_SUFFIXES:
            if exact >= scale:
                return f"{_plain(exact / scale)}{suffix}"
        return _plain(exact)


def _plain(number: Decimal) -> str:
    """Decimal without exponent or trailing zeros: ``Decimal("300.0")`` -> ``"300"``."""
    text = f"{number:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def parse_budget(text: str | int | float, what: str = "flops") -> Budget:
    """Parse a budget such as ``"300M"``, ``"1.2g"``, ``"850k"``, ``300000000`` or ``"60%"``.

    Args:
        text: the user's budget. Numbers are taken as absolute counts.
        what: ``"flops"`` or ``"params"``; only used to word the error message.

    Raises:
        BudgetError: with one line naming the offending text and showing valid budgets.
    """
    if what not in _LABELS:
        raise ValueError(f"what must be one of {sorted(_LABELS)}, got {what!r}")
    if isinstance(text, bool):  # bool is an int subclass; True is not a budget of 1
        raise _invalid(text, what, "a boolean is not a count")
    if isinstance(text, (int, float)):
        return _absolute(Decimal(repr(text)) if math.isfinite(text) else None, text, what)
    if not isinstance(text, str):
        raise _invalid(text, what, f"expected text or a number, got {type(text).__name__}")
    return _parse_text(text, what)


def _parse_text(text: str, what: str) -> Budget:
    """Parse the string form; split out so the numeric path stays trivial."""
    stripped = text.strip()
    if not stripped:
        raise _invalid(text, what, "it is empty")
    if stripped.startswith("-"):
        raise _invalid(text, what, "a budget must be positive")
    match = _BUDGET_RE.match(stripped)
    if match is None:
        raise _invalid(text, what, _why_unparsed(stripped))
    number = _decimal(match["number"])
    unit = match["unit"].lower()
    if unit == "%":
        if not 0 < number <= 100:
            raise _invalid(text, what, "a percentage must be above 0% and at most 100%")
        return Budget(value=float(number / 100), relative=True)
    return _absolute(number * _SUFFIXES[unit], text, what)


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


def _decimal(number: str) -> Decimal:
    """Exact decimal value, so "1.2G" is exactly 1_200_000_000 and not 1.2 * 1e9 in binary."""
    try:
        return Decimal(number)
    except InvalidOperation as exc:  # the regex only lets valid literals through
        raise ValueError(f"unparseable number {number!r}") from exc


def _invalid(text: object, what: str, reason: str) -> BudgetError:
    """Build the one-line error; ``repr`` keeps control characters from breaking the line."""
    shown = repr(text) if isinstance(text, str) else f"'{text}'"
    return BudgetError(
        f"invalid {_LABELS[what]} {shown}: {reason}; use a number with an optional k/M/G/T suffix "
        f"({_EXAMPLES[what]}) or a percentage of the teacher (60%)"
    )


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
