"""Softmax and SoftmaxWithLoss, plus the softmax / loss-normalisation helpers
shared with the other loss layers (protonet/layers/loss.py)."""
import math

import numpy as np

from ..backend import xp_of
from ..layer import Layer, register
from ..proto import caffe_pb2

_Norm = caffe_pb2.LossParameter
# Caffe clamps probabilities at FLT_MIN before the log, in double precision too.
FLT_MIN = float(np.finfo(np.float32).tiny)


def softmax_into(x3, out3):
    """Softmax over axis 1 of an (outer, C, inner) array, written to ``out3``.

    ``out3`` may be ``x3`` itself (in-place Softmax). The max is subtracted
    first, as Caffe does, so large scores do not overflow.
    """
    xp = xp_of(x3)
    m = x3.max(axis=1, keepdims=True)
    xp.subtract(x3, m, out=out3)
    xp.exp(out3, out=out3)
    out3 /= out3.sum(axis=1, keepdims=True)
    return out3


def split_axis(shape, axis):
    """(outer, channels, inner) counts around ``axis`` of ``shape``."""
    outer = math.prod(shape[:axis])     # Python ints: no NumPy call per forward
    inner = math.prod(shape[axis + 1:])
    return outer, int(shape[axis]), inner


def canonical_axis(layer, blob, axis, what="axis"):
    try:
        return blob.canonical_axis(axis)
    except ValueError as exc:
        raise layer.error("%s: %s" % (what, exc)) from None


def label_dims(layer, bottom, axis, what):
    """Class axis and (outer, classes, inner) of scores ``bottom[0]``, checking that labels
    ``bottom[1]`` hold one value per outer*inner position (``what`` names the axis field)."""
    axis = canonical_axis(layer, bottom[0], axis)
    dims = split_axis(bottom[0].shape, axis)
    if dims[0] * dims[2] != bottom[1].count:
        raise layer.error(
            "number of labels (%d, shape %s) must match number of predictions (%d): with "
            "scores %s and %s %d the labels need outer*inner = %d values in [0, %d)"
            % (bottom[1].count, bottom[1].shape, dims[0] * dims[2], bottom[0].shape, what, axis,
               dims[0] * dims[2], dims[1]))
    return axis, dims


def reshape_softmax_loss(layer, bottom, top, dims):
    """Tops (scalar loss, optional probabilities) and, when the split changes, the
    probability buffer and label index of a softmax-based loss layer."""
    top[0].reshape(())
    if len(top) > 1:
        top[1].reshape(bottom[0].shape)
    if dims != layer._dims:
        layer._dims = dims
        layer.prob = layer.xp.empty(dims, layer.dtype)
        layer.index = LabelIndex(layer.xp, dims[0], dims[1], dims[2], layer.ignore_label)


def normalization_mode(loss_param, default):
    """The NormalizationMode a loss layer uses.

    Caffe's rule: an explicit ``normalization`` wins; otherwise the legacy
    ``normalize`` bool (true = VALID, false = BATCH_SIZE) if it is set;
    otherwise ``default`` (VALID for SoftmaxWithLoss, the proto default;
    BATCH_SIZE for SigmoidCrossEntropyLoss).
    """
    if loss_param.HasField("normalization"):
        return loss_param.normalization
    if loss_param.HasField("normalize"):
        return _Norm.VALID if loss_param.normalize else _Norm.BATCH_SIZE
    return default


def normalizer(mode, outer, inner, valid_count, dtype):
    """Caffe's get_normalizer, never below 1 (a batch with every label ignored gives loss 0).

    ``valid_count`` is a 0-d device array (the number of non-ignored
    labels); for VALID the result stays on the device.
    """
    if mode == _Norm.VALID:
        if isinstance(valid_count, int):    # counted on the host
            return dtype.type(max(1, valid_count))
        return xp_of(valid_count).maximum(valid_count.astype(dtype), dtype.type(1))
    if mode == _Norm.FULL:
        n = outer * inner
    elif mode == _Norm.BATCH_SIZE:
        n = outer
    elif mode == _Norm.NONE:
        n = 1
    else:
        raise ValueError("unknown loss normalization mode %r" % (mode,))
    return dtype.type(max(1, n))


class LabelIndex:
    """Flat positions of each label's score in an (outer, C, inner) blob.

    Built once per shape; ``gather(labels)`` turns a label array (integer
    valued floats, ``ignore_label`` allowed) into flat indices and a
    validity mask, with no per-item Python loop.
    """

    def __init__(self, xp, outer, channels, inner, ignore_label):
        self.xp = xp
        self.shape = (outer, channels, inner)
        self.ignore_label = ignore_label
        o = xp.arange(outer, dtype=np.int64)[:, None] * (channels * inner)
        i = xp.arange(inner, dtype=np.int64)[None, :]
        self.base = (o + i).reshape(-1)

    def gather(self, label, layer):
        xp = self.xp
        # static_cast<int> in Caffe: truncation toward zero.
        lab = label.reshape(-1).astype(np.int64)
        if self.ignore_label is None:
            valid = None
        else:
            valid = lab != self.ignore_label
            lab = xp.where(valid, lab, 0)
        if xp is np and lab.size and (lab.min() < 0 or lab.max() >= self.shape[1]):
            # Checked on the host only: on a GPU the check would synchronise every iteration.
            bad = (lab < 0) | (lab >= self.shape[1])
            raise layer.error("label value %d out of range [0, %d) (and not the ignore_label)"
                              % (int(label.reshape(-1)[np.argmax(bad)]), self.shape[1]))
        return self.base + (lab if self.shape[2] == 1 else lab * self.shape[2]), lab, valid


