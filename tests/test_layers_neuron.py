"""Elementwise layers, Dropout, PReLU, Bias and Scale.

Forward values are checked against per-element references written with the
math module over tiny arrays; gradients by finite differences
(tests/gradcheck.py); in-place runs against out-of-place ones; and every
matching case in tests/caffe_reference/parity against real Caffe (float32).
"""
import json
import math

import numpy as np
import pytest

from parity import PARITY, cases, run_layer_case_direct
from gradcheck import build, check_gradient, make_layer
from protonet import rng
from protonet.blob import Blob
from protonet.layer import TEST, TRAIN, LayerError


def _layer(body, phase=TRAIN):
    return make_layer('name: "l" top: "y" ' + body, phase=phase)


def _f32(v):
    """A prototxt float as the parser stores it (rounded to float32)."""
    return float(np.float32(v))


def _randn(shape, seed=0, scale=1.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


def _away_from(x, points, margin=0.02):
    """Push values within ``margin`` of any of ``points`` off the kinks."""
    x = x.copy()
    for p in points:
        near = np.abs(x - p) < margin
        x[near] = p + np.where(x[near] >= p, margin, -margin) * 2
    return x


def _forward(body, x, phase=TRAIN, params=None):
    layer = _layer(body, phase)
    bottom, top = build(layer, [x] if not isinstance(x, list) else x)
    if params is not None:
        for blob, value in zip(layer.blobs, params):
            blob.data[...] = value
    layer.forward(bottom, top)
    return layer, bottom, top


def _elementwise(f, x):
    out = np.empty_like(x)
    flat_in, flat_out = x.reshape(-1), out.reshape(-1)
    for i in range(flat_in.size):
        flat_out[i] = f(float(flat_in[i]))
    return out


# ----------------------------------------------------------------------------
# Forward against per-element references

def _sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


FORWARD_CASES = [
    ("relu", 'type: "ReLU"', lambda v: v if v > 0 else 0.0),
    ("relu_leaky", 'type: "ReLU" relu_param { negative_slope: 0.25 }',
     lambda v: v if v > 0 else 0.25 * v),
    ("relu_negative_slope", 'type: "ReLU" relu_param { negative_slope: -0.5 }',
     lambda v: v if v > 0 else -0.5 * v),
    ("sigmoid", 'type: "Sigmoid"', _sigmoid),
    ("tanh", 'type: "TanH"', math.tanh),
    ("elu", 'type: "ELU"', lambda v: v if v > 0 else math.exp(v) - 1),
    ("elu_alpha", 'type: "ELU" elu_param { alpha: 0.5 }',
     lambda v: v if v > 0 else 0.5 * (math.exp(v) - 1)),
    ("absval", 'type: "AbsVal"', abs),
    ("bnll", 'type: "BNLL"', lambda v: math.log(1 + math.exp(v)) if v < 30 else v),
    ("exp", 'type: "Exp"', math.exp),
    ("exp_params", 'type: "Exp" exp_param { scale: 0.5 shift: 0.25 }',
     lambda v: math.exp(0.5 * v + 0.25)),
    ("exp_base2", 'type: "Exp" exp_param { base: 2 scale: 1.5 shift: -0.5 }',
     lambda v: 2.0 ** (1.5 * v - 0.5)),
    ("log", 'type: "Log" log_param { shift: 8 }', lambda v: math.log(v + 8)),
    ("log_base10", 'type: "Log" log_param { base: 10 scale: 2 shift: 16 }',
     lambda v: math.log10(2 * v + 16)),
    ("power_square", 'type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }',
     lambda v: (1 + 0.5 * v) ** 2),
    ("power_sqrt", 'type: "Power" power_param { power: 0.5 scale: 0.5 shift: 3 }',
     lambda v: math.sqrt(3 + 0.5 * v)),
    ("power_affine", 'type: "Power" power_param { scale: 2 shift: -116 }',
     lambda v: 2 * v - 116),
    ("power_general", 'type: "Power" power_param { power: 3 scale: -0.7 shift: 0.2 }',
     lambda v: (_f32(0.2) - _f32(0.7) * v) ** 3),
    ("power_noshift", 'type: "Power" power_param { power: 3 scale: 1.5 }',
     lambda v: (1.5 * v) ** 3),
    ("power_zero", 'type: "Power" power_param { power: 0 scale: 3 shift: 2 }',
     lambda v: 1.0),
    ("power_scale_zero", 'type: "Power" power_param { power: 3 scale: 0 shift: 2 }',
     lambda v: 8.0),
    ("threshold", 'type: "Threshold" threshold_param { threshold: 0.3 }',
     lambda v: 1.0 if v > 0.3 else 0.0),
    ("clip", 'type: "Clip" clip_param { min: -0.5 max: 0.75 }',
     lambda v: min(max(v, -0.5), 0.75)),
    ("swish", 'type: "Swish"', lambda v: v * _sigmoid(v)),
    ("swish_beta", 'type: "Swish" swish_param { beta: 1.5 }', lambda v: v * _sigmoid(1.5 * v)),
    ("dropout_test", 'type: "Dropout" dropout_param { dropout_ratio: 0.4 }', lambda v: v),
]


@pytest.mark.parametrize("name,body,ref", FORWARD_CASES, ids=[c[0] for c in FORWARD_CASES])
def test_forward(name, body, ref):
    x = _randn((2, 3, 4), seed=3, scale=2.0)
    x[0, 0, :3] = [0.0, 0.3, -0.5]  # the kinks / threshold themselves
    phase = TEST if name == "dropout_test" else TRAIN
    _, _, top = _forward(body, x, phase=phase)
    np.testing.assert_allclose(top[0].data, _elementwise(ref, x), rtol=1e-12, atol=1e-12)


def test_bnll_large_inputs_stay_finite():
    x = np.array([-200.0, -60.0, -1e-3, 0.0, 1e-3, 60.0, 200.0])
    _, _, top = _forward('type: "BNLL"', x)
    expected = [math.log1p(math.exp(v)) if v < 0 else v + math.log1p(math.exp(-v)) for v in x]
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-14, atol=0)


