"""Dropout: random zeroing with inverted scaling at train time."""
import numpy as np

from ..layer import TRAIN, register
from ..rng import get_rng
from .neuron import NeuronLayer


@register("Dropout", "DROPOUT")
class Dropout(NeuronLayer):
    """Reads ``dropout_param.dropout_ratio`` p (default 0.5, 0 <= p < 1).

    TRAIN: each unit is kept with probability 1 - p and kept units are
    multiplied by 1 / (1 - p), so y = x * m / (1 - p) with m ~ Bernoulli(1 - p);
    dy/dx uses the same mask. TEST: y = x and dx = dy. Caffe 1.0's
    DropoutParameter has no scale_train switch, so training always scales.
    Shapes: top = bottom; may run in place.
    """

    def setup(self, bottom, top):
        ratio = self.layer_param.dropout_param.dropout_ratio
        if not 0 <= ratio < 1:
            raise self.error("dropout_ratio must be in [0, 1), got %g" % ratio)
        self.ratio = ratio
        # Caffe computes 1 / (1 - p) in double and stores it as Dtype.
        self.scale = self.scalar(1.0 / (1.0 - ratio))
        self._device_rng = None
        self._device_rng_source = None

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        if self.phase != TRAIN:
            if y is not x:
                y[...] = x
            return
        # mask holds scale where a unit is kept and 0 where it is dropped
        mask = self.scratch("mask", x.shape)
        self._uniform(mask)
        self.xp.greater_equal(mask, self.ratio, out=mask)
        mask *= self.scale
        self.xp.multiply(x, mask, out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy, dx = top[0].diff, bottom[0].diff
        if self.phase != TRAIN:
            if dx is not dy:
                dx[...] = dy
            return
        self.xp.multiply(dy, self.scratch("mask", dy.shape), out=dx)

    def _uniform(self, out):
        """Fill ``out`` with U[0, 1) draws from protonet.rng (repeatable under one seed)."""
        host = get_rng()
        if self.xp is np:
            host.random(dtype=out.dtype, out=out)
            return
        # Draw on the device; reseed its stream whenever protonet.rng was reseeded
        # (set_random_seed installs a new host Generator), so one seed repeats a run.
        if self._device_rng_source is not host:
            seed = host.integers(2 ** 63, dtype=np.uint64)  # a uint64 seed, as curand takes
            self._device_rng = self.xp.random.RandomState(seed)
            self._device_rng_source = host
        out[...] = self._device_rng.random_sample(out.shape, dtype=out.dtype)
