"""CUDA kernels for the layers whose generic CuPy form is many small launches.

On NumPy, im2col/col2im, pooling and LRN are loops of strided-view steps
(one per kernel tap or window row): cheap per step on a CPU, but each step
is a kernel launch on a GPU, and col2im alone would be over a hundred for
an 11x11 convolution. Here each is one launch with one thread per output
element (gathers, never atomics, so sums run in a fixed order and repeat
exactly).

Every kernel is a grid-stride loop over a flat index, in plain C++ with
``T`` the element type (and ``CT`` a pooling choice's integer type), so the
sources also compile on the host with blockIdx/threadIdx stand-ins: the CPU
test suite runs them that way (tests/fakecupy.py) against the NumPy paths.

Only 2-d geometries have kernels; other shapes keep the generic code.
"""
import numpy as np

from . import backend

_PRELUDE = r"""
#define PN_LOOP(i, n) \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
       i += (long long)blockDim.x * gridDim.x)
__device__ __forceinline__ float pn_pow(float a, float b) { return powf(a, b); }
__device__ __forceinline__ double pn_pow(double a, double b) { return pow(a, b); }
// The pooling windows o (starting at o*s - p, k long) that hold position x: o in [*lo, *hi).
__device__ __forceinline__ void pn_windows_over(int x, int k, int s, int p, int n, int* lo, int* hi) {
  *lo = (x + p < k) ? 0 : (x + p - k) / s + 1;
  *hi = (x + p) / s + 1;
  if (*hi > n) *hi = n;
}
// Flat index i of a (planes, rows, cols) array as (plane, row, col).
__device__ __forceinline__ long long pn_cell(long long i, int rows, int cols, int* r, int* c) {
  *c = i % cols;
  *r = (i / cols) % rows;
  return i / ((long long)cols * rows);
}
"""

_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double",
          np.dtype(np.int8): "signed char", np.dtype(np.int16): "short",
          np.dtype(np.int32): "int"}

_IM2COL = r"""
extern "C" __global__ void pn_im2col(const T* img, T* col, long long total,
    int C, int H, int W, int N, int OH, int OW, int kh, int kw,
    int ph, int pw, int sh, int sw, int dh, int dw) {
  PN_LOOP(i, total) {
    long long t = i;
    int ox = t % OW; t /= OW;
    int oy = t % OH; t /= OH;
    int n = t % N; t /= N;
    int kj = t % kw; t /= kw;
    int ki = t % kh;
    int c = t / kh;
    int y = oy * sh - ph + ki * dh;
    int x = ox * sw - pw + kj * dw;
    col[i] = (y >= 0 && y < H && x >= 0 && x < W)
        ? img[(((long long)n * C + c) * H + y) * W + x] : (T)0;
  }
}
"""

_COL2IM = r"""
extern "C" __global__ void pn_col2im(const T* col, T* img, long long total,
    int C, int H, int W, int N, int OH, int OW, int kh, int kw,
    int ph, int pw, int sh, int sw, int dh, int dw) {
  PN_LOOP(i, total) {
    long long t = i;
    int x = t % W; t /= W;
    int y = t % H; t /= H;
    int c = t % C;
    int n = t / C;
    T sum = 0;
    for (int ki = 0; ki < kh; ++ki) {
      int yy = y + ph - ki * dh;
      if (yy < 0 || yy % sh) continue;
      int oy = yy / sh;
      if (oy >= OH) continue;
      for (int kj = 0; kj < kw; ++kj) {
        int xx = x + pw - kj * dw;
        if (xx < 0 || xx % sw) continue;
        int ox = xx / sw;
        if (ox >= OW) continue;
        sum += col[((((long long)(c * kh + ki) * kw + kj) * N + n) * OH + oy) * OW + ox];
      }
    }
    img[i] = sum;
  }
}
"""

