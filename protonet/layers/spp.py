"""Spatial pyramid pooling, Caffe's SPP."""
from ..layer import Layer, register
from ..proto import caffe_pb2
from .pooling import Pool2d

SPPP = caffe_pb2.SPPParameter
PP = caffe_pb2.PoolingParameter
_METHOD = {SPPP.MAX: PP.MAX, SPPP.AVE: PP.AVE, SPPP.STOCHASTIC: PP.STOCHASTIC}


def spp_level_geometry(level, height, width):
    """Kernel, stride, pad of pyramid level ``level`` (2^level bins per side), as Caffe picks them."""
    bins = 2 ** level
    kernel, pad = [], []
    for size in (height, width):
        k = -(-size // bins)
        kernel.append(k)
        pad.append((k * bins - size + 1) // 2)
    return tuple(kernel), tuple(kernel), tuple(pad)


@register("SPP")
class SPPLayer(Layer):
    """Spatial pyramid pooling.

    Reads spp_param: pyramid_height L, pool (MAX, AVE, STOCHASTIC). Level l
    pools the ``(N, C, H, W)`` bottom into about 2^l x 2^l bins with
    ``kernel = stride = ceil(H / 2^l)`` and ``pad = (kernel 2^l - H + 1) // 2``
    (Caffe's Pooling rules apply to each level). The top is
    ``(N, sum_l C * bins_l)``, the flattened levels concatenated; with L == 1
    Caffe passes the single pooling output through unflattened: ``(N, C, 1, 1)``.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.spp_param
        self.height_levels = int(p.pyramid_height)
        if self.height_levels < 1:
            raise self.error("spp_param.pyramid_height must be at least 1, got %d" % self.height_levels)
        if p.pool not in _METHOD:
            raise self.error("unknown pooling method %d" % p.pool)
        self.method = _METHOD[p.pool]
        self._key = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != 4:
            raise self.error("bottom must have 4 axes (num, channels, height, width), got shape %s" % (shape,))
        if shape != self._key:
            n, c, h, w = shape
            if h <= 0 or w <= 0:
                raise self.error("input spatial size must be positive, got %s" % (shape,))
            self._plans = []
            for level in range(self.height_levels):
                kernel, stride, pad = spp_level_geometry(level, h, w)
                if pad != (0, 0) and (self.method == PP.STOCHASTIC or pad[0] >= kernel[0]
                                      or pad[1] >= kernel[1]):
                    raise self.error("pyramid level %d needs pad %s with kernel %s on a %dx%d input, which "
                                     "Caffe's Pooling rejects (pad must be smaller than the kernel, and "
                                     "STOCHASTIC takes no pad)" % (level, pad, kernel, h, w))
                # Caffe builds the inner Pooling layers with a default LayerParameter,
                # so they run in TRAIN phase whatever the net's phase is.
                try:
                    self._plans.append(Pool2d(self.xp, self.dtype, self.method, shape, kernel, stride, pad,
                                              train=True))
                except ValueError as exc:
                    raise self.error("pyramid level %d: %s" % (level, exc))
            self._sizes = [int(p.out_shape[1] * p.out_shape[2] * p.out_shape[3]) for p in self._plans]
            self._tmp = None
            self._key = shape
        if self.height_levels == 1:
            top[0].reshape(self._plans[0].out_shape)
        else:
            top[0].reshape((shape[0], sum(self._sizes)))

    def _level_views(self, arr):
        """Per level: the (N, C, PH, PW) view of its columns of the concatenated top."""
        if self.height_levels == 1:
            return [arr]
        views, off = [], 0
        for plan, size in zip(self._plans, self._sizes):
            views.append(arr[:, off:off + size].reshape(plan.out_shape))
            off += size
        return views

    def forward(self, bottom, top):
        for plan, view in zip(self._plans, self._level_views(top[0].data)):
            plan.forward(bottom[0].data, view)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        for i, (plan, view) in enumerate(zip(self._plans, self._level_views(top[0].diff))):
            if i == 0:
                plan.backward(view, dx)
                continue
            if self._tmp is None:
                self._tmp = self.xp.empty(dx.shape, self.dtype)
            plan.backward(view, self._tmp)
            dx += self._tmp
