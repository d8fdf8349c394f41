"""Finite-difference gradient checking for single layers (float64, NumPy).

Objective: L = sum_t sum(top_t.data * W_t) with fixed random weights W_t;
the analytic gradient comes from writing W_t into the top diffs and calling
backward. Central differences, Caffe's tolerance rule
|a - n| <= threshold * max(|a|, |n|, 1), the RNG reseeded before every
forward (so Dropout masks repeat), and points within ``kink_range`` of
``kink`` skipped (ReLU at 0, ...).
"""
import numpy as np
from google.protobuf import text_format

from protonet.blob import Blob
from protonet.layer import create_layer, TRAIN
from protonet.proto import caffe_pb2
from protonet import rng


def make_layer(prototxt, phase=TRAIN, dtype=np.float64):
    """A LayerParameter from a text snippet (a `layer { ... }` body)."""
    param = caffe_pb2.LayerParameter()
    text_format.Parse(prototxt, param)
    return create_layer(param, phase=phase, dtype=dtype, xp=np)


def build(layer, bottoms, num_top=None):
    """Blobs for ``bottoms`` (arrays), tops, then setup + reshape. Returns (bottom, top)."""
    dtype = layer.dtype
    bottom = []
    for a in bottoms:
        b = Blob(np.shape(a), dtype=dtype, xp=np)
        b.data[...] = a
        bottom.append(b)
    ntop = len(layer.layer_param.top) if num_top is None else num_top
    top = [Blob((), dtype=dtype, xp=np) for _ in range(ntop)]
    layer.check_arity(len(bottom), len(top))
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.param_propagate_down = [True] * len(layer.blobs)
    return bottom, top


def forward(layer, bottom, top, seed=1701):
    rng.set_random_seed(seed)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)


def check_gradient(layer, bottoms, check_bottom=None, check_params=True, step=1e-5,
                   threshold=1e-5, kink=None, kink_range=-1.0, seed=0, num_top=None,
                   bottom=None, top=None):
    """Compare analytic and numeric gradients of ``layer``.

    ``check_bottom``: indices of bottoms to check (default: all). Returns the
    number of elements compared (so a test can assert something was checked).
    """
    if bottom is None:
        bottom, top = build(layer, bottoms, num_top)
    r = np.random.default_rng(seed)
    forward(layer, bottom, top)
    weights = [r.standard_normal(t.shape) if t.shape else np.asarray(r.uniform(0.5, 1.5)) for t in top]

    def objective():
        forward(layer, bottom, top)
        return sum(float(np.sum(t.data * w)) for t, w in zip(top, weights))

    if check_bottom is None:
        check_bottom = list(range(len(bottom)))
    # analytic
    forward(layer, bottom, top)
    for t, w in zip(top, weights):
        t.diff[...] = w
    for p in layer.blobs:
        p.diff[...] = 0
    prop = [i in check_bottom for i in range(len(bottom))]
    for b in bottom:
        b.diff[...] = 0
    layer.backward(top, prop, bottom)
    targets = [(bottom[i], bottom[i].diff.copy(), "bottom %d" % i) for i in check_bottom]
    if check_params:
        targets += [(p, p.diff.copy(), "param %d" % j) for j, p in enumerate(layer.blobs)]
    checked = 0
    for blob, analytic, label in targets:
        flat = blob.data.reshape(-1)
        agrad = analytic.reshape(-1)
        for i in range(flat.size):
            x0 = flat[i]
            if kink is not None and abs(x0 - kink) < kink_range:
                continue
            flat[i] = x0 + step
            plus = objective()
            flat[i] = x0 - step
            minus = objective()
            flat[i] = x0
            numeric = (plus - minus) / (2 * step)
            a = agrad[i]
            scale = max(abs(a), abs(numeric), 1.0)
            assert abs(a - numeric) <= threshold * scale, (
                "%s (type %s) %s element %d: analytic %.8g vs numeric %.8g"
                % (layer.name, layer.type, label, i, a, numeric))
            checked += 1
    return checked
