"""NumPy's own OpenBLAS, called directly where NumPy exposes too little.

``get(dtype)`` returns a :class:`Blas` bound to the OpenBLAS shipped inside
NumPy's wheel (so it shares NumPy's thread pool), or None when NumPy's BLAS
is something else (MKL, Accelerate, a system library) or ``USE_BLAS`` is
off; callers then keep to NumPy. What it adds:

* level-1 ``axpy`` (y += a x), ``axpby`` (y = a x + b y), ``scal`` (x *= a):
  the cblas calls Caffe's CPU solver makes, with the same roundings, run on
  OpenBLAS's threads. NumPy's ufuncs run on one core, and a thread of ours
  would only share a core with OpenBLAS's workers, which spin for about a
  tenth of a second after every GEMM;
* GEMM with ``beta`` and leading dimensions (NumPy's matmul has neither):
  accumulation without a temporary, and operands that are strided views.
"""
import ctypes
import glob
import os
import time

import numpy as np

# A level-1 chunk is shared among OpenBLAS's threads: 1 MiB per array
# measured best on 2 cores (48 ms for three passes over 57M floats, against
# 58 ms for whole arrays and 80 ms for NumPy ufuncs in chunks).
CHUNK = 1 << 18

# Tests switch it off to exercise the NumPy paths.
USE_BLAS = True

_ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


class Blas:
    """BLAS level-1 programs and a GEMM with beta, on NumPy arrays of one dtype.

    ``run(program)`` takes steps ``("axpy", a, x, y)``, ``("axpby", a, x,
    b, y)`` and ``("scal", a, x)`` over equally long arrays and runs them
    chunk by chunk, all steps on a chunk before the next chunk.
    """

    def __init__(self, dtype, axpy, axpby, scal, gemm):
        self.dtype = np.dtype(dtype)
        self._axpy, self._axpby, self._scal, self._gemm = axpy, axpby, scal, gemm

    def _layout(self, x, what):
        """(transpose flag, leading dimension) of a 2-d view for a row-major GEMM."""
        if x.dtype != self.dtype or x.ndim != 2:
            raise ValueError("gemm %s must be a 2-d %s array, got %s %s"
                             % (what, self.dtype, x.dtype, x.shape))
        item = self.dtype.itemsize
        (rows, cols), (s0, s1) = x.shape, x.strides
        if (s1 == item or cols == 1) and s0 % item == 0 and (rows == 1 or s0 >= cols * item):
            return NO_TRANS, max(s0 // item if rows > 1 else cols, cols, 1)
        if (s0 == item or rows == 1) and s1 % item == 0 and (cols == 1 or s1 >= rows * item):
            return TRANS, max(s1 // item if cols > 1 else rows, rows, 1)
        raise ValueError("gemm %s %s with strides %s is not a BLAS matrix" % (what, x.shape, x.strides))

    def takes(self, a, b, c):
        """Whether ``gemm(a, b, c)`` can run on these views as they are."""
        try:
            for x, what in ((a, "a"), (b, "b"), (c, "c")):
                self._layout(x, what)
        except ValueError:
            return False
        return c.ndim == 2 and (c.strides[1] == c.itemsize or c.shape[1] == 1)

    def gemm(self, a, b, c, alpha=1.0, beta=0.0):
        """``c = alpha * a @ b + beta * c`` on 2-d views with a unit stride (rows may be strided).

        ``a`` and ``b`` may be transposed views; ``c`` must be row-major.
        """
        (m, k), (k2, n) = a.shape, b.shape
        if k2 != k or c.shape != (m, n):
            raise ValueError("gemm shapes %s @ %s -> %s" % (a.shape, b.shape, c.shape))
        ta, lda = self._layout(a, "a")
        tb, ldb = self._layout(b, "b")
        tc, ldc = self._layout(c, "c")
        if (tc != NO_TRANS and m > 1) or (c.strides[1] != c.itemsize and n > 1):
            raise ValueError("gemm c must be row-major, got strides %s" % (c.strides,))
        self._gemm(_ROW_MAJOR, ta, tb, m, n, k, float(alpha), a.ctypes.data, lda,
                   b.ctypes.data, ldb, float(beta), c.ctypes.data, ldc)

    def try_gemm(self, a, b, c, alpha=1.0, beta=0.0):
        """``gemm`` where the views are BLAS matrices (True), else nothing (False)."""
        try:
            self.gemm(a, b, c, alpha, beta)
        except ValueError:
            return False
        return True

    def run(self, program):
        if not program:
            return
        size = program[0][2].size
        item = self.dtype.itemsize
        steps = []
        for step in program:
            arrays = [a for a in step[1:] if isinstance(a, np.ndarray)]
            for a in arrays:
                # 1-d with unit stride is contiguous (cheaper to ask than ``flags``)
                if a.dtype != self.dtype or a.size != size or not (
                        (a.ndim == 1 and (a.strides[0] == item or size <= 1)) or a.flags.c_contiguous):
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
        for lo in range(0, size, CHUNK):
            n = min(CHUNK, size - lo)
            off = lo * item
            for step in steps:
                fn = step[0]
                if fn is self._axpby:
                    fn(n, step[1], step[2] + off, 1, step[3], step[4] + off, 1)
                elif fn is self._axpy:
                    fn(n, step[1], step[2] + off, 1, step[3] + off, 1)
                else:
                    fn(n, step[1], step[2] + off, 1)


_cache = {}


def _numpy_openblas():
    """Paths of the OpenBLAS shipped inside NumPy's wheel (Linux, macOS, Windows layouts)."""
    base = os.path.dirname(np.__file__)
    found = []
    for pattern in (base + ".libs/*openblas*", base + "/.dylibs/*openblas*",
                    base + "/../numpy.libs/*openblas*"):
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


def get(dtype):
    """A :class:`Blas` for ``dtype`` through NumPy's OpenBLAS, or None (see the module docstring)."""
    if not USE_BLAS:
        return None
    key = np.dtype(dtype).str
    if key not in _cache:
        _cache[key] = _load_blas(dtype)
    return _cache[key]


class GemmClock:
    """Seconds spent in GEMMs while active: NumPy's ``matmul`` and ``Blas.gemm``.

    For ``protonet time``: every GEMM of the CPU path goes through one of the
    two (layers call ``xp.matmul`` or this module's ``gemm``), so the rest of
    a layer's time is what runs outside the BLAS. Both are patched for the
    duration of the ``with`` block and restored after; a GEMM called from
    inside another (none today) is counted once.
    """

    def __init__(self):
        self.seconds = 0.0
        self._depth = 0

    def _timed(self, fn):
        def timed(*args, **kwargs):
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self._depth -= 1
        return timed

    def __enter__(self):
        self._saved = np.matmul, Blas.gemm
        np.matmul = self._timed(self._saved[0])
        Blas.gemm = self._timed(self._saved[1])
        return self

    def __exit__(self, *exc):
        np.matmul, Blas.gemm = self._saved
        return False