def test_prelu_forward():
    x = _randn((2, 3, 2, 2), seed=5)
    slopes = np.array([0.1, -0.2, 0.7])
    _, _, top = _forward('type: "PReLU"', x, params=[slopes])
    expected = np.empty_like(x)
    for n in range(2):
        for c in range(3):
            for h in range(2):
                for w in range(2):
                    v = x[n, c, h, w]
                    expected[n, c, h, w] = v if v > 0 else slopes[c] * v
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-15)
    _, _, top = _forward('type: "PReLU" prelu_param { channel_shared: true }', x,
                         params=[np.array(0.3)])
    np.testing.assert_allclose(top[0].data, np.where(x > 0, x, 0.3 * x), rtol=1e-15)


def test_prelu_default_filler_and_shapes():
    layer, _, _ = _forward('type: "PReLU"', _randn((2, 4, 3)))
    assert layer.blobs[0].shape == (4,)
    np.testing.assert_array_equal(layer.blobs[0].data, 0.25)
    layer, _, _ = _forward('type: "PReLU" prelu_param { channel_shared: true }', _randn((2, 4)))
    assert layer.blobs[0].shape == ()
    np.testing.assert_array_equal(layer.blobs[0].data, 0.25)
    layer, _, _ = _forward(
        'type: "PReLU" prelu_param { filler { type: "constant" value: -0.5 } }', _randn((2, 4)))
    np.testing.assert_array_equal(layer.blobs[0].data, -0.5)


def _loop_broadcast(x, operand, axis, op):
    """x (op) operand with operand covering x's axes axis .. axis + operand.ndim."""
    out = np.empty_like(x)
    for idx in np.ndindex(*x.shape):
        out[idx] = op(x[idx], operand[idx[axis:axis + operand.ndim]])
    return out


def test_bias_forward():
    x = _randn((2, 3, 4, 2), seed=1)
    b = _randn((3, 4), seed=2)
    _, _, top = _forward('type: "Bias" bias_param { num_axes: 2 }', x, params=[b])
    np.testing.assert_allclose(top[0].data, _loop_broadcast(x, b, 1, float.__add__), rtol=1e-15)
    _, _, top = _forward('type: "Bias" bias_param { axis: -3 }', [x, b])
    np.testing.assert_allclose(top[0].data, _loop_broadcast(x, b, 1, float.__add__), rtol=1e-15)
    layer, _, top = _forward('type: "Bias" bias_param { axis: 2 num_axes: -1 }', x)
    assert layer.blobs[0].shape == (4, 2)
    np.testing.assert_array_equal(layer.blobs[0].data, 0)  # default filler: constant 0
    np.testing.assert_array_equal(top[0].data, x)


