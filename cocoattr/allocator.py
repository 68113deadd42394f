"""glibc malloc settings for a process that runs CNN forwards over and over.

glibc serves each buffer above its mmap threshold (128 KB, rising to at most 32 MB) from a
fresh mmap and unmaps it on free, so every forward pass page-faults its large activations
back in: ~86,000 faults (~340 MB of zeroed pages) per MobileNetV2 batch of 16 at 288 px,
which made predict 1.3-1.6x slower than it is (`bench/`). Keeping freed memory in one arena
turns the next forward's buffers into reuse. At batch 1 nothing changes (no faults either way).

Process-wide, so entry points call `tune_malloc()` (CLI, app, bench), not library classes.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1


def tune_malloc() -> bool:
    """Serve large blocks from the heap, never hand freed memory back, one arena for all
    threads (so model threads reuse the same retained blocks and RSS stays at the high-water
    mark instead of growing per thread). True where it took effect; a no-op off glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _INT_MAX), (M_ARENA_MAX, 1))
    return all(mallopt(param, value) == 1 for param, value in settings)
