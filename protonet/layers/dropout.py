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

    The mask is Caffe's CPU draw: ``count`` bernoulli(1. - p) values (in
    double) from protonet.rng's main stream at every TRAIN forward, so a
    seeded run drops Caffe's units. On a GPU the mask is drawn the same way
    on the host and copied over: a GPU run repeats the CPU run (Caffe's own
    GPU path draws with cuRAND instead and matches neither).
    """

    def setup(self, bottom, top):
        ratio = self.layer_param.dropout_param.dropout_ratio
        if not 0 <= ratio < 1:
            raise self.error("dropout_ratio must be in [0, 1), got %g" % ratio)
        self.ratio = ratio
        # Caffe computes 1 / (1 - p) in double and stores it as Dtype.
        self.scale = self.scalar(1.0 / (1.0 - ratio))

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        if self.phase != TRAIN:
            if y is not x:
                y[...] = x
            return
        # mask holds scale where a unit is kept and 0 where it is dropped
        keep = get_rng().bernoulli(x.size, 1.0 - self.ratio, np.float64).reshape(x.shape)
        mask = self.scratch("mask", x.shape)
        self.xp.multiply(keep if self.xp is np else self.xp.asarray(keep), self.scale, out=mask)
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