# Pooling: window (a, b) starts at (a*sh - ph, b*sw - pw), unclamped; a
# choice is tap + 1 counted from that start (0: no cell won), the layout
# protonet's Pool2d keeps on every backend.
_MAX_POOL_FORWARD = r"""
extern "C" __global__ void pn_max_pool_forward(const T* x, T* top, CT* choice, long long total,
    int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw) {
  PN_LOOP(i, total) {
    int a, b;
    long long plane = pn_cell(i, OH, OW, &a, &b);
    int hs = a * sh - ph, ws = b * sw - pw;
    int h0 = hs > 0 ? hs : 0, w0 = ws > 0 ? ws : 0;
    int h1 = hs + kh < H ? hs + kh : H, w1 = ws + kw < W ? ws + kw : W;
    const T* p = x + plane * H * W;
    // Caffe: start at -FLT_MAX, keep the first strictly larger value (NaN never wins)
    T best = (T)-3.40282346638528859812e+38;   // exactly -FLT_MAX in float and double
    int pick = 0;
    for (int h = h0; h < h1; ++h)
      for (int w = w0; w < w1; ++w) {
        T v = p[h * W + w];
        if (v > best) { best = v; pick = (h - hs) * kw + (w - ws) + 1; }
      }
    top[i] = best;
    choice[i] = (CT)pick;
  }
}
"""

_MAX_POOL_BACKWARD = r"""
extern "C" __global__ void pn_max_pool_backward(const T* dy, const CT* choice, T* dx, long long total,
    int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw) {
  PN_LOOP(i, total) {
    int h, w, a0, a1, b0, b1;
    long long plane = pn_cell(i, H, W, &h, &w);
    pn_windows_over(h, kh, sh, ph, OH, &a0, &a1);
    pn_windows_over(w, kw, sw, pw, OW, &b0, &b1);
    long long off = plane * OH * OW;
    T g = 0;
    for (int a = a0; a < a1; ++a)
      for (int b = b0; b < b1; ++b) {
        int tap = (h - (a * sh - ph)) * kw + (w - (b * sw - pw)) + 1;
        if ((int)choice[off + a * OW + b] == tap) g += dy[off + a * OW + b];
      }
    dx[i] = g;
  }
}
"""

# AVE divides by the window clipped to the padded extent (padding counts,
# cells past it do not), as Caffe does.
_AVE_POOL_FORWARD = r"""
extern "C" __global__ void pn_ave_pool_forward(const T* x, T* top, long long total,
    int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw) {
  PN_LOOP(i, total) {
    int a, b;
    long long plane = pn_cell(i, OH, OW, &a, &b);
    int hs = a * sh - ph, ws = b * sw - pw;
    int he = hs + kh < H + ph ? hs + kh : H + ph;
    int we = ws + kw < W + pw ? ws + kw : W + pw;
    int size = (he - hs) * (we - ws);
    if (hs < 0) hs = 0;
    if (ws < 0) ws = 0;
    if (he > H) he = H;
    if (we > W) we = W;
    const T* p = x + plane * H * W;
    T sum = 0;
    for (int h = hs; h < he; ++h)
      for (int w = ws; w < we; ++w) sum += p[h * W + w];
    top[i] = sum / size;
  }
}
"""

_AVE_POOL_BACKWARD = r"""
extern "C" __global__ void pn_ave_pool_backward(const T* dy, T* dx, long long total,
    int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw) {
  PN_LOOP(i, total) {
    int h, w, a0, a1, b0, b1;
    long long plane = pn_cell(i, H, W, &h, &w);
    pn_windows_over(h, kh, sh, ph, OH, &a0, &a1);
    pn_windows_over(w, kw, sw, pw, OW, &b0, &b1);
    const T* d = dy + plane * OH * OW;
    T g = 0;
    for (int a = a0; a < a1; ++a) {
      int hs = a * sh - ph;
      int he = hs + kh < H + ph ? hs + kh : H + ph;
      for (int b = b0; b < b1; ++b) {
        int ws = b * sw - pw;
        int we = ws + kw < W + pw ? ws + kw : W + pw;
        g += d[a * OW + b] / ((he - hs) * (we - ws));
      }
    }
    dx[i] = g;
  }
}
"""

# LRN across channels: each thread sums its own window (local_size reads)
# instead of Caffe's running sum, which loses precision to cancellation. The
# top is a separate multiply: threads read their neighbours' x, so writing y
# here would race when the layer runs in place.
_LRN_SCALE = r"""
extern "C" __global__ void pn_lrn_scale(const T* x, T* scale, T* scale_pow, long long total,
    int C, int S, int size, T alpha_over_n, T k, T neg_beta) {
  PN_LOOP(i, total) {
    int c = (i / S) % C;
    long long base = i - (long long)c * S;
    int lo = c - (size - 1) / 2, hi = lo + size;
    if (lo < 0) lo = 0;
    if (hi > C) hi = C;
    T sum = 0;
    for (int j = lo; j < hi; ++j) { T v = x[base + (long long)j * S]; sum += v * v; }
    T s = k + alpha_over_n * sum;
    T p = pn_pow(s, neg_beta);
    scale[i] = s;
    scale_pow[i] = p;
  }
}
"""

