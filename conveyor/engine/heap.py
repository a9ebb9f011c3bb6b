"""The driver's heap: keep memory it freed, instead of handing it back at once.

The driver takes in, cuts, decodes and records items a block at a time: a
few thousand small objects live together, then go together. glibc's malloc
hands the top of its heap back to the kernel whenever more than
``M_TRIM_THRESHOLD`` is free there (128 KiB, unless it has seen a large
mmap freed), so each block's memory went back and was faulted in again for
the next. orjson's output buffers are larger than CPython's small-object
limit, so every encoded value comes from malloc. Measured here: cutting a
million inputs into blocks took 156,000 page faults and 0.7 s of system
time (8,000 and 0.05 s with this); a 200,000-item no-op run took 4-5 %
longer (three paired runs).

The thresholds set here are the largest glibc's own dynamic rule reaches
(mmap above 32 MiB, trim above twice that): the driver keeps at most
64 MiB freed, for the rest of its life (a notebook that called ``run()``
too). Only the driver: a worker's RSS is measured against its stage's
``ram``, and memory it kept would count. Elsewhere than glibc nothing is done.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters
M_MMAP_THRESHOLD = -3
MMAP_ABOVE = 32 * 2**20  # bytes: a larger allocation is its own mmap, given back on free
TRIM_ABOVE = 2 * MMAP_ABOVE  # bytes free at the heap's top before they are given back


def keep_freed() -> bool:
    """Set this process's malloc to keep what it freed (see the module docstring);
    True where it did (glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_ABOVE)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_ABOVE))
