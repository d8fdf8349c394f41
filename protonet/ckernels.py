"""The compiled CPU kernels (protonet/_ckernels.c) through ctypes, split over threads.

im2col, col2im, MAX/AVE pooling and LRN across channels are memory passes that NumPy can only run as many
strided copies, one Python step per kernel tap; compiled, each is one pass over the data.
setup.py builds the library when the package is installed. Without it (no C compiler at
install time) or with ``PROTONET_CKERNELS=0`` every caller keeps its NumPy path, which
computes the same values: the tests compare the two.

ctypes releases the GIL during a call, so a pass is split into contiguous ranges of images
(or planes) run on a small pool of Python threads: as many as the BLAS may use, the
environment's ``PROTONET_NUM_THREADS``, ``OMP_NUM_THREADS`` or ``OPENBLAS_NUM_THREADS``
(in that order), else the CPUs this process may run on. Passes under about a million
elements stay on the calling thread, where the hand-off would cost more than it saves.
"""
import ctypes
import glob
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

VERSION = 6
# elements per thread below which a pass is not split
MIN_SPLIT = 1 << 19

_lib = None
_loaded = False
_lock = threading.Lock()
_pool = None
_threads = None

_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
_ISUFFIX = {np.dtype(np.int8): "i8", np.dtype(np.int16): "i16", np.dtype(np.int32): "i32"}


def _library_path():
    here = os.path.dirname(os.path.abspath(__file__))
    found = sorted(glob.glob(os.path.join(here, "_ckernels*.so")) + glob.glob(os.path.join(here, "_ckernels*.pyd")))
    return found[0] if found else None


def _load():
    global _lib, _loaded
    with _lock:
        if _loaded:
            return _lib
        _loaded = True
        if os.environ.get("PROTONET_CKERNELS", "1").strip() in ("0", "no", "off", "false"):
            return None
        path = _library_path()
        if path is None:
            return None
        try:
            lib = ctypes.CDLL(path)
            if lib.protonet_ckernels_version() != VERSION:
                return None
        except (OSError, AttributeError):
            return None
        for name, argtypes in _signatures():
            fn = getattr(lib, name)
            fn.argtypes = argtypes
            fn.restype = None
        _lib = lib
        return lib


def _signatures():
    """(name, ctypes argtypes) of every kernel the library exports (all return void)."""
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    out = []
    for kind, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        out += [("im2col_" + kind, [ptr] * 2 + [i64] * 16), ("col2im_" + kind, [ptr] * 2 + [i64] * 16),
                ("avepool_fwd_" + kind, [ptr] * 2 + [i64] * 12), ("avepool_bwd_" + kind, [ptr] * 2 + [i64] * 12),
                ("lrn_fwd_" + kind, [ptr] * 4 + [i64] * 3 + [real] * 3 + [i64] * 2),
                ("lrn_bwd_" + kind, [ptr] * 6 + [i64] * 3 + [real] + [i64] * 2),
                ("lrn_within_fwd_" + kind, [ptr] * 4 + [i64] * 3 + [real] * 2 + [i64] * 2),
                ("lrn_within_bwd_" + kind, [ptr] * 6 + [i64] * 3 + [real] + [i64] * 2),
                ("wino_weights_" + kind, [ptr] * 3 + [i64] * 7),
                ("wino_weights_grad_" + kind, [ptr] * 3 + [i64] * 7),
                ("bias_relu_" + kind, [ptr] * 2 + [i64] * 5),
                ("ungroup_bias_relu_" + kind, [ptr] * 3 + [i64] * 6)]
        for ik in ("i8", "i16", "i32"):
            out += [("maxpool_%s_%s_%s" % (d, kind, ik), [ptr] * 3 + [i64] * 12) for d in ("fwd", "bwd")]
        for r in (3, 5):
            out += [("wino_input_%s_%d" % (kind, r), [ptr] * 2 + [i64] * 11),
                    ("wino_output_%s_%d" % (kind, r), [ptr] * 3 + [i64] * 10),
                    ("wino_grad_%s_%d" % (kind, r), [ptr] * 2 + [i64] * 9)]
    return out


