"""Crop: cut bottom[0] down to bottom[1]'s shape (FCN's alignment of the upsampled scores)."""
from ..layer import Layer, register
from .softmax import canonical_axis


@register("Crop")
class CropLayer(Layer):
    """Crop bottom[0] to the shape of bottom[1] on the axes from ``axis`` on.

    Reads ``crop_param.axis`` (default 2; negative counts from the end) and
    ``crop_param.offset``: none (every offset 0), one (used for every cropped
    axis) or one per cropped axis. Axes before ``axis`` keep bottom[0]'s size.
    Shapes: bottom[0] (d0, ..., dn), bottom[1] the reference with as many
    axes -> top (d0, .., d_{axis-1}, r_axis, ..., r_n).
    y = x[..., o_axis : o_axis + r_axis, ..., o_n : o_n + r_n]; the gradient
    goes back into that window of bottom[0] (zero elsewhere). bottom[1] only
    gives a shape: its gradient is zero and force_backward does not ask for it.
    """

    exact_num_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.crop_param
        if bottom[0].num_axes != bottom[1].num_axes:
            raise self.error("bottom[0] %s and the reference bottom[1] %s must have the same "
                             "number of axes" % (bottom[0].shape, bottom[1].shape))
        self.start_axis = canonical_axis(self, bottom[0], p.axis, "crop_param.axis")
        ncrop = bottom[0].num_axes - self.start_axis
        if len(p.offset) > 1 and len(p.offset) != ncrop:
            raise self.error("crop_param.offset needs 0, 1 or %d values (one per axis from "
                             "axis %d on), got %d" % (ncrop, self.start_axis, len(p.offset)))

    def reshape(self, bottom, top):
        offsets = list(self.layer_param.crop_param.offset)
        shape, window = [], []
        for i, size in enumerate(bottom[0].shape):
            off = 0
            if i >= self.start_axis:
                want = bottom[1].shape[i]
                if len(offsets) == 1:
                    off = offsets[0]
                elif len(offsets) > 1:
                    off = offsets[i - self.start_axis]
                if off + want > size:
                    raise self.error("cannot crop axis %d: offset %d + reference size %d exceeds "
                                     "the input size %d (bottom[0] %s, bottom[1] %s)"
                                     % (i, off, want, size, bottom[0].shape, bottom[1].shape))
                size = want
            shape.append(size)
            window.append(slice(off, off + size))
        self.window = tuple(window)
        top[0].reshape(shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data[self.window]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dx = bottom[0].diff
            dx.fill(0)
            dx[self.window] = top[0].diff
        if propagate_down[1]:
            bottom[1].diff.fill(0)

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0
