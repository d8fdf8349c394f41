"""PReLU: leaky ReLU whose negative slopes are learned, one per channel."""
import numpy as np

from .. import fillers
from ..layer import register
from ..proto import caffe_pb2
from .neuron import NeuronLayer


@register("PReLU")
class PReLU(NeuronLayer):
    """y = max(x, 0) + a_c * min(x, 0), c the index along axis 1.

    Reads ``prelu_param.channel_shared`` (default false: one slope per
    channel, param shape (C,); true: one slope, a 0-axis param) and
    ``prelu_param.filler`` (default constant 0.25). Bottom: at least 2 axes
    (N, C, ...); top = bottom; may run in place.
    Gradients: dx = dy for x > 0, a_c * dy otherwise;
    da_c += sum over batch and space of dy * min(x, 0).
    """

    def setup(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) < 2:
            raise self.error("bottom needs at least 2 axes (N, C, ...), got shape %s" % (shape,))
        p = self.layer_param.prelu_param
        self.channel_shared = p.channel_shared
        self.channels = shape[1]
        if p.HasField("filler"):
            filler = p.filler
        else:
            filler = caffe_pb2.FillerParameter(type="constant", value=0.25)
        self.blobs = [self.new_blob(() if self.channel_shared else (self.channels,))]
        fillers.fill(self.blobs[0], filler)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) < 2:
            raise self.error("bottom needs at least 2 axes (N, C, ...), got shape %s" % (shape,))
        if not self.channel_shared and shape[1] != self.channels:
            raise self.error("bottom has %d channels (axis 1) but the layer has %d slopes"
                             % (shape[1], self.channels))
        super().reshape(bottom, top)

    def _slopes(self, shape):
        """The slopes shaped to broadcast against a bottom of ``shape``."""
        a = self.blobs[0].data
        if self.channel_shared:
            return a
        return a.reshape((1, self.channels) + (1,) * (len(shape) - 2))

    def forward(self, bottom, top):
        xp = self.xp
        x, y = bottom[0].data, top[0].data
        # Backward needs x, which an in-place forward overwrites.
        self.keep_input(bottom, top)
        neg = self.scratch("neg", x.shape)
        xp.minimum(x, 0, out=neg)
        neg *= self._slopes(x.shape)
        xp.maximum(x, 0, out=y)
        y += neg

    def backward(self, top, propagate_down, bottom):
        xp = self.xp
        x = self.kept_input(bottom, top)
        dy, dx = top[0].diff, bottom[0].diff
        # Slope gradient first: in place, dx is dy and is overwritten below.
        if self.param_needs_grad(0):
            prod = self.scratch("prod", x.shape)
            xp.minimum(x, 0, out=prod)
            prod *= dy
            da = self.blobs[0].engine_diff()
            if self.channel_shared:
                da += prod.sum()
            else:
                axes = (0,) + tuple(range(2, x.ndim))
                da += prod.sum(axis=axes)
        if propagate_down[0]:
            # Caffe's factor (x > 0) + a_c * (x <= 0): exactly 1 or a_c.
            positive = self.scratch("positive", x.shape, np.bool_)
            xp.greater(x, 0, out=positive)
            factor = self.scratch("factor", x.shape)
            xp.less_equal(x, 0, out=factor)
            factor *= self._slopes(x.shape)
            xp.add(factor, positive, out=factor)
            xp.multiply(dy, factor, out=dx)