@register("Softmax", "SOFTMAX")
class SoftmaxLayer(Layer):
    """Softmax along one axis.

    Reads ``softmax_param.axis`` (default 1; negative counts from the end).
    Shapes: bottom (..., C, ...) -> top of the same shape.
    y = exp(x - max) / sum_c exp(x - max);  dx = (dy - sum_c dy * y) * y.
    In-place use (top is bottom) is supported.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        self.axis = canonical_axis(self, bottom[0], self.layer_param.softmax_param.axis)
        self.dims = split_axis(bottom[0].shape, self.axis)
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        softmax_into(bottom[0].data.reshape(self.dims), top[0].data.reshape(self.dims))

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y = top[0].data.reshape(self.dims)
        dy = top[0].diff.reshape(self.dims)
        # The dot is taken before writing: bottom diff may be top diff (in place).
        dot = (dy * y).sum(axis=1, keepdims=True)
        dx = bottom[0].diff.reshape(self.dims)
        self.xp.subtract(dy, dot, out=dx)
        dx *= y


@register("SoftmaxWithLoss", "SOFTMAX_LOSS")
class SoftmaxWithLossLayer(Layer):
    """Multinomial logistic loss of the softmax of the scores.

    Bottoms: scores (..., C, ...) with C on ``softmax_param.axis`` (default
    1), labels with outer*inner values (integer-valued; e.g. N x 1 x H x W
    for N x C x H x W scores). Tops: the loss (0-d) and, optionally, the
    probabilities (shape of the scores).
    Reads ``loss_param.ignore_label``, ``loss_param.normalization``
    (FULL, VALID (default), BATCH_SIZE, NONE) and the legacy
    ``loss_param.normalize`` (used only when ``normalization`` is not set).

    loss = -sum_{valid (o,i)} log(max(p[o, label, i], FLT_MIN)) / normalizer
    d scores = (p - onehot(label)) * loss_weight / normalizer, zero where ignored.
    The normalizer is FULL: outer*inner, VALID: count of non-ignored labels,
    BATCH_SIZE: outer, NONE: 1, never below 1.
    """

    is_loss = True
    exact_num_bottom = 2
    min_top = 1
    max_top = 2

    def setup(self, bottom, top):
        lp = self.layer_param.loss_param
        self.ignore_label = lp.ignore_label if lp.HasField("ignore_label") else None
        self.mode = normalization_mode(lp, _Norm.VALID)
        self._dims = None

    def reshape(self, bottom, top):
        if bottom[0].num_axes < 1 or bottom[1].num_axes < 1 or \
                bottom[0].shape[0] != bottom[1].shape[0]:
            raise self.error("scores %s and labels %s must have the same first dimension"
                             % (bottom[0].shape, bottom[1].shape))
        axis, dims = label_dims(self, bottom, self.layer_param.softmax_param.axis, "softmax axis")
        reshape_softmax_loss(self, bottom, top, dims)

    def forward(self, bottom, top):
        xp = self.xp
        outer, _, inner = self._dims
        softmax_into(bottom[0].data.reshape(self._dims), self.prob)
        idx, _, valid = self.index.gather(bottom[1].data, self)
        logp = xp.log(xp.maximum(self.prob.reshape(-1)[idx], self.dtype.type(FLT_MIN)))
        if valid is None:
            loss = -logp.sum()
            count = logp.size if xp is np else xp.asarray(logp.size)
        else:
            loss = -(logp * valid).sum()
            count = int(np.count_nonzero(valid)) if xp is np else valid.sum()
        self._norm = normalizer(self.mode, outer, inner, count, self.dtype)
        self._idx, self._valid = idx, valid
        top[0].data[...] = loss / self._norm
        if len(top) > 1:
            top[1].data[...] = self.prob.reshape(top[1].shape)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise self.error("cannot backpropagate to label inputs (bottom 1)")
        if not propagate_down[0]:
            return
        dx = bottom[0].diff.reshape(self._dims)
        dx[...] = self.prob
        dx.reshape(-1)[self._idx] -= 1
        scale = top[0].diff / self._norm
        if self._valid is None:
            dx *= scale
        else:
            dx *= (self._valid.reshape(self._dims[0], 1, self._dims[2]) * scale).astype(self.dtype)

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1
