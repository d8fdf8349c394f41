"""Bias and Scale: add / multiply a blob broadcast along a span of axes.

The operand (a learned parameter, or the second bottom) has the shape of
bottom[0]'s axes ``axis .. axis + operand.ndim``; bottom[0] is viewed as
(outer, dim, inner) around that span and the operand as (1, dim, 1). A 0-axis
operand is a scalar and always applies from axis 0, as in Caffe.
"""
from .. import fillers
from ..layer import Layer, register
from ..proto import caffe_pb2
from .neuron import Workspaces


def _canonical_axis(layer, blob, axis):
    try:
        return blob.canonical_axis(axis)
    except ValueError as exc:
        raise layer.error(str(exc))


def _param_shape(layer, bottom, axis, num_axes, what):
    """Shape of a learned operand: bottom's axes axis .. axis + num_axes (-1: to the end)."""
    axis = _canonical_axis(layer, bottom, axis)
    if num_axes < -1:
        raise layer.error("%s num_axes must be >= 0, or -1 to extend to the end of bottom[0]; "
                          "got %d" % (what, num_axes))
    if num_axes >= 0 and bottom.num_axes < axis + num_axes:
        raise layer.error("%s spans axes %d..%d, past the end of bottom[0] %s"
                          % (what, axis, axis + num_axes - 1, bottom.shape))
    end = bottom.num_axes if num_axes == -1 else axis + num_axes
    return bottom.shape[axis:end]


def _span(layer, bottom, operand_shape, axis, what):
    """(outer, dim, inner) of bottom around the axes the operand covers."""
    axis = 0 if len(operand_shape) == 0 else _canonical_axis(layer, bottom, axis)
    n = len(operand_shape)
    shape = bottom.shape
    if len(shape) < axis + n or tuple(shape[axis:axis + n]) != tuple(operand_shape):
        raise layer.error("%s shape %s does not match bottom[0] shape %s from axis %d"
                          % (what, tuple(operand_shape), shape, axis))
    outer = bottom.count_range(0, axis)
    dim = bottom.count_range(axis, axis + n)
    inner = bottom.count_range(axis + n)
    return outer, dim, inner


def _reduce_span(arr3, out, accumulate):
    """Sum (outer, dim, inner) over outer and inner into ``out`` (shape of the operand)."""
    total = arr3.sum(axis=(0, 2)).reshape(out.shape)
    if accumulate:
        out += total
    else:
        out[...] = total


@register("Bias")
class Bias(Layer):
    """y = x + b, b broadcast over bottom[0] from ``axis``.

    Reads ``bias_param.axis`` (default 1), ``num_axes`` (default 1; -1 = to
    the end; 0 = a scalar) and ``filler`` (default constant 0). With one
    bottom, b is a learned param of shape x.shape[axis:axis + num_axes]; with
    two bottoms, b is bottom[1] (its shape gives the span; num_axes is
    ignored). Top: x's shape; may run in place.
    Gradients: dx = dy; db = dy summed over all axes outside the span
    (accumulated into the param, written to bottom[1]'s diff).
    """

    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.bias_param
        if len(bottom) == 1:
            shape = _param_shape(self, bottom[0], p.axis, p.num_axes, "bias")
            self.blobs = [self.new_blob(shape)]
            fillers.fill(self.blobs[0], p.filler)

    def reshape(self, bottom, top):
        b = bottom[1] if len(bottom) > 1 else self.blobs[0]
        self.outer, self.dim, self.inner = _span(
            self, bottom[0], b.shape, self.layer_param.bias_param.axis, "bias")
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        b = bottom[1] if len(bottom) > 1 else self.blobs[0]
        y3 = top[0].data.reshape(self.outer, self.dim, self.inner)
        self.xp.add(bottom[0].data.reshape(y3.shape), b.data.reshape(1, self.dim, 1), out=y3)

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        if propagate_down[0] and bottom[0] is not top[0]:
            bottom[0].diff[...] = dy
        dy3 = dy.reshape(self.outer, self.dim, self.inner)
        if len(bottom) > 1:
            if propagate_down[1]:
                _reduce_span(dy3, bottom[1].diff, accumulate=False)
        elif self.param_needs_grad(0):
            _reduce_span(dy3, self.blobs[0].engine_diff(), accumulate=True)