_LRN_BACKWARD = r"""
extern "C" __global__ void pn_lrn_backward(const T* x, const T* y, const T* dy, const T* scale,
    const T* scale_pow, T* dx, long long total, int C, int S, int size, T coeff) {
  PN_LOOP(i, total) {
    int c = (i / S) % C;
    long long base = i - (long long)c * S;
    // the windows that contain channel c are those centred within reach of it
    int lo = c - size / 2, hi = lo + size;
    if (lo < 0) lo = 0;
    if (hi > C) hi = C;
    T acc = 0;
    for (int j = lo; j < hi; ++j) {
      long long q = base + (long long)j * S;
      acc += dy[q] * y[q] / scale[q];
    }
    dx[i] = dy[i] * scale_pow[i] + coeff * x[i] * acc;
  }
}
"""

# Momentum SGD's update of one parameter in one pass (Caffe's regularize, update
# value and step, in its order: g + decay * w, times the rate, h = m * h + that,
# w -= h), where CuPy would run five elementwise passes over 230 MB arrays.
_SGD_UPDATE = r"""
extern "C" __global__ void pn_sgd_update(T* w, const T* g, T* h, long long total,
    T decay, T rate, T momentum) {
  PN_LOOP(i, total) {
    T s = decay != (T)0 ? g[i] + decay * w[i] : g[i];
    s = s * rate;
    T v = h[i] * momentum;
    v = v + s;
    h[i] = v;
    w[i] = w[i] - v;
  }
}
"""

_SOURCES = {
    "pn_im2col": _IM2COL, "pn_col2im": _COL2IM,
    "pn_max_pool_forward": _MAX_POOL_FORWARD, "pn_max_pool_backward": _MAX_POOL_BACKWARD,
    "pn_ave_pool_forward": _AVE_POOL_FORWARD, "pn_ave_pool_backward": _AVE_POOL_BACKWARD,
    "pn_lrn_scale": _LRN_SCALE, "pn_lrn_backward": _LRN_BACKWARD,
    "pn_sgd_update": _SGD_UPDATE,
}

_THREADS = 256
_MAX_BLOCKS = 1 << 16
_compiled = {}


def source(name, dtype, ctype=None):
    """The full source of kernel ``name`` for element type ``dtype`` (and choice type ``ctype``)."""
    head = "typedef %s T;\n" % _CTYPE[np.dtype(dtype)]
    if ctype is not None:
        head += "typedef %s CT;\n" % _CTYPE[np.dtype(ctype)]
    return head + _PRELUDE + _SOURCES[name]


def supported(*arrays):
    """True when these are C-contiguous device arrays of a dtype the kernels are built for."""
    return all(backend.is_device_array(a) and a.flags.c_contiguous
               and np.dtype(a.dtype) in (np.float32, np.float64) for a in arrays)


