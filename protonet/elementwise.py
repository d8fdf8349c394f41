"""Elementwise passes over big arrays: in cache-sized chunks, through BLAS when it can.

A solver update is a handful of elementwise operations over every parameter
(57M floats for FCN-AlexNet: ~230 MB per array). Two tools keep it cheap:

``run(xp, jobs, fn)``
    runs ``fn`` chunk by chunk: the arrays come in from memory once and the
    remaining ufuncs of a chunk work in the CPU cache. ``jobs`` is a list of
    ``(arrays, extra)`` (equally long flat arrays and a value passed along);
    ``fn(views, extra, scratch)`` gets same-range slices of ``arrays`` and two
    scratch arrays of that length and works in place. Every element is
    visited once, so the result equals one call on whole arrays.

``blas(dtype)``
    NumPy's own OpenBLAS, when NumPy ships one, for ``axpy`` (y += a x),
    ``axpby`` (y = a x + b y) and ``scal`` (x *= a): the cblas calls Caffe's
    CPU solver makes, with the same roundings; and a GEMM with ``beta``
    (C = alpha A B^T + beta C), which NumPy does not expose. They matter on
    CPUs because OpenBLAS runs them on its thread pool; NumPy's ufuncs run
    on one core, and a thread of ours would only share a core with
    OpenBLAS's workers, which spin for about a tenth of a second after every
    GEMM. None when NumPy's BLAS is not a bundled OpenBLAS (MKL, Accelerate,
    a system library): callers then use ``run`` and ``matmul``.
"""
import ctypes
import glob
import os

import numpy as np

# Per array 256 KiB: the working set of a chunk (about five arrays) stays in L2.
CHUNK = 1 << 16
# On a GPU the chunks only bound the scratch memory.
GPU_CHUNK = 1 << 22
# A BLAS chunk is shared among OpenBLAS's threads: 1 MiB per array
# measured best on 2 cores (48 ms for three passes over 57M floats, against
# 58 ms for whole arrays and 80 ms for NumPy ufuncs in chunks).
BLAS_CHUNK = 1 << 18

# Tests switch the BLAS path off to exercise the NumPy one.
USE_BLAS = True

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


class Blas:
    """BLAS level-1 programs and a GEMM with beta, on contiguous NumPy arrays of one dtype.

    ``run(program)`` takes steps ``("axpy", a, x, y)``, ``("axpby", a, x,
    b, y)`` and ``("scal", a, x)`` over equally long arrays and runs them
    chunk by chunk, all steps on a chunk before the next chunk.
    """

    def __init__(self, dtype, axpy, axpby, scal, gemm):
        self.dtype = np.dtype(dtype)
        self._axpy, self._axpby, self._scal, self._gemm = axpy, axpby, scal, gemm

    def gemm_nt(self, alpha, a, bt, beta, c):
        """c = alpha * a @ bt.T + beta * c for C-contiguous 2-d ``a`` (m, k), ``bt`` (n, k), ``c`` (m, n)."""
        (m, k), n = a.shape, bt.shape[0]
        for arr, shape in ((a, (m, k)), (bt, (n, k)), (c, (m, n))):
            if arr.dtype != self.dtype or arr.shape != shape or not arr.flags.c_contiguous:
                raise ValueError("gemm_nt needs contiguous %s arrays a %s, bt %s, c %s"
                                 % (self.dtype, a.shape, bt.shape, c.shape))
        self._gemm(_ROW_MAJOR, _NO_TRANS, _TRANS, m, n, k, float(alpha), a.ctypes.data, k,
                   bt.ctypes.data, k, float(beta), c.ctypes.data, n)

    def run(self, program):
        if not program:
            return
        size = program[0][2].size
        item = self.dtype.itemsize
        steps = []
        for step in program:
            arrays = [a for a in step[1:] if isinstance(a, np.ndarray)]
            for a in arrays:
                if a.dtype != self.dtype or a.size != size or not a.flags.c_contiguous:
                    raise ValueError("level-1 operands must be contiguous %s arrays of %d values"
                                     % (self.dtype, size))
            if step[0] == "axpy":
                _, a, x, y = step
                steps.append((self._axpy, float(a), x.ctypes.data, y.ctypes.data))
            elif step[0] == "axpby":
                _, a, x, b, y = step
                steps.append((self._axpby, float(a), x.ctypes.data, float(b), y.ctypes.data))
            elif step[0] == "scal":
                _, a, x = step
                steps.append((self._scal, float(a), x.ctypes.data))
            else:
                raise ValueError("unknown level-1 step %r" % (step[0],))
        for lo in range(0, size, BLAS_CHUNK):
            n = min(BLAS_CHUNK, size - lo)
            off = lo * item
            for step in steps:
                fn = step[0]
                if fn is self._axpby:
                    fn(n, step[1], step[2] + off, 1, step[3], step[4] + off, 1)
                elif fn is self._axpy:
                    fn(n, step[1], step[2] + off, 1, step[3] + off, 1)
                else:
                    fn(n, step[1], step[2] + off, 1)


_blas = {}
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def _numpy_openblas():
    """Paths of the OpenBLAS shipped inside NumPy's wheel (Linux, macOS, Windows layouts)."""
    base = os.path.dirname(np.__file__)
    found = []
    for pattern in (base + ".libs/*openblas*", base + "/.dylibs/*openblas*", base + "/../numpy.libs/*openblas*"):
        found += sorted(glob.glob(pattern))
    return found


def _load_blas(dtype):
    letter = {"float32": "s", "float64": "d"}.get(np.dtype(dtype).name)
    if letter is None:
        return None
    c_float = ctypes.c_float if letter == "s" else ctypes.c_double
    # Pointers and integers as 64 bits: an ILP64 build (NumPy's) takes int64
    # lengths; a 32-bit-int build reads the low half of the register, and
    # chunks stay far below 2**31.
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    for path in _numpy_openblas():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_cblas_", "64_"), ("cblas_", "64_"), ("cblas_", "")):
            try:
                axpy = getattr(lib, prefix + letter + "axpy" + suffix)
                axpby = getattr(lib, prefix + letter + "axpby" + suffix)
                scal = getattr(lib, prefix + letter + "scal" + suffix)
                gemm = getattr(lib, prefix + letter + "gemm" + suffix)
            except AttributeError:
                continue
            axpy.argtypes = [i64, c_float, ptr, i64, ptr, i64]
            axpby.argtypes = [i64, c_float, ptr, i64, c_float, ptr, i64]
            scal.argtypes = [i64, c_float, ptr, i64]
            # cblas_?gemm(order, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
            # the enums are C ints
            gemm.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, i64, i64, i64, c_float, ptr, i64,
                             ptr, i64, c_float, ptr, i64]
            for fn in (axpy, axpby, scal, gemm):
                fn.restype = None
            return Blas(dtype, axpy, axpby, scal, gemm)
    return None


def blas(dtype):
    """A :class:`Blas` for ``dtype`` through NumPy's OpenBLAS, or None (see the module docstring)."""
    if not USE_BLAS:
        return None
    key = np.dtype(dtype).str
    if key not in _blas:
        _blas[key] = _load_blas(dtype)
    return _blas[key]