@register("Scale")
class Scale(Layer):
    """y = x * s (+ b), s (and b) broadcast over bottom[0] from ``axis``.

    Reads ``scale_param.axis`` (default 1), ``num_axes`` (default 1; -1 = to
    the end; 0 = a scalar, a 0-axis param), ``filler`` (default constant 1),
    ``bias_term`` (default false) and ``bias_filler`` (default constant 0).
    With one bottom, s is param 0 of shape x.shape[axis:axis + num_axes];
    with two bottoms, s is bottom[1] (num_axes is ignored). With bias_term,
    b is the last param, shaped like s. Top: x's shape; may run in place.
    Gradients: dx = dy * s; ds = sum of dy * x over the axes outside the span
    (accumulated into the param, written to bottom[1]'s diff); db = sum of dy
    over the same axes (accumulated).
    """

    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ws = Workspaces(self.xp)

    def setup(self, bottom, top):
        p = self.layer_param.scale_param
        self.blobs = []
        if len(bottom) == 1:
            shape = _param_shape(self, bottom[0], p.axis, p.num_axes, "scale")
            if p.HasField("filler"):
                filler = p.filler
            else:
                # Identity by default.
                filler = caffe_pb2.FillerParameter(type="constant", value=1)
            self.blobs.append(self.new_blob(shape))
            fillers.fill(self.blobs[0], filler)
        self.bias_index = None
        if p.bias_term:
            # Caffe's internal Bias layer spans as many axes as the scale operand.
            num_axes = bottom[1].num_axes if len(bottom) > 1 else p.num_axes
            shape = _param_shape(self, bottom[0], p.axis, num_axes, "bias")
            self.bias_index = len(self.blobs)
            self.blobs.append(self.new_blob(shape))
            fillers.fill(self.blobs[-1], p.bias_filler)

    def reshape(self, bottom, top):
        p = self.layer_param.scale_param
        s = bottom[1] if len(bottom) > 1 else self.blobs[0]
        self.outer, self.dim, self.inner = _span(self, bottom[0], s.shape, p.axis, "scale")
        if self.bias_index is not None:
            b = self.blobs[self.bias_index]
            self.bias_span = _span(self, bottom[0], b.shape, p.axis, "bias")
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def _view3(self, arr):
        return arr.reshape(self.outer, self.dim, self.inner)

    def forward(self, bottom, top):
        xp = self.xp
        x = bottom[0].data
        s = (bottom[1] if len(bottom) > 1 else self.blobs[0]).data
        if top[0] is bottom[0]:
            # The scale's gradient needs x, which an in-place forward overwrites.
            saved = self.ws.get("input", x.shape, self.dtype)
            saved[...] = x
        y3 = self._view3(top[0].data)
        xp.multiply(self._view3(x), s.reshape(1, self.dim, 1), out=y3)
        if self.bias_index is not None:
            outer, dim, inner = self.bias_span
            b = self.blobs[self.bias_index].data
            y = top[0].data.reshape(outer, dim, inner)
            y += b.reshape(1, dim, 1)

    def backward(self, top, propagate_down, bottom):
        xp = self.xp
        dy = top[0].diff
        in_place = top[0] is bottom[0]
        if self.bias_index is not None and self.param_needs_grad(self.bias_index):
            _reduce_span(dy.reshape(self.bias_span), self.blobs[self.bias_index].engine_diff(),
                         accumulate=True)
        two_bottoms = len(bottom) > 1
        s_blob = bottom[1] if two_bottoms else self.blobs[0]
        # Scale gradient before dx: in place, dx is dy.
        if (propagate_down[1] if two_bottoms else self.param_needs_grad(0)):
            x = self.ws.get("input", dy.shape, self.dtype) if in_place else bottom[0].data
            prod = self.ws.get("prod", dy.shape, self.dtype)
            xp.multiply(dy, x, out=prod)
            _reduce_span(self._view3(prod), s_blob.engine_diff(), accumulate=not two_bottoms)
        if propagate_down[0]:
            xp.multiply(self._view3(dy), s_blob.data.reshape(1, self.dim, 1),
                        out=self._view3(bottom[0].diff))
