"""Keep glibc from returning memory to the OS after every tensor.

PyTorch's CPU allocator calls malloc/free for each intermediate tensor. With
glibc's defaults, blocks above 128 KiB are mmap'd and unmapped each time, and
the fresh pages fault in again on the next op. On virtual machines (the CI and
development machines of this project among them) a page fault is expensive:
we measured element-wise ops on (16, 10, 576) tensors 15-38x slower than with
the memory kept (docs/BENCHMARKS.md), which made training steps 3x slower.

``tune()`` raises the mmap threshold, keeps freed memory in the heap (trim
threshold, top pad) and uses one arena so OpenMP worker threads reuse it.
It costs some resident memory that is not given back until exit.
Set TAGLLM_NO_MALLOC_TUNING=1 to skip it.

Only entry points call ``tune()`` (``cli.main``, hence every job process, the
bench scripts and the test session): it changes the whole process's
allocator, which a program that merely imports the engine (the
multi-threaded Streamlit server) must not have imposed on it.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["tune"]

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8
_done = False


def tune() -> bool:
    """Apply the settings once per process; returns whether they were applied (glibc only)."""
    global _done
    if _done or os.environ.get("TAGLLM_NO_MALLOC_TUNING") or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): nothing to tune
        return False
    ok = all([
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20),
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30),
        libc.mallopt(_M_TOP_PAD, 64 << 20),
        libc.mallopt(_M_ARENA_MAX, 1),
    ])
    _done = bool(ok)
    return _done
