"""Local response normalisation across or within channels, Caffe's LRN."""
from .. import ckernels, cuda_kernels
from ..layer import Layer, register
from ..proto import caffe_pb2
from ._scratch import scratch

LRNP = caffe_pb2.LRNParameter


class CenteredWindowSum:
    """Sum over a centred window of ``size`` (odd) cells along one axis, zero-padded.

    The input is written into the interior of a buffer padded with zeros on
    that axis (``interior``); the sum then adds ``size`` shifted slices of
    it, each one contiguous block per leading index. For the window sizes LRN
    uses (5 in AlexNet) this beats a running or cumulative sum: NumPy's cumsum
    along a non-last axis costs about ten passes, and a difference of running
    sums also loses precision to cancellation. Larger windows use that
    difference, whose cost does not grow with the window.
    """

    MAX_DIRECT = 15

    def __init__(self, xp, dtype, shape, axis, size):
        self.axis, self.size = axis, size
        self.length = shape[axis]
        half = (size - 1) // 2
        pshape = list(shape)
        pshape[axis] += 2 * half
        self.padded = xp.zeros(pshape, dtype)
        self.interior = self.padded[self._sl(half, half + self.length)]
        self.running = None
        if size > self.MAX_DIRECT:
            rshape = list(pshape)
            rshape[axis] += 1
            self.running = xp.zeros(rshape, dtype)  # index 0 stays zero

    def _sl(self, start, stop):
        return (slice(None),) * self.axis + (slice(start, stop),)

    def __call__(self, xp, out):
        """out = window sums of the values last written into ``interior``."""
        L = self.length
        if self.size == 1:
            out[...] = self.interior
            return out
        if self.running is not None:
            xp.cumsum(self.padded, axis=self.axis, out=self.running[self._sl(1, None)])
            return xp.subtract(self.running[self._sl(self.size, self.size + L)], self.running[self._sl(0, L)],
                               out=out)
        xp.add(self.padded[self._sl(0, L)], self.padded[self._sl(1, 1 + L)], out=out)
        for k in range(2, self.size):
            out += self.padded[self._sl(k, k + L)]
        return out


@register("LRN")
class LRNLayer(Layer):
    """Local response normalisation, Caffe's LRN.

    Reads lrn_param: local_size n (odd), alpha, beta, k, norm_region.
    Bottom and top ``(N, C, H, W)``.
    ACROSS_CHANNELS: ``y = x * (k + alpha/n * sum_{|c'-c| <= (n-1)/2} x_c'^2) ^ -beta``.
    WITHIN_CHANNEL (Caffe builds it from Power, zero-padded AVE pooling and
    Eltwise PROD, which fixes the shift at 1 and ignores k):
    ``y = x * (1 + alpha/n^2 * sum_{n x n window} x^2) ^ -beta``.
    Backward (s the scale, both modes):
    ``dx = dy * s^-beta - 2 alpha beta / m * x * window_sum(dy * y / s)``
    with m = n (across) or n^2 (within).
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.lrn_param
        self.size = int(p.local_size)
        if self.size % 2 != 1:
            raise self.error("local_size must be odd, got %d" % self.size)
        self.alpha, self.beta, self.k = float(p.alpha), float(p.beta), float(p.k)
        self.within = p.norm_region == LRNP.WITHIN_CHANNEL
        if p.norm_region not in (LRNP.ACROSS_CHANNELS, LRNP.WITHIN_CHANNEL):
            raise self.error("unknown norm_region %d" % p.norm_region)
        self._key = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != 4:
            raise self.error("bottom must have 4 axes (num, channels, height, width), got shape %s" % (shape,))
        top[0].reshape(shape)
        if shape != self._key:
            xp, dt = self.xp, self.dtype
            self._key = shape
            axes = (2, 3) if self.within else (1,)
            self._sums = [CenteredWindowSum(xp, dt, shape, a, self.size) for a in axes]
            self.scale = xp.empty(shape, dt)
            self.scale_pow = xp.empty(shape, dt)

    def _window_sum(self, fill, out):
        """out = zero-padded window sums of ``fill(dest)``'s result (over channels, or n x n)."""
        first = self._sums[0]
        fill(first.interior)
        if len(self._sums) == 1:
            return first(self.xp, out)
        # separable n x n box: along H into the W-padded buffer's interior, then along W
        first(self.xp, self._sums[1].interior)
        return self._sums[1](self.xp, out)

    def forward(self, bottom, top):
        xp = self.xp
        x = bottom[0].data
        if not self.within and cuda_kernels.supported(x, top[0].data, self.scale, self.scale_pow):
            # one launch instead of a pass per window offset
            cuda_kernels.lrn_forward(x, self.scale, self.scale_pow, top[0].data,
                                     self.size, self.alpha, self.beta, self.k)
            return
        if top[0] is not bottom[0] and ckernels.lrn_forward(
                x, self.scale, self.scale_pow, top[0].data, self.size, self.alpha, self.beta, self.k,
                within=self.within):
            return
        s = self._window_sum(lambda dest: xp.multiply(x, x, out=dest), self.scale)
        if self.within:
            s *= self.alpha / (self.size * self.size)
            s += 1.0
        else:
            s *= self.alpha / self.size
            s += self.k
        xp.power(s, -self.beta, out=self.scale_pow)
        xp.multiply(x, self.scale_pow, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        x, y, dy = bottom[0].data, top[0].data, top[0].diff
        dx = bottom[0].diff
        # in place, dx is dy, which the kernel reads across channels: the generic path then
        if (not self.within and top[0] is not bottom[0]
                and cuda_kernels.supported(x, y, dy, dx, self.scale, self.scale_pow)):
            cuda_kernels.lrn_backward(x, y, dy, self.scale, self.scale_pow, dx, self.size, self.alpha, self.beta)
            return
        if top[0] is not bottom[0] and ckernels.lrn_backward(
                x, y, dy, self.scale, self.scale_pow, dx, self.size, self.alpha, self.beta,
                within=self.within):
            return
        m = self.size * self.size if self.within else self.size

        def ratio(dest):
            xp.multiply(dy, y, out=dest)
            dest /= self.scale

        acc = self._window_sum(ratio, dx)
        acc *= x
        acc *= -2.0 * self.alpha * self.beta / m
        dx += xp.multiply(dy, self.scale_pow, out=scratch("lrn.work", xp, self.dtype, dy.shape))
