"""The ``rate_limit`` field's grammar: ``COUNT/[N]UNIT`` (``10/s``, ``100/m``, ``1000/h``, ``5/10s``).

Pure and pydantic-free: the dependency-free validator (``validate.py``), the models
(``messages.py``), the producer (``app.py``) and the coordinator's policy (``ratelimits.py``) all
read a rate limit through ``parse_rate_limit``, so a string one part accepts no other refuses.

Bounds, and why: ``COUNT`` is 1-10,000 (the coordinator keeps the times of the last ``COUNT``
dispatches per key: a sliding-window log, exact, whose size is the count), the period is 1 s to
24 h (the store keeps a key's window for one period; longer is a quota, not a rate).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RATE_LIMIT_PATTERN = r"^([1-9][0-9]{0,4})/([1-9][0-9]{0,4})?(s|m|h)$"
"""``COUNT/[N]UNIT``: at most COUNT dispatches in any window of N (default 1) seconds, minutes or hours."""
MAX_COUNT = 10_000
MAX_PERIOD = 86_400.0
RATE_KEY_MAX = 256
"""A ``rate_key`` is any string of 1-256 characters (a device id, a customer, an API host)."""
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RE = re.compile(RATE_LIMIT_PATTERN.replace("$", r"\Z"))


@dataclass(frozen=True)
class RateLimit:
    """At most ``count`` dispatches in any window of ``period`` seconds."""

    count: int
    period: float
    text: str

    def __str__(self) -> str:
        return self.text


def parse_rate_limit(text: object) -> RateLimit:
    """The limit ``text`` says; ``ValueError`` with one readable reason when it is malformed."""
    if not isinstance(text, str):
        raise ValueError(f"rate limit {text!r} is not a string like '10/s', '100/m' or '1000/h'")
    match = _RE.match(text)
    if match is None:
        raise ValueError(f"rate limit {text!r} is malformed: give COUNT/UNIT or COUNT/NUNIT with UNIT s, m or h "
                         "(e.g. '10/s', '100/m', '1000/h', '5/10s')")
    count, every, unit = int(match.group(1)), int(match.group(2) or 1), match.group(3)
    period = every * _UNITS[unit]
    if count > MAX_COUNT:
        raise ValueError(f"rate limit {text!r}: the count {count} is over {MAX_COUNT:,} (give a shorter period)")
    if period > MAX_PERIOD:
        raise ValueError(f"rate limit {text!r}: the period {period:g} s is over 24 h")
    return RateLimit(count, period, text)


def rate_limit_problem(text: object) -> str | None:
    """Why ``text`` is not a valid rate limit, or None when it is."""
    try:
        parse_rate_limit(text)
    except ValueError as exc:
        return str(exc)
    return None