def available():
    """Whether the compiled kernels are built and enabled."""
    return _load() is not None


def handles(dtype):
    """Whether the compiled kernels take arrays of ``dtype`` (when C-contiguous)."""
    return available() and np.dtype(dtype) in _SUFFIX


def num_threads():
    global _threads
    if _threads is None:
        n = None
        for var in ("PROTONET_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            try:
                n = int(os.environ.get(var, "").split(",")[0])
                break
            except ValueError:
                continue
        if not n or n < 1:
            try:
                n = len(os.sched_getaffinity(0))
            except AttributeError:
                n = os.cpu_count() or 1
        _threads = max(1, n)
    return _threads


def _forget_pool():
    # a forked child has none of the parent's threads: it starts a pool of its own
    global _pool, _lock
    _pool = None
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _run(fn, head, count, work):
    """fn(*head, lo, hi) over [0, count), split into up to num_threads() ranges."""
    parts = min(num_threads(), count, max(1, work // MIN_SPLIT))
    if parts <= 1:
        fn(*head, 0, count)
        return
    global _pool
    if _pool is None:
        with _lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=num_threads() - 1, thread_name_prefix="protonet-kernel")
    bounds = [count * k // parts for k in range(parts + 1)]
    futures = [_pool.submit(fn, *head, bounds[k], bounds[k + 1]) for k in range(1, parts)]
    fn(*head, bounds[0], bounds[1])
    for f in futures:
        f.result()


def _ok(*arrays):
    """The kernels take C-contiguous NumPy arrays of one float type."""
    dtype = arrays[0].dtype
    return all(isinstance(a, np.ndarray) and a.flags.c_contiguous and a.dtype == dtype for a in arrays) \
        and dtype in _SUFFIX


def _ptr(a):
    return a.ctypes.data


def _column_pass(name, img, col, source, target, kernel, pad, stride, dilation, out_size):
    lib = _load()
    if lib is None or len(kernel) != 2 or not _ok(img, col):
        return False
    n, c, h, w = img.shape
    fn = getattr(lib, name + _SUFFIX[img.dtype])
    _run(fn, (_ptr(source), _ptr(target), n, c, h, w, *kernel, *pad, *stride, *dilation, *out_size), n, col.size)
    return True


def im2col(img, col, kernel, pad, stride, dilation, out_size):
    """col (C, KH, KW, N, OH, OW) = the columns of img (N, C, H, W); False when not applicable."""
    return _column_pass("im2col_", img, col, img, col, kernel, pad, stride, dilation, out_size)


def col2im(col, img, kernel, pad, stride, dilation, out_size):
    """img (N, C, H, W) = the sum of col's (C, KH, KW, N, OH, OW) columns per pixel."""
    return _column_pass("col2im_", img, col, col, img, kernel, pad, stride, dilation, out_size)


def _choice_ok(choice):
    return isinstance(choice, np.ndarray) and choice.flags.c_contiguous and choice.dtype in _ISUFFIX


def _planes(fn, pointers, image, pooled, kernel, stride, pad):
    """fn(*pointers, H, W, KH, KW, SH, SW, PH, PW, OH, OW, p0, p1) over the N*C planes of ``image``."""
    n, c, h, w = image.shape
    _run(fn, pointers + (h, w, *kernel, *stride, *pad, *pooled.shape[2:]), n * c, image.size)
    return True


def max_pool_forward(x, top, choice, kernel, stride, pad):
    """top (and choice, if not None) of MAX pooling x (N, C, H, W); False when not applicable."""
    lib = _load()
    if lib is None or not _ok(x, top) or (choice is not None and not _choice_ok(choice)):
        return False
    itype = _ISUFFIX[choice.dtype] if choice is not None else "i32"
    fn = getattr(lib, "maxpool_fwd_%s_%s" % (_SUFFIX[x.dtype], itype))
    return _planes(fn, (_ptr(x), _ptr(top), None if choice is None else _ptr(choice)), x, top, kernel, stride, pad)


def max_pool_backward(top_diff, choice, dx, kernel, stride, pad):
    lib = _load()
    if lib is None or not _ok(top_diff, dx) or not _choice_ok(choice):
        return False
    fn = getattr(lib, "maxpool_bwd_%s_%s" % (_SUFFIX[dx.dtype], _ISUFFIX[choice.dtype]))
    return _planes(fn, (_ptr(top_diff), _ptr(choice), _ptr(dx)), dx, top_diff, kernel, stride, pad)


def ave_pool_forward(x, top, kernel, stride, pad):
    lib = _load()
    if lib is None or not _ok(x, top):
        return False
    return _planes(getattr(lib, "avepool_fwd_" + _SUFFIX[x.dtype]), (_ptr(x), _ptr(top)), x, top, kernel, stride, pad)


def ave_pool_backward(top_diff, dx, kernel, stride, pad):
    lib = _load()
    if lib is None or not _ok(top_diff, dx):
        return False
    return _planes(getattr(lib, "avepool_bwd_" + _SUFFIX[dx.dtype]), (_ptr(top_diff), _ptr(dx)), dx, top_diff,
                   kernel, stride, pad)


# positions per LRN work unit (LRN_BLOCK in _ckernels.c)
_LRN_BLOCK = 256
# the ring of planes the window sum keeps (across channels), the box's side (within); larger
# windows stay on NumPy's running sums
LRN_MAX_SIZE = 15


def _lrn(direction, within, arrays, size, constants):
    """One LRN pass: across channels in units of (image, LRN_BLOCK positions), within a channel
    plane by plane; ``constants`` are the kernel's Dtype scalars after the geometry."""
    lib = _load()
    x = arrays[0]
    if lib is None or x.ndim != 4 or size > LRN_MAX_SIZE or not _ok(*arrays):
        return False
    n, c, h, w = x.shape
    real = np.dtype(x.dtype).type
    constants = tuple(float(real(v)) for v in constants)
    pointers = tuple(_ptr(a) for a in arrays)
    if within:
        fn = getattr(lib, "lrn_within_%s_%s" % (direction, _SUFFIX[x.dtype]))
        _run(fn, pointers + (h, w, size) + constants, n * c, x.size)
    else:
        fn = getattr(lib, "lrn_%s_%s" % (direction, _SUFFIX[x.dtype]))
        _run(fn, pointers + (c, h * w, size) + constants, n * -(-(h * w) // _LRN_BLOCK), x.size)
    return True


def lrn_forward(x, scale, scale_pow, top, size, alpha, beta, k, within=False):
    """LRN of x (N, C, H, W): scale, scale ** -beta and top; False when not applicable.

    Across channels scale = k + alpha/size * sum x^2; within a channel (Caffe's
    WITHIN_CHANNEL, whose shift is 1 whatever k) 1 + alpha/size^2 * box(x^2)."""
    if within:
        return _lrn("fwd", True, (x, scale, scale_pow, top), size, (alpha / (size * size), -beta))
    return _lrn("fwd", False, (x, scale, scale_pow, top), size, (alpha / size, k, -beta))


def lrn_backward(x, y, dy, scale, scale_pow, dx, size, alpha, beta, within=False):
    """dx of the LRN whose forward left y, scale and scale_pow (dx may be dy)."""
    area = size * size if within else size
    return _lrn("bwd", within, (x, y, dy, scale, scale_pow, dx), size, (-2.0 * alpha * beta / area,))


# ---- Winograd F(2x2, r x r) transforms (protonet/layers/_winograd.py runs the GEMMs between)
# ``m`` is a _winograd.Matrices: the kernel transforms take its G (m.g, (a, r) float64); the
# tile transforms are compiled per kernel size m.r (3 or 5), B^T and A^T written out.
def winograd_weights(m, w, u, flip=False):
    """u (a*a, K, C) = G w G^T of w (K, C, r, r); flip: u (a*a, C, K) of w turned half a circle."""
    lib = _load()
    K, C = w.shape[:2]
    _run(getattr(lib, "wino_weights_" + _SUFFIX[w.dtype]),
         (_ptr(w), _ptr(u), _ptr(m.g), m.a, m.r, K, C, int(flip)), K * C, u.size)


def winograd_weights_grad(m, du, dw, accumulate):
    """dw (K, C, r, r) = (or +=) G^T du G of du (a*a, K, C)."""
    lib = _load()
    K, C = dw.shape[:2]
    _run(getattr(lib, "wino_weights_grad_" + _SUFFIX[dw.dtype]),
         (_ptr(du), _ptr(dw), _ptr(m.g), m.a, m.r, K, C, int(accumulate)), K * C, du.size)


def winograd_input(m, x, v, pad, tiles, rows):
    """v (a*a, C, tiles) = B^T d B over tile rows [r0, r1) of x (N, C, H, W) padded by ``pad``."""
    lib = _load()
    _, C, H, W = x.shape
    _run(getattr(lib, "wino_input_%s_%d" % (_SUFFIX[x.dtype], m.r)),
         (_ptr(x), _ptr(v), C, H, W, *pad, *tiles, *rows), C, v.size)


def winograd_output(m, mm, y, bias, tiles, rows, relu=False):
    """y (N, K, Ho, Wo) = A^T mm A (+ bias, then max(., 0) when ``relu``) over tile rows
    [r0, r1), mm (a*a, K, tiles)."""
    lib = _load()
    _, K, Ho, Wo = y.shape
    _run(getattr(lib, "wino_output_%s_%d" % (_SUFFIX[y.dtype], m.r)),
         (_ptr(mm), _ptr(y), None if bias is None else _ptr(bias), K, Ho, Wo, *tiles, *rows, int(relu)),
         K, mm.size)


def bias_relu(y, bias, relu):
    """y (N, K, P) += bias[k] (bias None: none), then y = max(y, 0) when ``relu``, in place."""
    lib = _load()
    if lib is None or not _ok(y) or (bias is not None and not _ok(y, bias)):
        return False
    N, K, P = y.shape
    _run(getattr(lib, "bias_relu_" + _SUFFIX[y.dtype]),
         (_ptr(y), None if bias is None else _ptr(bias), P, K, int(relu)), N * K, y.size)
    return True


def ungroup_bias_relu(product, y, bias, relu):
    """y (N, K, P) = product (K, N*P) regrouped, + bias[k] (None: none), then max(y, 0) when
    ``relu``: ``y[n, k] = product[k, n*P:(n+1)*P]`` and bias_relu in one pass; False when not
    applicable."""
    lib = _load()
    if lib is None or not _ok(y, product) or (bias is not None and not _ok(y, bias)):
        return False
    N, K, P = y.shape
    if product.shape != (K, N * P):
        raise ValueError("ungroup_bias_relu: product %s does not regroup into %s" % (product.shape, y.shape))
    _run(getattr(lib, "ungroup_bias_relu_" + _SUFFIX[y.dtype]),
         (_ptr(y), _ptr(product), None if bias is None else _ptr(bias), P, K, N, int(relu)), N * K, y.size)
    return True


def winograd_grad(m, dy, mm, tiles, rows):
    """mm (a*a, K, tiles) = A dy A^T over tile rows [r0, r1) of dy (N, K, Ho, Wo)."""
    lib = _load()
    _, K, Ho, Wo = dy.shape
    _run(getattr(lib, "wino_grad_%s_%d" % (_SUFFIX[dy.dtype], m.r)),
         (_ptr(dy), _ptr(mm), K, Ho, Wo, *tiles, *rows), K, mm.size)