def test_scale_forward():
    x = _randn((2, 3, 4), seed=1)
    s = _randn((2, 3), seed=2)
    b = _randn((2, 3), seed=3)
    layer, _, top = _forward('type: "Scale" scale_param { axis: 0 num_axes: 2 bias_term: true }',
                             x, params=[s, b])
    assert [blob.shape for blob in layer.blobs] == [(2, 3), (2, 3)]
    expected = _loop_broadcast(_loop_broadcast(x, s, 0, float.__mul__), b, 0, float.__add__)
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-15)
    _, _, top = _forward('type: "Scale" scale_param { axis: 0 }', [x, s])
    np.testing.assert_allclose(top[0].data, _loop_broadcast(x, s, 0, float.__mul__), rtol=1e-15)
    # num_axes 0: a 0-axis scalar param, whatever the axis says
    layer, _, top = _forward('type: "Scale" scale_param { axis: 2 num_axes: 0 }', x,
                             params=[np.array(-1.5)])
    assert layer.blobs[0].shape == ()
    np.testing.assert_allclose(top[0].data, -1.5 * x, rtol=1e-15)


def test_scale_default_fillers():
    x = _randn((2, 3, 4))
    layer, _, top = _forward('type: "Scale" scale_param { bias_term: true }', x)
    np.testing.assert_array_equal(layer.blobs[0].data, 1)
    np.testing.assert_array_equal(layer.blobs[1].data, 0)
    np.testing.assert_array_equal(top[0].data, x)
    layer, _, _ = _forward(
        'type: "Scale" scale_param { filler { type: "constant" value: 3 } bias_term: true '
        'bias_filler { type: "constant" value: 2 } }', _randn((2, 3, 4)))
    np.testing.assert_array_equal(layer.blobs[0].data, 3)
    np.testing.assert_array_equal(layer.blobs[1].data, 2)
    # Two-bottom form with a bias: the bias is the only param, shaped like bottom[1]'s span.
    layer, _, _ = _forward('type: "Scale" scale_param { axis: 1 bias_term: true }',
                           [_randn((2, 3, 4)), _randn((3, 4))])
    assert [blob.shape for blob in layer.blobs] == [(3, 4)]


# ----------------------------------------------------------------------------
# Finite-difference gradients

GRAD_CASES = [
    ("relu", 'type: "ReLU"', 0.0),
    ("relu_leaky", 'type: "ReLU" relu_param { negative_slope: 0.1 }', 0.0),
    ("relu_negative_slope", 'type: "ReLU" relu_param { negative_slope: -0.3 }', 0.0),
    ("sigmoid", 'type: "Sigmoid"', None),
    ("tanh", 'type: "TanH"', None),
    ("elu", 'type: "ELU"', 0.0),
    ("elu_alpha", 'type: "ELU" elu_param { alpha: 0.3 }', 0.0),
    ("elu_negative_alpha", 'type: "ELU" elu_param { alpha: -0.4 }', 0.0),
    ("absval", 'type: "AbsVal"', 0.0),
    ("bnll", 'type: "BNLL"', None),
    ("exp", 'type: "Exp"', None),
    ("exp_base2", 'type: "Exp" exp_param { base: 2 scale: 0.5 shift: -0.2 }', None),
    ("log", 'type: "Log" log_param { shift: 8 }', None),
    ("log_base10", 'type: "Log" log_param { base: 10 scale: 2 shift: 16 }', None),
    ("power_square", 'type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }', None),
    ("power_square_noshift", 'type: "Power" power_param { power: 2 scale: -1.5 }', None),
    ("power_sqrt", 'type: "Power" power_param { power: 0.5 scale: 0.5 shift: 3 }', None),
    ("power_affine", 'type: "Power" power_param { scale: 2 shift: -1 }', None),
    ("power_general", 'type: "Power" power_param { power: 3 scale: -0.7 shift: 0.2 }', None),
    ("power_noshift", 'type: "Power" power_param { power: 3 scale: 1.5 }', None),
    ("power_zero", 'type: "Power" power_param { power: 0 scale: 3 shift: 2 }', None),
    ("power_scale_zero", 'type: "Power" power_param { power: 3 scale: 0 shift: 2 }', None),
    ("clip", 'type: "Clip" clip_param { min: -0.5 max: 0.75 }', None),
    ("swish", 'type: "Swish"', None),
    ("swish_beta", 'type: "Swish" swish_param { beta: 1.7 }', None),
    ("dropout_test", 'type: "Dropout"', None),
]


