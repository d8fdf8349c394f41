"""Elementwise passes over big arrays, chunk by chunk so that they run in cache.

A solver update is a handful of ufuncs over every parameter (57M floats for
FCN-AlexNet: ~230 MB per array). Run one after the other on whole arrays,
each ufunc is a trip through memory; run chunk by chunk, the arrays come in
from memory once and the remaining ufuncs of a chunk work in the CPU cache.

    run(xp, jobs, fn)

``jobs`` is a list of ``(arrays, extra)`` (equally long flat arrays and a
value passed along); ``fn(views, extra, scratch)`` gets same-range slices of
``arrays`` and two scratch arrays of that length and works in place. Every
element is visited once, so the result equals one call on whole arrays.
On NumPy's OpenBLAS the SGD step uses :mod:`protonet.blas` instead, whose
kernels run on OpenBLAS's threads.
"""
import numpy as np

# Per array 256 KiB: the working set of a chunk (about five arrays) stays in L2.
CHUNK = 1 << 16
# On a GPU the chunks only bound the scratch memory.
GPU_CHUNK = 1 << 22

_scratch = {}


def _scratch_pair(xp, dtype, n):
    key = (xp.__name__, np.dtype(dtype).str)
    pair = _scratch.get(key)
    if pair is None or pair[0].size < n:
        pair = _scratch[key] = (xp.empty(n, dtype), xp.empty(n, dtype))
    return pair


def run(xp, jobs, fn):
    """Apply ``fn`` to every chunk of every job (see the module docstring)."""
    chunk = CHUNK if xp is np else GPU_CHUNK
    for arrays, extra in jobs:
        size = arrays[0].size
        if not size:
            continue
        s, t = _scratch_pair(xp, arrays[0].dtype, min(size, chunk))
        for lo in range(0, size, chunk):
            hi = min(size, lo + chunk)
            n = hi - lo
            fn([a[lo:hi] for a in arrays], extra, (s[:n], t[:n]))
