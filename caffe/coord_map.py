"""Relate the coordinates of NetSpec tops, to compute Crop offsets from the geometry.

A coordinate map is ``(axis, a, b)``: input coordinate ``x`` lands at output
coordinate ``a * x + b`` on the spatial axes (``axis`` None: any axis, for
point-wise layers). Maps compose along the graph; :func:`crop` walks from two
tops back to a common ancestor and returns the Crop layer that aligns the first
with the second (FCN's ``crop(n.upscore, n.data)``).
"""
import numpy as np

from .net_spec import layers as L

# Layers that keep every spatial coordinate where it is.
PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU",
                       "Log", "LRN", "Exp", "MVN", "Power", "ReLU", "PReLU", "Scale",
                       "Sigmoid", "Split", "TanH", "Threshold"]


def conv_params(fn):
    """(axis, stride, effective kernel extent, pad) of a Convolution/Deconvolution/
    Pooling/Im2col function, each as an array (one value or one per spatial axis)."""
    params = fn.params.get("convolution_param") or fn.params.get("pooling_param") or fn.params
    assert len({"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"}
               & set(params)) == 0, "cropping does not support legacy _h/_w params"
    if "kernel_size" not in params:
        if params.get("global_pooling"):
            raise UndefinedMapException("global pooling has no coordinate map")
        raise KeyError("%s layer needs kernel_size to map coordinates" % fn.type_name)
    axis = params.get("axis", 1)
    ks = np.array(params["kernel_size"], ndmin=1)
    dilation = np.array(params.get("dilation", 1), ndmin=1)
    return (axis, np.array(params.get("stride", 1), ndmin=1),
            (ks - 1) * dilation + 1, np.array(params.get("pad", 0), ndmin=1))


def crop_params(fn):
    """(axis, offset) of a Crop function, with Caffe's defaults (axis 2, offset 0)."""
    params = fn.params.get("crop_param", fn.params)
    axis = params.get("axis", 2)
    offset = np.array(params.get("offset", 0), ndmin=1)
    return axis, offset


class UndefinedMapException(Exception):
    """The layer type has no defined coordinate mapping (data layers, InnerProduct...)."""


def coord_map(fn):
    """The map of one layer function, ``(axis, scale, shift)``; see the module docstring.

    The axis of convolution-like layers is the channel axis (1); :func:`crop`
    adds one to get the first spatial axis.
    """
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, ks, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (ks - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, ks, pad = conv_params(fn)
        return axis, stride, (ks - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        axis -= 1                                  # maps are keyed by the channel axis
        return axis, 1, -offset
    raise UndefinedMapException(fn.type_name)


class AxisMismatchException(Exception):
    """Two maps on different axes cannot be composed."""


def compose(base_map, next_map):
    """``base_map`` after ``next_map``: scales multiply, the further shift is scaled."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        ax = ax2
    elif ax2 is None or ax1 == ax2:
        ax = ax1
    else:
        raise AxisMismatchException("cannot compose maps on axes %s and %s" % (ax1, ax2))
    return ax, a1 * a2, a1 * b2 + b1


def inverse(coord_map):
    """The backward map: de-scale and un-shift."""
    ax, a, b = coord_map
    return ax, 1 / a, -b / a


def coord_map_from_to(top_from, top_to):
    """The map from ``top_from``'s coordinates to ``top_to``'s, through their common ancestor."""
    def collect_bottoms(top):
        # Only a Crop's first bottom is mapped; its second only gives the size.
        bottoms = top.fn.inputs
        if top.fn.type_name == "Crop":
            bottoms = bottoms[:1]
        return bottoms

    from_maps = {top_from: (None, 1, 0)}
    frontier = [top_from]
    while frontier:
        top = frontier.pop()
        try:
            for bottom in collect_bottoms(top):
                from_maps[bottom] = compose(from_maps[top], coord_map(top.fn))
                frontier.append(bottom)
        except UndefinedMapException:
            pass

    to_maps = {top_to: (None, 1, 0)}
    frontier = [top_to]
    while frontier:
        top = frontier.pop()
        if top in from_maps:
            return compose(to_maps[top], inverse(from_maps[top]))
        try:
            for bottom in collect_bottoms(top):
                to_maps[bottom] = compose(to_maps[top], coord_map(top.fn))
                frontier.append(bottom)
        except UndefinedMapException:
            continue
    raise RuntimeError("Could not compute map between tops; are they connected by spatial layers?")


def crop(top_from, top_to):
    """A Crop layer cropping ``top_from`` to ``top_to``'s size, aligned by the geometry.

    Raises AssertionError when the two differ in scale, or the offset would be
    negative or fractional (the nets cannot be aligned by cropping).
    """
    ax, a, b = coord_map_from_to(top_from, top_to)
    assert (np.asarray(a) == 1).all(), "scale mismatch on crop (a = {})".format(a)
    assert (np.asarray(b) <= 0).all(), "cannot crop negative offset (b = {})".format(b)
    assert (np.round(b) == b).all(), "cannot crop noninteger offset (b = {})".format(b)
    offset = [int(v) for v in -np.round(np.asarray(b, dtype=float).reshape(-1))]
    return L.Crop(top_from, top_to, crop_param=dict(axis=ax + 1, offset=offset))