@pytest.mark.parametrize("name,body,kink", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_gradient(name, body, kink):
    x = _away_from(_randn((2, 3, 4), seed=7, scale=1.5), [0.0, -0.5, 0.75])
    phase = TEST if name == "dropout_test" else TRAIN
    layer = _layer(body, phase)
    kw = {} if kink is None else {"kink": kink, "kink_range": 0.01}
    assert check_gradient(layer, [x], threshold=1e-6, **kw) == x.size


def test_dropout_train_gradient_with_fixed_seed():
    # check_gradient reseeds before every forward, so the mask is the same each time.
    layer = _layer('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', TRAIN)
    assert check_gradient(layer, [_randn((3, 4, 5), seed=2)], threshold=1e-6) == 60


@pytest.mark.parametrize("shared", [False, True])
def test_prelu_gradient(shared):
    body = 'type: "PReLU" prelu_param { channel_shared: %s }' % str(shared).lower()
    layer = _layer(body)
    x = _away_from(_randn((2, 3, 2, 3), seed=4), [0.0])
    bottom, top = build(layer, [x])
    layer.blobs[0].data[...] = 0.3 if shared else [0.1, -0.4, 0.6]
    n = check_gradient(layer, [x], kink=0.0, kink_range=0.01, bottom=bottom, top=top)
    assert n == x.size + layer.blobs[0].count


BIAS_SCALE_GRAD_CASES = [
    ("bias_param", 'type: "Bias"', [(2, 3, 4)]),
    ("bias_axes", 'type: "Bias" bias_param { axis: -2 num_axes: -1 }', [(2, 3, 4)]),
    ("bias_scalar", 'type: "Bias" bias_param { num_axes: 0 }', [(2, 3)]),
    ("bias_two_bottom", 'type: "Bias" bias_param { axis: 1 }', [(2, 3, 4), (3, 4)]),
    ("scale_param", 'type: "Scale"', [(2, 3, 4)]),
    ("scale_param_bias", 'type: "Scale" scale_param { bias_term: true '
                         'filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
     [(2, 3, 4)]),
    ("scale_axis_num_axes", 'type: "Scale" scale_param { axis: 1 num_axes: 2 bias_term: true '
                            'filler { type: "uniform" min: -1 max: 1 } }', [(2, 3, 2, 2)]),
    ("scale_scalar", 'type: "Scale" scale_param { num_axes: 0 filler { type: "gaussian" } }',
     [(2, 3)]),
    ("scale_eltwise", 'type: "Scale" scale_param { axis: 0 num_axes: -1 '
                      'filler { type: "gaussian" } }', [(2, 3)]),
    ("scale_two_bottom", 'type: "Scale" scale_param { axis: 0 }', [(2, 3, 4), (2, 3)]),
    ("scale_two_bottom_bias", 'type: "Scale" scale_param { axis: 1 bias_term: true '
                              'bias_filler { type: "gaussian" } }', [(2, 3, 4), (3,)]),
    ("scale_two_bottom_scalar", 'type: "Scale"', [(2, 3), ()]),
]


@pytest.mark.parametrize("name,body,shapes", BIAS_SCALE_GRAD_CASES,
                         ids=[c[0] for c in BIAS_SCALE_GRAD_CASES])
def test_bias_scale_gradient(name, body, shapes):
    rng.set_random_seed(11)  # the gaussian fillers
    arrays = [_randn(s, seed=i + 20) for i, s in enumerate(shapes)]
    layer = _layer(body)
    n = check_gradient(layer, arrays, threshold=1e-6)
    expected = sum(a.size for a in arrays) + sum(b.count for b in layer.blobs)
    assert n == expected


def test_param_diffs_accumulate_and_bottom_diffs_overwrite():
    x = _randn((2, 3, 4), seed=1)
    dy = _randn((2, 3, 4), seed=2)
    for body, nparams in [('type: "PReLU"', 1), ('type: "Bias"', 1),
                          ('type: "Scale" scale_param { bias_term: true }', 2)]:
        layer = _layer(body)
        bottom, top = build(layer, [x])
        layer.forward(bottom, top)
        top[0].diff[...] = dy
        for blob in layer.blobs:
            blob.diff[...] = 0
        layer.backward(top, [True], bottom)
        once = [blob.diff.copy() for blob in layer.blobs]
        first_dx = bottom[0].diff.copy()
        layer.backward(top, [True], bottom)
        assert len(once) == nparams
        for blob, d in zip(layer.blobs, once):
            np.testing.assert_allclose(blob.diff, 2 * d, rtol=1e-14)
        np.testing.assert_allclose(bottom[0].diff, first_dx, rtol=0)
    # Two-bottom forms overwrite the operand's diff.
    for body, s_shape in [('type: "Bias"', (3,)), ('type: "Scale"', (3,))]:
        layer = _layer(body)
        bottom, top = build(layer, [x, _randn(s_shape, seed=3)])
        layer.forward(bottom, top)
        top[0].diff[...] = dy
        layer.backward(top, [True, True], bottom)
        first = bottom[1].diff.copy()
        layer.backward(top, [True, True], bottom)
        np.testing.assert_array_equal(bottom[1].diff, first)


def test_param_gradient_skipped_when_not_needed():
    layer = _layer('type: "Scale" scale_param { bias_term: true }')
    bottom, top = build(layer, [_randn((2, 3))])
    layer.param_propagate_down = [False, False]
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    for blob in layer.blobs:
        np.testing.assert_array_equal(blob.diff, 0)


# ----------------------------------------------------------------------------
# In place: top[0] is bottom[0]

def _run(body, x, dy, in_place, phase=TRAIN, params=None, seed=5):
    layer = _layer(body, phase)
    bottom = Blob(x.shape, dtype=np.float64, xp=np)
    bottom.data[...] = x
    top = bottom if in_place else Blob((), dtype=np.float64, xp=np)
    layer.check_arity(1, 1)
    layer.setup([bottom], [top])
    layer.param_propagate_down = [True] * len(layer.blobs)
    if params is not None:
        for blob, value in zip(layer.blobs, params):
            blob.data[...] = value
    rng.set_random_seed(seed)
    layer.reshape([bottom], [top])
    layer.forward([bottom], [top])
    y = top.data.copy()
    top.diff[...] = dy
    layer.backward([top], [True], [bottom])
    return y, bottom.diff.copy(), [b.diff.copy() for b in layer.blobs]


IN_PLACE_CASES = [(name, body) for name, body, _ in GRAD_CASES] + [
    ("dropout_train", 'type: "Dropout" dropout_param { dropout_ratio: 0.3 }'),
    ("prelu", 'type: "PReLU"'),
    ("prelu_shared", 'type: "PReLU" prelu_param { channel_shared: true }'),
    ("bias", 'type: "Bias"'),
    ("scale", 'type: "Scale" scale_param { bias_term: true }'),
    ("scale_scalar", 'type: "Scale" scale_param { num_axes: 0 }'),
]


@pytest.mark.parametrize("name,body", IN_PLACE_CASES, ids=[c[0] for c in IN_PLACE_CASES])
def test_in_place_matches_out_of_place(name, body):
    x = _randn((2, 3, 4), seed=8, scale=1.5)
    dy = _randn((2, 3, 4), seed=9)
    phase = TEST if name == "dropout_test" else TRAIN
    params = None
    if name.startswith("prelu"):
        params = [np.array(-0.3) if name.endswith("shared") else np.array([0.2, -0.5, 1.5])]
    elif name.startswith("scale") or name == "bias":
        shape = () if name.endswith("scalar") else (3,)
        params = [_randn(shape, seed=10) + 0.5, _randn(shape, seed=11)]
    outs = _run(body, x, dy, False, phase, params)
    ins = _run(body, x, dy, True, phase, params)
    np.testing.assert_allclose(ins[0], outs[0], rtol=1e-15, atol=0)
    np.testing.assert_allclose(ins[1], outs[1], rtol=1e-15, atol=0)
    for a, b in zip(ins[2], outs[2]):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=0)


