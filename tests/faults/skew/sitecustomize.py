"""A skewed wall clock for one child process of the fault suite: a device without NTP.

Put this directory first on PYTHONPATH and set FAULTS_CLOCK_SKEW (seconds, may be negative):
``time.time()`` and ``time.time_ns()`` then run that far off, while ``time.monotonic()`` is left
alone, as it is on a real device whose wall clock is wrong. (libfaketime would do the same, but
with Python 3.11 its ``clock_nanosleep`` makes ``time.sleep`` fail with EINVAL.)
"""

import os
import time

_SKEW = float(os.environ.get("FAULTS_CLOCK_SKEW") or 0)

if _SKEW:
    _wall, _wall_ns = time.time, time.time_ns
    time.time = lambda: _wall() + _SKEW
    time.time_ns = lambda: _wall_ns() + int(_SKEW * 1e9)
