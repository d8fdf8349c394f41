"""Concat and Slice: joining blobs along one axis, and cutting one apart."""
from ..layer import Layer, register
from .softmax import canonical_axis


def _legacy_axis(layer, blob, param, legacy, what):
    """The axis from ``param.axis`` or the legacy non-negative ``param.<legacy>``."""
    if param.HasField(legacy):
        axis = getattr(param, legacy)
        if axis >= blob.num_axes:
            raise layer.error("%s.%s %d out of range for a %d-axis bottom %s"
                              % (what, legacy, axis, blob.num_axes, blob.shape))
        return axis
    return canonical_axis(layer, blob, param.axis, what + ".axis")


def _windows(axis, sizes):
    """Index tuples selecting consecutive runs of ``sizes`` along ``axis``."""
    out, start = [], 0
    for n in sizes:
        out.append((slice(None),) * axis + (slice(start, start + n),))
        start += n
    return out


@register("Concat", "CONCAT")
class ConcatLayer(Layer):
    """Join the bottoms along one axis.

    Reads ``concat_param.axis`` (default 1; negative counts from the end) or
    the legacy ``concat_dim``. Every bottom must match the first on all other
    axes; top size on the axis = sum of the bottoms'. Backward: each bottom
    gets its window of the top diff.
    """

    min_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.concat_param
        if p.HasField("axis") and p.HasField("concat_dim"):
            raise self.error("give either concat_param.axis or concat_param.concat_dim, not both")

    def reshape(self, bottom, top):
        axis = _legacy_axis(self, bottom[0], self.layer_param.concat_param, "concat_dim",
                            "concat_param")
        shape = list(bottom[0].shape)
        for i, b in enumerate(bottom[1:], 1):
            if b.num_axes != len(shape) or any(
                    b.shape[j] != shape[j] for j in range(len(shape)) if j != axis):
                raise self.error("bottom %d %s must match bottom 0 %s on every axis but the "
                                 "concat axis %d" % (i, b.shape, bottom[0].shape, axis))
        shape[axis] = sum(b.shape[axis] for b in bottom)
        self.windows = _windows(axis, [b.shape[axis] for b in bottom])
        top[0].reshape(shape)

    def forward(self, bottom, top):
        y = top[0].data
        for b, w in zip(bottom, self.windows):
            y[w] = b.data

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        for b, w, down in zip(bottom, self.windows, propagate_down):
            if down:
                b.diff[...] = dy[w]


@register("Slice", "SLICE")
class SliceLayer(Layer):
    """Cut the bottom into consecutive pieces along one axis.

    Reads ``slice_param.axis`` (default 1; negative counts from the end) or
    the legacy ``slice_dim``, and ``slice_point`` (top count - 1 increasing
    cut positions). Without slice points the axis is split into equal parts,
    one per top (it must divide evenly). Backward: the top diffs are written
    back into their windows of the bottom diff.
    """

    exact_num_bottom = 1
    min_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.slice_param
        if p.HasField("axis") and p.HasField("slice_dim"):
            raise self.error("give either slice_param.axis or slice_param.slice_dim, not both")
        self.points = list(p.slice_point)

    def reshape(self, bottom, top):
        axis = _legacy_axis(self, bottom[0], self.layer_param.slice_param, "slice_dim",
                            "slice_param")
        n = bottom[0].shape[axis]
        if self.points:
            if len(self.points) != len(top) - 1:
                raise self.error("%d slice_point(s) need %d tops, got %d"
                                 % (len(self.points), len(self.points) + 1, len(top)))
            cuts = [0] + self.points + [n]
            sizes = [b - a for a, b in zip(cuts, cuts[1:])]
            if any(s <= 0 for s in sizes):
                raise self.error("slice_point %s must increase strictly inside (0, %d) (size of "
                                 "axis %d of bottom %s)" % (self.points, n, axis, bottom[0].shape))
        else:
            if n % len(top):
                raise self.error("%d tops do not evenly divide axis %d (size %d) of bottom %s"
                                 % (len(top), axis, n, bottom[0].shape))
            sizes = [n // len(top)] * len(top)
        self.windows = _windows(axis, sizes)
        shape = list(bottom[0].shape)
        for t, s in zip(top, sizes):
            shape[axis] = s
            t.reshape(shape)

    def forward(self, bottom, top):
        x = bottom[0].data
        for t, w in zip(top, self.windows):
            t.data[...] = x[w]

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        for t, w in zip(top, self.windows):
            dx[w] = t.diff