def test_threshold_in_place():
    x = _randn((2, 3, 4), seed=8)
    layer = _layer('type: "Threshold" threshold_param { threshold: 0.1 }')
    blob = Blob(x.shape, dtype=np.float64, xp=np)
    blob.data[...] = x
    layer.setup([blob], [blob])
    layer.reshape([blob], [blob])
    layer.forward([blob], [blob])
    np.testing.assert_array_equal(blob.data, (x > np.float32(0.1)).astype(np.float64))


def test_threshold_has_no_backward():
    layer, bottom, top = _forward('type: "Threshold"', _randn((2, 3)))
    assert not layer.allow_force_backward(0)
    layer.backward(top, [False], bottom)
    with pytest.raises(LayerError, match="no backward"):
        layer.backward(top, [True], bottom)


# ----------------------------------------------------------------------------
# Dropout at TRAIN

def test_dropout_train_mask_statistics_and_scaling():
    p = 0.3
    layer = _layer('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', TRAIN)
    x = np.ones((20, 50, 100))
    bottom, top = build(layer, [x])
    rng.set_random_seed(123)
    layer.forward(bottom, top)
    y = top[0].data.copy()
    scale = 1.0 / (1.0 - _f32(p))
    kept = y != 0
    np.testing.assert_allclose(y[kept], scale, rtol=1e-15)
    frac = kept.mean()
    sigma = math.sqrt(p * (1 - p) / x.size)
    assert abs(frac - (1 - p)) < 5 * sigma
    assert abs(y.mean() - 1.0) < 5 * sigma * scale  # inverted scaling keeps the expectation
    # The backward applies the same mask and scale.
    top[0].diff[...] = 2.0
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 2.0 * y)
    # A new forward draws a new mask; the same seed repeats it.
    layer.forward(bottom, top)
    assert not np.array_equal(top[0].data, y)
    rng.set_random_seed(123)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, y)