def _launch(name, total, args, dtype, ctype=None):
    cp = backend._cupy  # noqa: SLF001  (backend owns the import)
    key = (name, np.dtype(dtype).str, None if ctype is None else np.dtype(ctype).str, id(cp))
    kern = _compiled.get(key)
    if kern is None:
        kern = _compiled[key] = cp.RawKernel(source(name, dtype, ctype), name)
    if total <= 0:
        return
    blocks = min((total + _THREADS - 1) // _THREADS, _MAX_BLOCKS)
    kern((blocks,), (_THREADS,), tuple(args))


def _contiguous(a, what):
    if not a.flags.c_contiguous:
        raise ValueError("%s must be C-contiguous for the CUDA kernels" % what)
    return a


def _ints(*values):
    return tuple(np.int32(v) for v in values)


def im2col(img, col, kernel, pad, stride, dilation, out_size):
    """``col`` (C, kh, kw, N, OH, OW) = the windows of ``img`` (N, C, H, W); padding reads 0."""
    N, C, H, W = img.shape
    _contiguous(img, "the image")
    _contiguous(col, "the column buffer")
    OH, OW = out_size
    total = C * kernel[0] * kernel[1] * N * OH * OW
    _launch("pn_im2col", total, (img, col, np.int64(total))
            + _ints(C, H, W, N, OH, OW, kernel[0], kernel[1], pad[0], pad[1], stride[0], stride[1],
                    dilation[0], dilation[1]), img.dtype)


def col2im(col, img, kernel, pad, stride, dilation, out_size):
    """``img`` (N, C, H, W) = the sum of the columns that read each pixel (overwritten)."""
    N, C, H, W = img.shape
    _contiguous(col, "the column buffer")
    _contiguous(img, "the image")
    OH, OW = out_size
    total = N * C * H * W
    _launch("pn_col2im", total, (col, img, np.int64(total))
            + _ints(C, H, W, N, OH, OW, kernel[0], kernel[1], pad[0], pad[1], stride[0], stride[1],
                    dilation[0], dilation[1]), img.dtype)


def _pool_ints(in_shape, out_shape, kernel, stride, pad):
    return _ints(in_shape[2], in_shape[3], out_shape[2], out_shape[3], kernel[0], kernel[1],
                 stride[0], stride[1], pad[0], pad[1])


def max_pool_forward(x, top, choice, kernel, stride, pad):
    """top = window maxima, choice = tap + 1 of Caffe's pick (0: none)."""
    for a, what in ((x, "the bottom"), (top, "the top"), (choice, "the choice")):
        _contiguous(a, what)
    total = top.size
    _launch("pn_max_pool_forward", total, (x, top, choice, np.int64(total))
            + _pool_ints(x.shape, top.shape, kernel, stride, pad), x.dtype, choice.dtype)


def max_pool_backward(top_diff, choice, dx, kernel, stride, pad):
    """dx = the sum of the top diffs of the windows that chose each cell (overwritten)."""
    for a, what in ((top_diff, "the top diff"), (choice, "the choice"), (dx, "the bottom diff")):
        _contiguous(a, what)
    total = dx.size
    _launch("pn_max_pool_backward", total, (top_diff, choice, dx, np.int64(total))
            + _pool_ints(dx.shape, top_diff.shape, kernel, stride, pad), dx.dtype, choice.dtype)


def ave_pool_forward(x, top, kernel, stride, pad):
    _contiguous(x, "the bottom")
    _contiguous(top, "the top")
    total = top.size
    _launch("pn_ave_pool_forward", total, (x, top, np.int64(total))
            + _pool_ints(x.shape, top.shape, kernel, stride, pad), x.dtype)


def ave_pool_backward(top_diff, dx, kernel, stride, pad):
    _contiguous(top_diff, "the top diff")
    _contiguous(dx, "the bottom diff")
    total = dx.size
    _launch("pn_ave_pool_backward", total, (top_diff, dx, np.int64(total))
            + _pool_ints(dx.shape, top_diff.shape, kernel, stride, pad), dx.dtype)


def lrn_forward(x, scale, scale_pow, y, size, alpha, beta, k):
    """Across-channel LRN on (N, C, H, W): scale, scale ** -beta and y = x * scale ** -beta (``y`` may be ``x``)."""
    for a, what in ((x, "the bottom"), (scale, "the scale"), (scale_pow, "the scale power")):
        _contiguous(a, what)
    N, C, H, W = x.shape
    t = x.dtype.type
    total = x.size
    _launch("pn_lrn_scale", total, (x, scale, scale_pow, np.int64(total))
            + _ints(C, H * W, size) + (t(alpha / size), t(k), t(-beta)), x.dtype)
    backend.xp_of(x).multiply(x, scale_pow, out=y)


def lrn_backward(x, y, dy, scale, scale_pow, dx, size, alpha, beta):
    """dx = dy * scale ** -beta - 2 alpha beta / n * x * window_sum(dy * y / scale)."""
    for a, what in ((x, "the bottom"), (y, "the top"), (dy, "the top diff"), (scale, "the scale"),
                    (scale_pow, "the scale power"), (dx, "the bottom diff")):
        _contiguous(a, what)
    N, C, H, W = x.shape
    t = x.dtype.type
    total = x.size
    _launch("pn_lrn_backward", total, (x, y, dy, scale, scale_pow, dx, np.int64(total))
            + _ints(C, H * W, size) + (t(-2.0 * alpha * beta / size),), x.dtype)


def sgd_update(w, g, h, decay, rate, momentum):
    """Momentum SGD with L2 decay on flat arrays: h = momentum * h + rate * (g + decay * w); w -= h."""
    for a, what in ((w, "the weights"), (g, "the gradient"), (h, "the history")):
        _contiguous(a, what)
    t = w.dtype.type
    total = w.size
    _launch("pn_sgd_update", total, (w, g, h, np.int64(total), t(decay), t(rate), t(momentum)), w.dtype)
