"""Pooling: MAX, AVE and STOCHASTIC over 2-d windows, with Caffe's output-size rules.

Windows are evaluated by strided views. Each plan loops over whichever is
shorter: the kernel taps (each step touches one strided view of the input
for every output at once) or the output positions (each step reduces one
window; global pooling is a single step). On a GPU, MAX and AVE run as one
CUDA kernel per pass instead (protonet/cuda_kernels.py).
"""
import numpy as np

from ..layer import Layer, register, TRAIN
from ..proto import caffe_pb2
from .. import ckernels, cuda_kernels, rng
from ._scratch import scratch

P = caffe_pb2.PoolingParameter
FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)


def pooled_size(size, kernel, pad, stride, ceil_mode, any_pad):
    """Caffe's pooled length along one axis.

    Caffe rounds (size + 2 pad - kernel) / stride up (CEIL, the default) or
    down, plus one; then, when the layer has any padding, it drops a last
    window that would start in the padding instead of inside the image.
    """
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if any_pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _tap_steps(size, out, kernel, pad, stride):
    """Per tap i: (i, lo, hi, input slice) for the outputs whose window row i lies in the image."""
    steps = []
    for i in range(kernel):
        off = i - pad
        lo = max(0, -(-(-off) // stride))
        hi = min(out, (size - 1 - off) // stride + 1)
        if lo < hi:
            start = lo * stride + off
            steps.append((i, lo, hi, slice(start, start + (hi - lo - 1) * stride + 1, stride)))
    return steps


class _SeparableMax:
    """MAX pooling over taps as two 1-d passes: along W within rows, then along H.

    Caffe scans a window row by row from -FLT_MAX and keeps the first
    strictly larger value (NaN never wins), i.e. the first maximum in
    row-major order: the first row that holds the window's maximum, at that
    row's first maximum. So the W pass keeps each row window's maximum and
    its first tap, and the H pass picks the first row whose maximum is the
    largest; the values are the same ``fmax`` reductions either way. Every
    pass reads contiguous memory: for a stride above 1 the W pass first
    splits the input into its column phases ``x[..., p::stride]``, so that
    each tap is a contiguous slice of one phase. Per tap: a compare, an
    ``fmax`` and, for the choice, a branch-free multiply/maximum on small ints.
    Without a choice (TEST) the order is free: the H pass runs first, on
    whole input rows, and the W pass reads strided columns of its result.
    """

    def __init__(self, xp, dtype, shape, kernel, stride, pad, out_shape, itype):
        n, c, h, w = shape
        oh, ow = out_shape[2:]
        (kh, kw), (sh, sw), (ph_, pw_) = kernel, stride, pad
        self.kw, self.sw, self.itype = kw, sw, itype
        self.rows = _tap_steps(h, oh, kh, ph_, sh)
        # W taps as (tap, output range, phase, first index in the phase)
        self.cols = [(j, lo, hi, ws.start % sw, ws.start // sw)
                     for j, lo, hi, ws in _tap_steps(w, ow, kw, pw_, sw)]
        self.col_slices = _tap_steps(w, ow, kw, pw_, sw)
        self.dtype, self.out_shape = dtype, out_shape
        # phases from w on are empty and never read: a stride far above the width (a typo like
        # stride: 2147483648) must not make billions of them
        self.phase_shapes = ([(n, c, h, len(range(p, w, sw))) for p in range(min(sw, w))]
                             if sw > 1 else None)
        self.row_shape = (n, c, h, ow)
        self.col_shape = (n, c, oh, w)

    def _values(self, xp, x, top):
        """top = window maxima (no choice): along H on whole rows, then along W."""
        vmax = scratch("pool.vmax", xp, self.dtype, self.col_shape)
        for k, (i, lo, hi, hs) in enumerate(self.rows):
            v = vmax[:, :, lo:hi]
            if k == 0 and (lo, hi) == (0, self.out_shape[2]):
                xp.fmax(x[:, :, hs], -FLT_MAX, out=v)   # NaN and -inf give -FLT_MAX, as in Caffe
                continue
            if k == 0:
                vmax.fill(-FLT_MAX)
            xp.fmax(v, x[:, :, hs], out=v)
        top.fill(-FLT_MAX)
        for j, lo, hi, ws in self.col_slices:
            t = top[..., lo:hi]
            xp.fmax(t, vmax[..., ws], out=t)

    def forward(self, xp, x, top, choice=None):
        """top = window maxima; ``choice`` (if given) = tap + 1 of Caffe's pick, 0 for none."""
        if choice is None:
            self._values(xp, x, top)
            return
        # all buffers are transient: shared with the other pooling layers
        phases = None
        if self.phase_shapes is not None:
            phases = [scratch("pool.phase%d" % p, xp, self.dtype, shape)
                      for p, shape in enumerate(self.phase_shapes)]
            for p, buf in enumerate(phases):
                xp.copyto(buf, x[..., p::self.sw])
        hmax = scratch("pool.hmax", xp, self.dtype, self.row_shape)
        hmax.fill(-FLT_MAX)
        if choice is not None:
            hfirst = scratch("pool.hfirst", xp, self.itype, self.row_shape, zero=True)
            hmask = scratch("pool.hmask", xp, bool, self.row_shape)
            hmark = scratch("pool.hmark", xp, self.itype, self.row_shape)
            mask = scratch("pool.mask", xp, bool, self.out_shape)
            mark_all = scratch("pool.mark", xp, self.itype, self.out_shape)
        for j, lo, hi, p, k0 in self.cols:
            src = phases[p] if phases is not None else x
            v = src[..., k0:k0 + hi - lo]
            hv = hmax[..., lo:hi]
            if choice is not None:
                m, mark, hf = hmask[..., lo:hi], hmark[..., lo:hi], hfirst[..., lo:hi]
                xp.greater(v, hv, out=m)
                # taps come in increasing order: the last strictly greater one
                # (the largest mark) is the first maximum
                xp.multiply(m, self.itype(j + 1), out=mark)
                xp.maximum(hf, mark, out=hf)
            xp.fmax(hv, v, out=hv)
        top.fill(-FLT_MAX)
        if choice is not None:
            choice.fill(0)
        for i, lo, hi, hs in self.rows:
            v = hmax[:, :, hs]
            tv = top[:, :, lo:hi]
            if choice is not None:
                m, mark, cv = mask[:, :, lo:hi], mark_all[:, :, lo:hi], choice[:, :, lo:hi]
                xp.greater(v, tv, out=m)
                # tap + 1 = i * kw + (first tap along W + 1); a row without a
                # winner has max -FLT_MAX and is never strictly greater
                xp.add(hfirst[:, :, hs], self.itype(i * self.kw), out=mark)
                mark *= m
                xp.maximum(cv, mark, out=cv)
            xp.fmax(tv, v, out=tv)


class Pool2d:
    """One pooling geometry on (N, C, H, W) arrays: forward, then backward from saved choices.

    ``method``: P.MAX, P.AVE or P.STOCHASTIC; ``train`` picks stochastic
    sampling (TRAIN) or its probability-weighted average (TEST).
    Raises ValueError if the output would be empty.
    """

    def __init__(self, xp, dtype, method, shape, kernel, stride, pad, ceil_mode=True, train=True):
        self.xp, self.dtype, self.method, self.train = xp, np.dtype(dtype), method, train
        n, c, h, w = shape
        (kh, kw), (sh, sw), (ph_, pw_) = kernel, stride, pad
        any_pad = bool(ph_ or pw_)
        oh = pooled_size(h, kh, ph_, sh, ceil_mode, any_pad)
        ow = pooled_size(w, kw, pw_, sw, ceil_mode, any_pad)
        if oh <= 0 or ow <= 0:
            raise ValueError("input %dx%d gives an empty output (%dx%d) for kernel %dx%d, stride %dx%d, pad %dx%d"
                             % (h, w, oh, ow, kh, kw, sh, sw, ph_, pw_))
        self.in_shape = tuple(shape)
        self.out_shape = (n, c, oh, ow)
        self.kernel, self.stride, self.pad = (kh, kw), (sh, sw), (ph_, pw_)
        self.by_taps = kh * kw <= oh * ow
        if self.by_taps:
            self.rows = _tap_steps(h, oh, kh, ph_, sh)
            self.cols = _tap_steps(w, ow, kw, pw_, sw)
        # Unclamped window starts; AVE divides by the window clipped to H + pad
        # (padded cells count, cells past the padding do not).
        self.hstart = np.arange(oh) * sh - ph_
        self.wstart = np.arange(ow) * sw - pw_
        if method == P.AVE:
            dh = np.minimum(self.hstart + kh, h + ph_) - self.hstart
            dw = np.minimum(self.wstart + kw, w + pw_) - self.wstart
            self.divisor = xp.asarray((dh[:, None] * dw[None, :]).astype(self.dtype))
        # Chosen tap + 1 per output (tap = i * kw + j from the unclamped window
        # start; 0: none), in the narrowest integer type: the tap loop keeps it
        # with branch-free multiply/maximum, which masked copies are not.
        taps = kh * kw + 1
        itype = np.int8 if taps < 2 ** 7 else np.int16 if taps < 2 ** 15 else np.int32
        self.choice = None
        self._separable = None
        if method != P.AVE:
            self.choice = xp.empty(self.out_shape, itype)
        if method == P.MAX and self.by_taps:
            self._separable = _SeparableMax(xp, dtype, shape, kernel, stride, pad, self.out_shape, itype)
        # MAX at TEST computes the choice only when asked (backward, mask top).
        self._choice_valid = False
        self._cell = None

    # -- helpers ---------------------------------------------------------
    def _taps(self):
        kw = self.kernel[1]
        for i, hlo, hhi, hs in self.rows:
            for j, wlo, whi, ws in self.cols:
                yield i * kw + j, (Ellipsis, slice(hlo, hhi), slice(wlo, whi)), (Ellipsis, hs, ws)

    def _windows(self):
        h, w = self.in_shape[2:]
        kh, kw = self.kernel
        for a, hs in enumerate(self.hstart.tolist()):
            for b, ws in enumerate(self.wstart.tolist()):
                h0, h1 = max(hs, 0), min(hs + kh, h)
                w0, w1 = max(ws, 0), min(ws + kw, w)
                yield a, b, hs, ws, h0, h1, w0, w1

    def _ensure_choice(self, x):
        if self._choice_valid:
            return
        if x is None:
            raise ValueError("the MAX choice of a TEST-phase forward needs the input again")
        top = scratch("pool.top", self.xp, self.dtype, self.out_shape)
        if ckernels.max_pool_forward(x, top, self.choice, self.kernel, self.stride, self.pad):
            self._choice_valid = True
            return
        self._separable.forward(self.xp, x, scratch("pool.top", self.xp, self.dtype, self.out_shape), self.choice)
        self._choice_valid = True

    def flat_index(self, x=None):
        """The choice as Caffe's mask: flat index h * W + w into the input plane (-1: none).

        ``x``: the input of the last forward (needed after a TEST-phase MAX forward).
        """
        if self.method == P.MAX:
            self._ensure_choice(x)
        xp = self.xp
        kw = self.kernel[1]
        W = self.in_shape[3]
        hs = xp.asarray(self.hstart)[:, None]
        ws = xp.asarray(self.wstart)[None, :]
        c = self.choice.astype(np.int64) - 1
        flat = (hs + c // kw) * W + ws + c % kw
        return xp.where(c >= 0, flat, -1)

    # -- forward ---------------------------------------------------------
    def forward(self, x, top):
        if self.method == P.MAX:
            self._forward_max(x, top)
        elif self.method == P.AVE:
            self._forward_ave(x, top)
        elif self.train:
            self._forward_stochastic_train(x, top)
        else:
            self._forward_stochastic_test(x, top)

    def _forward_max(self, x, top):
        xp = self.xp
        if cuda_kernels.supported(x, top):
            cuda_kernels.max_pool_forward(x, top, self.choice, self.kernel, self.stride, self.pad)
            self._choice_valid = True
            return
        if ckernels.max_pool_forward(x, top, self.choice if self.train else None,
                                     self.kernel, self.stride, self.pad):
            self._choice_valid = self.train
            return
        if self.by_taps:
            self._choice_valid = self.train
            self._separable.forward(xp, x, top, self.choice if self.train else None)
            return
        # Caffe starts from -FLT_MAX and keeps the first strictly larger value.
        top.fill(-FLT_MAX)
        self.choice.fill(0)
        self._choice_valid = True
        for a, b, slab, tap_of in self._window_slabs(x):
            # NaN never wins in Caffe, but argmax would pick it: rank it below everything
            slab = xp.where(slab != slab, -xp.inf, slab)
            k = slab.argmax(axis=-1)
            val = xp.take_along_axis(slab, k[..., None], axis=-1)[..., 0]
            ok = val > -FLT_MAX
            top[:, :, a, b] = xp.where(ok, val, -FLT_MAX)
            self.choice[:, :, a, b] = xp.where(ok, tap_of(k) + 1, 0)

    def _window_slabs(self, x):
        """Per window with cells: (a, b, its cells as (N, C, cells) in row-major order,
        cell index -> tap counted from the unclamped window start)."""
        n, c = self.out_shape[:2]
        kw = self.kernel[1]
        for a, b, hs, ws, h0, h1, w0, w1 in self._windows():
            if h0 >= h1 or w0 >= w1:
                continue
            first, width = (h0 - hs) * kw + (w0 - ws), w1 - w0
            yield (a, b, x[:, :, h0:h1, w0:w1].reshape(n, c, -1),
                   lambda k, first=first, width=width: first + k // width * kw + k % width)

    def _window_sums(self, x, top, square=False):
        """top = sum over each clipped window of x (or of x * x)."""
        top.fill(0)
        n, c = self.out_shape[:2]
        if self.by_taps:
            for _, tsl, xsl in self._taps():
                v = x[xsl]
                tv = top[tsl]
                tv += v * v if square else v
            return
        for a, b, _, _, h0, h1, w0, w1 in self._windows():
            slab = x[:, :, h0:h1, w0:w1]
            top[:, :, a, b] = (slab * slab if square else slab).reshape(n, c, -1).sum(axis=-1)

    def _forward_ave(self, x, top):
        if cuda_kernels.supported(x, top):
            cuda_kernels.ave_pool_forward(x, top, self.kernel, self.stride, self.pad)
            return
        if ckernels.ave_pool_forward(x, top, self.kernel, self.stride, self.pad):
            return
        self._window_sums(x, top)
        top /= self.divisor

    def _forward_stochastic_test(self, x, top):
        # Caffe's TEST-time stochastic pooling: sum(x^2) / sum(x), the sum
        # started at FLT_MIN to avoid dividing by zero.
        total = self.xp.empty_like(top)
        self._window_sums(x, total)
        total += FLT_MIN
        self._window_sums(x, top, square=True)
        top /= total

    def _forward_stochastic_train(self, x, top):
        # Pick the first cell (row-major in its window) where the running sum
        # reaches u * window sum, u ~ U[0, 1): a draw proportional to the values.
        xp = self.xp
        # Caffe draws these on the GPU only (cuRAND; its CPU path is not implemented):
        # here they are caffe_rng_uniform(0, 1) draws from the main stream.
        count = int(np.prod(self.out_shape))
        u = xp.asarray(rng.get_rng().uniform(count, 0, 1, self.dtype).reshape(self.out_shape))
        thres = xp.empty_like(top)
        self._window_sums(x, thres)
        thres *= u
        self.choice.fill(0)
        if self.by_taps:
            cum = xp.zeros_like(top)
            for t, tsl, xsl in self._taps():
                v, cs = x[xsl], cum[tsl]
                cs += v
                hit = (cs >= thres[tsl]) & (self.choice[tsl] == 0)
                xp.copyto(top[tsl], v, where=hit)
                xp.copyto(self.choice[tsl], t + 1, where=hit)
            return
        for a, b, slab, tap_of in self._window_slabs(x):
            reached = xp.cumsum(slab, axis=-1) >= thres[:, :, a, b][..., None]
            k = reached.argmax(axis=-1)
            top[:, :, a, b] = xp.take_along_axis(slab, k[..., None], axis=-1)[..., 0]
            self.choice[:, :, a, b] = xp.where(reached.any(axis=-1), tap_of(k) + 1, 0)

    # -- backward ----------------------------------------------------------
    def backward(self, top_diff, dx, x=None):
        """Overwrite dx with the gradient of the last forward (``x``: its input, see flat_index)."""
        xp = self.xp
        if self.method == P.MAX:
            self._ensure_choice(x)
        if self.method != P.STOCHASTIC and cuda_kernels.supported(top_diff, dx):
            if self.method == P.MAX:
                cuda_kernels.max_pool_backward(top_diff, self.choice, dx, self.kernel, self.stride, self.pad)
            else:
                cuda_kernels.ave_pool_backward(top_diff, dx, self.kernel, self.stride, self.pad)
            return
        if self.method == P.MAX and ckernels.max_pool_backward(top_diff, self.choice, dx, self.kernel,
                                                               self.stride, self.pad):
            return
        if self.method == P.AVE and ckernels.ave_pool_backward(top_diff, dx, self.kernel, self.stride, self.pad):
            return
        if self.method == P.AVE:
            dx.fill(0)
            g = top_diff / self.divisor
            if self.by_taps:
                for _, tsl, xsl in self._taps():
                    dv = dx[xsl]
                    dv += g[tsl]
            else:
                for a, b, _, _, h0, h1, w0, w1 in self._windows():
                    dv = dx[:, :, h0:h1, w0:w1]
                    dv += g[:, :, a, b, None, None]
            return
        # MAX and STOCHASTIC: each top diff goes to its chosen cell. On NumPy,
        # np.add.at adds the diffs in output order in float32 straight into
        # dx, exactly Caffe's loop (3x faster than a float64 bincount and a
        # copy); CuPy sums with bincount.
        if self._cell is None:
            n, c, h, w = self.in_shape
            kw = self.kernel[1]
            plane = xp.arange(n * c, dtype=np.intp).reshape(n, c, 1, 1) * (h * w)
            start = xp.asarray(self.hstart[:, None] * w + self.wstart[None, :], dtype=np.intp)
            self._cell = (plane + start).reshape(-1)
            taps = np.arange(self.kernel[0] * kw)
            self._tap_offset = xp.asarray(np.concatenate([[0], taps // kw * w + taps % kw]), dtype=np.intp)
        weights = top_diff.reshape(-1)
        cells = scratch("pool.cells", xp, np.intp, self._cell.shape)
        xp.take(self._tap_offset, self.choice.reshape(-1), out=cells)
        cells += self._cell
        if not bool(self.choice.all()):
            # windows that chose no cell (all -inf or NaN) pass no gradient
            none = self.choice.reshape(-1) == 0
            cells[none] = 0
            weights = xp.where(none, 0, weights)
        if xp is np and dx.flags.c_contiguous:
            dx.fill(0)
            np.add.at(dx.reshape(-1), cells, weights)
        else:
            dx[...] = xp.bincount(cells, weights=weights, minlength=dx.size).reshape(dx.shape)


def pooling_geometry(layer, param, height, width):
    """Kernel, stride, pad from a PoolingParameter with Caffe's checks (global pooling: the whole plane)."""
    if param.global_pooling:
        if param.HasField("kernel_size") or param.HasField("kernel_h") or param.HasField("kernel_w"):
            raise layer.error("global_pooling takes the whole plane; do not give a kernel size")
        kernel = (height, width)
    else:
        has_size = param.HasField("kernel_size")
        has_hw = param.HasField("kernel_h") and param.HasField("kernel_w")
        if has_size == has_hw:
            raise layer.error("give kernel_size, or both kernel_h and kernel_w (not both forms)")
        kernel = (param.kernel_size,) * 2 if has_size else (param.kernel_h, param.kernel_w)
    if param.HasField("pad_h") != param.HasField("pad_w") or (param.HasField("pad") and param.HasField("pad_h")):
        raise layer.error("give pad, or both pad_h and pad_w")
    if param.HasField("stride_h") != param.HasField("stride_w") or (
            param.HasField("stride") and param.HasField("stride_h")):
        raise layer.error("give stride, or both stride_h and stride_w")
    pad = (param.pad_h, param.pad_w) if param.HasField("pad_h") else (param.pad,) * 2
    stride = (param.stride_h, param.stride_w) if param.HasField("stride_h") else (param.stride,) * 2
    kernel, pad, stride = tuple(map(int, kernel)), tuple(map(int, pad)), tuple(map(int, stride))
    if min(kernel) <= 0:
        raise layer.error("kernel dimensions must be positive, got %s" % (kernel,))
    if min(stride) <= 0:
        raise layer.error("stride dimensions must be positive, got %s" % (stride,))
    if param.global_pooling and (pad != (0, 0) or stride != (1, 1)):
        raise layer.error("global_pooling needs pad 0 and stride 1")
    if pad != (0, 0):
        if param.pool not in (P.MAX, P.AVE):
            raise layer.error("padding is implemented only for MAX and AVE pooling")
        if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
            raise layer.error("pad %s must be smaller than the kernel %s" % (pad, kernel))
    return kernel, stride, pad


@register("Pooling", "POOLING")
class PoolingLayer(Layer):
    """2-d pooling, Caffe's Pooling.

    Reads pooling_param: pool (MAX, AVE, STOCHASTIC), kernel_size or
    kernel_h+kernel_w, stride or stride_h+stride_w, pad or pad_h+pad_w,
    global_pooling, round_mode. Bottom ``(N, C, H, W)``; top
    ``(N, C, PH, PW)`` with ``PH = ceil((H + 2 pad - k) / stride) + 1``
    (floor with round_mode FLOOR), minus one if the layer has padding and the
    last window would start in the padding. AVE divides by the window clipped
    to ``H + pad`` (padded cells count). MAX may have a second top: the argmax
    as Caffe's mask, ``h * W + w`` stored as float. STOCHASTIC samples a cell
    with probability proportional to its value at TRAIN and outputs
    ``sum(x^2) / sum(x)`` at TEST (Caffe's GPU semantics).
    """

    exact_num_bottom = 1
    min_top = 1

    @property
    def max_top(self):
        return 2 if self.layer_param.pooling_param.pool == P.MAX else 1

    def setup(self, bottom, top):
        param = self.layer_param.pooling_param
        if param.pool not in (P.MAX, P.AVE, P.STOCHASTIC):
            raise self.error("unknown pooling method %d" % param.pool)
        if bottom[0].num_axes != 4:
            raise self.error("bottom must have 4 axes (num, channels, height, width), got shape %s"
                             % (bottom[0].shape,))
        # Checks the settings once at setup (global pooling re-reads the size per reshape).
        pooling_geometry(self, param, *bottom[0].shape[2:])
        self._plan = None
        self._key = None

    def reshape(self, bottom, top):
        param = self.layer_param.pooling_param
        shape = bottom[0].shape
        if len(shape) != 4:
            raise self.error("bottom must have 4 axes (num, channels, height, width), got shape %s" % (shape,))
        if shape != self._key:
            kernel, stride, pad = pooling_geometry(self, param, *shape[2:])
            try:
                self._plan = Pool2d(self.xp, self.dtype, param.pool, shape, kernel, stride, pad,
                                    ceil_mode=param.round_mode == P.CEIL,
                                    train=self.phase == TRAIN)
            except ValueError as exc:
                raise self.error(str(exc))
            self._key = shape
        for t in top:
            t.reshape(self._plan.out_shape)

    def forward(self, bottom, top):
        self._plan.forward(bottom[0].data, top[0].data)
        if len(top) > 1:
            top[1].data[...] = self._plan.flat_index(bottom[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            self._plan.backward(top[0].diff, bottom[0].diff, bottom[0].data)
