"""Accuracy and ArgMax: evaluation layers without a gradient."""
import numpy as np

from ..layer import Layer, register
from .softmax import LabelIndex, canonical_axis, label_dims, split_axis


@register("Accuracy", "ACCURACY")
class AccuracyLayer(Layer):
    """Top-k classification accuracy.

    Bottoms: scores (..., C, ...) with C on ``accuracy_param.axis``
    (default 1) and outer*inner integer-valued labels. Tops: the accuracy
    (0-d) and, optionally, per-class accuracy (C,): hits / occurrences of
    each class, 0 for classes absent from the labels.
    Reads ``accuracy_param.top_k`` (default 1), ``axis`` and
    ``ignore_label`` (those positions count neither as hits nor in the total).

    A position is a hit when fewer than top_k *other* classes score >= the
    true class (Caffe's CPU rule: a tie with the true class counts against
    it). Accuracy is 0 when every label is ignored. No backward.
    """

    exact_num_bottom = 2
    min_top = 1
    max_top = 2

    def setup(self, bottom, top):
        p = self.layer_param.accuracy_param
        self.top_k = p.top_k
        self.ignore_label = p.ignore_label if p.HasField("ignore_label") else None
        self._dims = None

    def reshape(self, bottom, top):
        if bottom[1].count == 0 or self.top_k > bottom[0].count // bottom[1].count:
            raise self.error("top_k (%d) must be at most the number of classes (%d scores per "
                             "label: scores %s, labels %s)"
                             % (self.top_k, bottom[0].count // max(bottom[1].count, 1),
                                bottom[0].shape, bottom[1].shape))
        axis, dims = label_dims(self, bottom, self.layer_param.accuracy_param.axis, "label axis")
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((dims[1],))
        if dims != self._dims:
            self._dims = dims
            self.index = LabelIndex(self.xp, dims[0], dims[1], dims[2], self.ignore_label)

    def forward(self, bottom, top):
        xp, dt = self.xp, self.dtype
        outer, channels, inner = self._dims
        scores = bottom[0].data.reshape(self._dims)
        idx, lab, valid = self.index.gather(bottom[1].data, self)
        true = scores.reshape(-1)[idx].reshape(outer, 1, inner)
        # The true class itself is among the ">=" scores, hence the -1.
        better = (scores >= true).sum(axis=1).reshape(-1) - 1
        hit = better < self.top_k
        if valid is not None:
            hit &= valid
        if xp is np:
            # host counts as Python ints: 0-d array arithmetic costs more than the layer's work
            count = hit.size if valid is None else int(np.count_nonzero(valid))
            top[0].data[...] = dt.type(np.count_nonzero(hit)) / dt.type(count) if count else 0
        else:
            count = xp.asarray(hit.size) if valid is None else valid.sum()
            top[0].data[...] = xp.where(count == 0, dt.type(0),
                                        hit.sum().astype(dt) / xp.maximum(count, 1).astype(dt))
        if len(top) > 1:
            weight = xp.ones(hit.shape, dt) if valid is None else valid.astype(dt)
            nums = xp.bincount(lab, weights=weight, minlength=channels)[:channels].astype(dt)
            good = xp.bincount(lab, weights=hit.astype(dt), minlength=channels)[:channels].astype(dt)
            top[1].data[...] = xp.where(nums == 0, dt.type(0), good / xp.maximum(nums, dt.type(1)))

    def allow_force_backward(self, bottom_index):
        return False


@register("ArgMax", "ARGMAX")
class ArgMaxLayer(Layer):
    """Indices (and optionally values) of the top_k largest scores.

    Reads ``argmax_param.top_k`` (default 1), ``out_max_val`` and ``axis``.
    Without ``axis``: the max is over all non-batch axes of bottom (N, ...);
    top is (N, 1, top_k) with indices, or (N, 2, top_k) with indices then
    values when out_max_val (padded with trailing 1s to the bottom's number
    of axes). With ``axis``: that axis becomes top_k long and holds indices,
    or the values when out_max_val.
    Equal scores are ranked by larger index first (Caffe sorts (value,
    index) pairs in descending order). Indices are stored as floats. No backward.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.argmax_param
        self.top_k = p.top_k
        self.out_max_val = p.out_max_val
        self.has_axis = p.HasField("axis")
        if self.top_k < 1:
            raise self.error("top_k must be at least 1, got %d" % self.top_k)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if self.has_axis:
            self.axis = canonical_axis(self, bottom[0], self.layer_param.argmax_param.axis)
            outer, dim, inner = split_axis(shape, self.axis)
            if self.top_k > dim:
                raise self.error("top_k (%d) must be at most the size of axis %d (%d) of %s"
                                 % (self.top_k, self.axis, dim, shape))
            top_shape = list(shape)
            top_shape[self.axis] = self.top_k
        else:
            if len(shape) < 1:
                raise self.error("needs a bottom with a batch axis, got shape %s" % (shape,))
            outer, dim, inner = shape[0], bottom[0].count_range(1), 1
            if self.top_k > dim:
                raise self.error("top_k (%d) must be at most the number of values per item (%d) "
                                 "of %s" % (self.top_k, dim, shape))
            top_shape = [1] * max(len(shape), 3)
            top_shape[0] = shape[0]
            top_shape[1] = 2 if self.out_max_val else 1
            top_shape[2] = self.top_k
        self.dims = (outer, dim, inner)
        top[0].reshape(top_shape)

    def forward(self, bottom, top):
        xp = self.xp
        outer, dim, inner = self.dims
        k = self.top_k
        keys = bottom[0].data.reshape(outer, dim, inner).transpose(0, 2, 1)
        if k == 1:
            # argmax keeps the first of equal maxima; on the reversed axis that is the largest index.
            best = (dim - 1) - xp.argmax(keys[..., ::-1], axis=-1)[..., None]
        else:
            # A stable ascending sort, read backwards: descending values, ties by descending index.
            # (CuPy always sorts stably and older versions take no `kind`.)
            stable = {"kind": "stable"} if xp is np else {}
            order = xp.argsort(keys, axis=-1, **stable)
            best = order[..., ::-1][..., :k]
        vals = xp.take_along_axis(keys, best, axis=-1)
        if self.has_axis:
            out = vals if self.out_max_val else best
            top[0].data.reshape(outer, k, inner)[...] = out.transpose(0, 2, 1)
        else:
            out = top[0].data.reshape(outer, -1, k)
            out[:, 0, :] = best[:, 0, :]
            if self.out_max_val:
                out[:, 1, :] = vals[:, 0, :]

    def allow_force_backward(self, bottom_index):
        return False