def test_dropout_ratio_must_be_below_one():
    with pytest.raises(LayerError, match="dropout_ratio"):
        _forward('type: "Dropout" dropout_param { dropout_ratio: 1 }', _randn((2, 3)))


# ----------------------------------------------------------------------------
# Configuration errors

@pytest.mark.parametrize("body,bottoms,match", [
    ('type: "Exp" exp_param { base: -2 }', [(2, 3)], "base"),
    ('type: "Log" log_param { base: 0 }', [(2, 3)], "base"),
    ('type: "Log" log_param { base: 1 }', [(2, 3)], "base 1"),
    ('type: "PReLU"', [(4,)], "at least 2 axes"),
    ('type: "Bias" bias_param { axis: 2 num_axes: 2 }', [(2, 3, 4)], "past the end"),
    ('type: "Bias"', [(2, 3, 4), (4,)], "does not match"),
    ('type: "Scale" scale_param { axis: 3 }', [(2, 3, 4)], "axis"),
    ('type: "Scale" scale_param { num_axes: -2 }', [(2, 3, 4)], "num_axes"),
    ('type: "Scale"', [(2, 3, 4), (2, 3, 5)], "does not match"),
])
def test_configuration_errors(body, bottoms, match):
    with pytest.raises(LayerError, match=match):
        build(_layer(body), [np.zeros(s) for s in bottoms])


def test_prelu_channel_change_is_an_error():
    layer, bottom, top = _forward('type: "PReLU"', _randn((2, 3, 4)))
    bottom[0].reshape((2, 5, 4))
    with pytest.raises(LayerError, match="channels"):
        layer.reshape(bottom, top)


# ----------------------------------------------------------------------------
# Parity with Caffe 1.0 (tests/caffe_reference/parity), float32, layers driven directly

PARITY_CASES = [
    "relu", "relu_leaky", "sigmoid", "tanh", "elu", "elu_alpha", "absval", "bnll", "exp",
    "exp_base2", "log", "log_base10", "threshold", "clip", "swish", "swish_beta",
    "dropout_test", "power_square", "power_sqrt", "power_shift", "power_general",
    "prelu_channel", "prelu_shared", "bias_param", "bias_two_bottom", "scale_param_bias",
    "scale_two_bottom", "scale_axis_num_axes", "scale_scalar",
]
MY_TYPES = {"ReLU", "Sigmoid", "TanH", "ELU", "PReLU", "AbsVal", "BNLL", "Exp", "Log", "Power",
            "Threshold", "Clip", "Swish", "Dropout", "Bias", "Scale"}
PHASES = {"TRAIN": TRAIN, "TEST": TEST}

def test_parity_case_list_is_complete():
    mine = []
    for case in cases("layers"):
        with open(PARITY / "layers" / case / "meta.json") as f:
            if set(json.load(f)["layer_types"]) <= MY_TYPES:
                mine.append(case)
    # That one is about the Split the Net inserts; tests/test_parity_layers.py covers it.
    mine.remove("split_two_consumers")
    assert sorted(mine) == sorted(PARITY_CASES)


@pytest.mark.parametrize("case", PARITY_CASES)
def test_parity(case, monkeypatch):
    monkeypatch.chdir(PARITY / "layers" / case)
    run_layer_case_direct(case)
