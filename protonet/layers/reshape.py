"""Flatten and Reshape: new shapes for the same values, no copies.

Both make the top's data a view of the bottom's. The gradient is shared the
other way round in backward (the bottom's diff becomes a view of the top's),
as Caffe's Flatten does: whatever was written into the bottom's diff before
backward then cannot clobber the top diff being propagated.
"""
from ..layer import Layer, register
from .softmax import canonical_axis


class _ViewLayer(Layer):
    """Shared behaviour: top = bottom seen with another shape."""

    exact_num_bottom = 1
    exact_num_top = 1

    def top_shape(self, bottom):
        raise NotImplementedError

    def reshape(self, bottom, top):
        if top[0] is bottom[0]:
            raise self.error("does not allow in-place computation")
        shape = self.top_shape(bottom[0])
        top[0].reshape(shape)
        if top[0].count != bottom[0].count:
            raise self.error("output count %d (shape %s) must match the input count %d (shape %s)"
                             % (top[0].count, tuple(shape), bottom[0].count, bottom[0].shape))
        top[0].share_data(bottom[0])

    def forward(self, bottom, top):
        top[0].share_data(bottom[0])

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].share_diff(top[0])


@register("Flatten", "FLATTEN")
class FlattenLayer(_ViewLayer):
    """Merge the axes ``axis`` .. ``end_axis`` (inclusive) into one.

    Reads ``flatten_param.axis`` (default 1) and ``end_axis`` (default -1);
    negative values count from the end. E.g. (N, C, H, W) -> (N, C*H*W).
    The top shares the bottom's data and diff.
    """

    def top_shape(self, b):
        p = self.layer_param.flatten_param
        start = canonical_axis(self, b, p.axis, "flatten_param.axis")
        end = canonical_axis(self, b, p.end_axis, "flatten_param.end_axis")
        return b.shape[:start] + (b.count_range(start, end + 1),) + b.shape[end + 1:]


@register("Reshape")
class ReshapeLayer(_ViewLayer):
    """Give the axes ``axis`` .. ``axis + num_axes`` a new shape.

    Reads ``reshape_param.shape`` (dims: 0 = copy the bottom's dim at that
    position, -1 = infer from the count, at most once), ``axis`` (default
    0; negative: -1 means after the last axis) and ``num_axes`` (default -1 =
    all remaining axes). Axes outside the range are kept. The top shares the
    bottom's data and diff.
    """

    def setup(self, bottom, top):
        dims = [int(d) for d in self.layer_param.reshape_param.shape.dim]
        if any(d < -1 for d in dims):
            raise self.error("reshape_param.shape dims must be >= -1, got %s" % dims)
        if dims.count(-1) > 1:
            raise self.error("reshape_param.shape may contain at most one -1, got %s" % dims)
        self.dims = dims

    def top_shape(self, b):
        p = self.layer_param.reshape_param
        n = b.num_axes
        # Caffe's convention here: -1 is the position after the last axis.
        start = p.axis if p.axis >= 0 else n + p.axis + 1
        if not 0 <= start <= n:
            raise self.error("reshape_param.axis %d out of range for a %d-axis bottom %s"
                             % (p.axis, n, b.shape))
        if p.num_axes < -1:
            raise self.error("reshape_param.num_axes must be >= 0, or -1 for all, got %d" % p.num_axes)
        end = n if p.num_axes == -1 else start + p.num_axes
        if end > n:
            raise self.error("reshape_param.axis + num_axes = %d is beyond the %d axes of bottom %s"
                             % (end, n, b.shape))
        new = list(self.dims)
        for i, d in enumerate(new):
            if d == 0:
                if start + i >= n:
                    raise self.error("reshape_param.shape has a 0 at position %d but bottom %s "
                                     "has no axis %d to copy" % (i, b.shape, start + i))
                new[i] = b.shape[start + i]
        if -1 in new:
            known = b.count_range(0, start) * b.count_range(end)
            for d in new:
                if d != -1:
                    known *= d
            if known == 0 or b.count % known:
                raise self.error("bottom count %d (shape %s) is not divisible by the product of "
                                 "the given dims (%d)" % (b.count, b.shape, known))
            new[new.index(-1)] = b.count // known
        return b.shape[:start] + tuple(new) + b.shape[end:]
