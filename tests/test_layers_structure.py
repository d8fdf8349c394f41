"""Structural and utility layers: Input, DummyData, Split, Crop, InnerProduct, Concat,
Slice, Eltwise, Flatten, Reshape, Tile, Reduction, Silence, Filter, Embed, Parameter,
BatchReindex, BatchNorm, MVN.

Three kinds of test per layer: forward against values computed here another way
(loops over tiny shapes or closed forms), float64 finite-difference gradients
(tests/gradcheck.py), and real Caffe's numbers from tests/caffe_reference/parity driven
directly through the layers (no Net), in float32.
"""
import json
import os

import numpy as np
import pytest
from google.protobuf import text_format

from gradcheck import build, check_gradient, forward, make_layer
from parity import PARITY, cases
from protonet import rng
from protonet.blob import Blob
from protonet.layer import TEST, TRAIN, LayerError, create_layer
from protonet.proto import caffe_pb2



def F32(v):
    """A prototxt float as the layer sees it (float fields are single precision)."""
    return float(np.float32(v))


def randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def run(text, bottoms, phase=TRAIN, num_top=None):
    """Build a float64 layer from ``text``, run one forward; returns (layer, bottom, top)."""
    layer = make_layer(text, phase)
    bottom, top = build(layer, bottoms, num_top)
    forward(layer, bottom, top)
    return layer, bottom, top


def backward(layer, bottom, top, top_diffs, propagate_down=None):
    for t, d in zip(top, top_diffs):
        t.diff[...] = d
    for b in bottom:
        b.diff[...] = 0
    if propagate_down is None:
        propagate_down = [True] * len(bottom)
    layer.backward(top, propagate_down, bottom)
    return [b.diff.copy() for b in bottom]


# -- Input / DummyData ------------------------------------------------------

def test_input_one_shape_for_all_tops_and_one_per_top():
    _, _, top = run('name: "in" type: "Input" top: "a" top: "b" '
                    'input_param { shape { dim: 2 dim: 3 } }', [])
    assert [t.shape for t in top] == [(2, 3), (2, 3)]
    _, _, top = run('name: "in" type: "Input" top: "a" top: "b" '
                    'input_param { shape { dim: 2 } shape { dim: 4 dim: 1 dim: 5 } }', [])
    assert [t.shape for t in top] == [(2,), (4, 1, 5)]


def test_input_rejects_wrong_number_of_shapes():
    with pytest.raises(LayerError, match="input_param.shape"):
        run('name: "in" type: "Input" top: "a" top: "b" top: "c" '
            'input_param { shape { dim: 2 } shape { dim: 3 } }', [])


def test_dummydata_constant_filled_once_random_refilled():
    layer, _, top = run('name: "d" type: "DummyData" top: "c" top: "g" dummy_data_param { '
                        'shape { dim: 2 dim: 3 } shape { dim: 4 } '
                        'data_filler { type: "constant" value: 0.7 } '
                        'data_filler { type: "gaussian" std: 1 } }', [])
    assert top[0].shape == (2, 3) and top[1].shape == (4,)
    np.testing.assert_array_equal(top[0].data, np.full((2, 3), 0.7, np.float32).astype(np.float64))
    first = top[1].data.copy()
    top[0].data[0, 0] = 5.0
    rng.set_random_seed(3)
    layer.forward([], top)
    assert top[0].data[0, 0] == 5.0  # constant tops are never refilled
    assert not np.array_equal(first, top[1].data)


def test_dummydata_legacy_dims_and_default_zero_filler():
    _, _, top = run('name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param { '
                    'num: 2 channels: 3 channels: 1 height: 4 width: 5 }', [])
    assert top[0].shape == (2, 3, 4, 5) and top[1].shape == (2, 1, 4, 5)
    assert not top[0].data.any() and not top[1].data.any()
    with pytest.raises(LayerError, match="not both"):
        run('name: "d" type: "DummyData" top: "a" dummy_data_param { num: 2 channels: 3 '
            'height: 1 width: 1 shape { dim: 2 } }', [])


# -- Split -------------------------------------------------------------------

SPLIT = 'name: "s" type: "Split" bottom: "x" top: "a" top: "b" top: "c"'


def test_split_shares_data_and_sums_diffs():
    x = randn(2, 3, 4)
    layer, bottom, top = run(SPLIT, [x])
    for t in top:
        np.testing.assert_array_equal(t.data, x)
    bottom[0].data[0, 0, 0] = 42.0
    assert all(t.data[0, 0, 0] == 42.0 for t in top)  # a view, not a copy
    diffs = [randn(2, 3, 4, seed=s) for s in (1, 2, 3)]
    (dx,) = backward(layer, bottom, top, diffs)
    np.testing.assert_allclose(dx, diffs[0] + diffs[1] + diffs[2])


def test_split_gradient():
    layer = make_layer(SPLIT)
    assert check_gradient(layer, [randn(2, 3, 2)]) > 0


# -- Crop --------------------------------------------------------------------

def crop_loops(x, ref_shape, axis, offsets):
    y = np.empty(tuple(x.shape[:axis]) + tuple(ref_shape[axis:]))
    for idx in np.ndindex(*y.shape):
        src = tuple(i + (offsets[k - axis] if k >= axis else 0) for k, i in enumerate(idx))
        y[idx] = x[src]
    return y


@pytest.mark.parametrize("params, axis, offsets", [
    ("axis: 2 offset: 3", 2, [3, 3]),
    ("axis: 1 offset: 1 offset: 0 offset: 2", 1, [1, 0, 2]),
    ("", 2, [0, 0]),
    ("axis: -1 offset: 1", 3, [1]),
])
def test_crop_forward_backward(params, axis, offsets):
    x, ref = randn(2, 4, 7, 8), np.zeros((1, 2, 4, 5))
    layer, bottom, top = run('name: "c" type: "Crop" bottom: "x" bottom: "r" top: "y" '
                             'crop_param { %s }' % params, [x, ref])
    expected = crop_loops(x, ref.shape, axis, offsets)
    np.testing.assert_array_equal(top[0].data, expected)
    dy = randn(*top[0].shape, seed=1)
    dx = np.zeros_like(x)
    for idx in np.ndindex(*dy.shape):
        dx[tuple(i + (offsets[k - axis] if k >= axis else 0) for k, i in enumerate(idx))] = dy[idx]
    got = backward(layer, bottom, top, [dy], [True, False])
    np.testing.assert_array_equal(got[0], dx)
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)


def test_crop_errors():
    with pytest.raises(LayerError, match="offset"):
        run('name: "c" type: "Crop" bottom: "x" bottom: "r" top: "y" '
            'crop_param { axis: 2 offset: 1 offset: 1 offset: 1 }',
            [np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 2, 2))])
    with pytest.raises(LayerError, match="exceeds"):
        run('name: "c" type: "Crop" bottom: "x" bottom: "r" top: "y" crop_param { offset: 4 }',
            [np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 2, 2))])


def test_crop_gradient():
    layer = make_layer('name: "c" type: "Crop" bottom: "x" bottom: "r" top: "y" '
                       'crop_param { axis: 1 offset: 1 offset: 2 offset: 0 }')
    assert check_gradient(layer, [randn(2, 3, 5, 4), np.zeros((2, 2, 2, 3))], check_bottom=[0]) > 0


# -- InnerProduct --------------------------------------------------------------

def ip_loops(x2, w, b, transpose):
    m, k = x2.shape
    n = w.shape[1] if transpose else w.shape[0]
    y = np.zeros((m, n))
    for i in range(m):
        for j in range(n):
            for q in range(k):
                y[i, j] += x2[i, q] * (w[q, j] if transpose else w[j, q])
            if b is not None:
                y[i, j] += b[j]
    return y


@pytest.mark.parametrize("params, shape, axis", [
    ("num_output: 4", (3, 2, 2, 2), 1),
    ("num_output: 3 axis: 2", (2, 3, 4, 2), 2),
    ("num_output: 5 transpose: true", (4, 6), 1),
    ("num_output: 2 bias_term: false", (3, 5), 1),
    ("num_output: 3 axis: -1", (2, 3, 4), 2),
])
def test_inner_product_forward_backward(params, shape, axis):
    text = ('name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { %s '
            'weight_filler { type: "gaussian" } bias_filler { type: "uniform" min: -1 max: 1 } }'
            % params)
    x = randn(*shape)
    layer, bottom, top = run(text, [x])
    w = layer.blobs[0].data
    b = layer.blobs[1].data if len(layer.blobs) > 1 else None
    transpose = "transpose" in params
    m = int(np.prod(shape[:axis]))
    x2 = x.reshape(m, -1)
    y = ip_loops(x2, w, b, transpose)
    assert top[0].shape == tuple(shape[:axis]) + (y.shape[1],)
    np.testing.assert_allclose(top[0].data.reshape(m, -1), y, rtol=1e-12, atol=1e-12)
    dy = randn(*top[0].shape, seed=2).reshape(m, -1)
    for p in layer.blobs:
        p.diff[...] = 1.0  # param diffs accumulate
    (dx,) = backward(layer, bottom, top, [dy.reshape(top[0].shape)])
    wt = w if transpose else w.T  # K x N
    np.testing.assert_allclose(dx.reshape(m, -1), dy @ wt.T, rtol=1e-12)
    dw = x2.T @ dy
    np.testing.assert_allclose(layer.blobs[0].diff, 1.0 + (dw if transpose else dw.T), rtol=1e-12)
    if b is not None:
        np.testing.assert_allclose(layer.blobs[1].diff, 1.0 + dy.sum(0), rtol=1e-12)


def test_inner_product_rejects_changed_input_size():
    layer, bottom, top = run('name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
                             'inner_product_param { num_output: 2 }', [np.zeros((2, 3))])
    bottom[0].reshape(2, 4)
    with pytest.raises(LayerError, match="incompatible"):
        layer.reshape(bottom, top)


@pytest.mark.parametrize("params, shape", [
    ("num_output: 3", (2, 2, 2)),
    ("num_output: 3 axis: 2", (2, 2, 3)),
    ("num_output: 2 transpose: true", (3, 4)),
    ("num_output: 2 bias_term: false", (3, 4)),
])
def test_inner_product_gradient(params, shape):
    layer = make_layer('name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param '
                       '{ %s weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }'
                       % params)
    assert check_gradient(layer, [randn(*shape)]) > 0


# -- Concat / Slice ------------------------------------------------------------

def test_concat_forward_backward():
    xs = [randn(2, n, 3, seed=n) for n in (1, 3, 2)]
    layer, bottom, top = run('name: "c" type: "Concat" bottom: "a" bottom: "b" bottom: "c" top: "y"', xs)
    np.testing.assert_array_equal(top[0].data, np.concatenate(xs, axis=1))
    dy = randn(2, 6, 3, seed=9)
    dxs = backward(layer, bottom, top, [dy], [True, False, True])
    np.testing.assert_array_equal(dxs[0], dy[:, :1])
    assert not dxs[1].any()
    np.testing.assert_array_equal(dxs[2], dy[:, 4:])


@pytest.mark.parametrize("params, axis", [("axis: 0", 0), ("axis: -1", 2), ("concat_dim: 2", 2)])
def test_concat_axes(params, axis):
    shapes = [[2, 3, 4], [2, 3, 4]]
    shapes[1][axis] = 1
    xs = [randn(*s, seed=i) for i, s in enumerate(shapes)]
    _, _, top = run('name: "c" type: "Concat" bottom: "a" bottom: "b" top: "y" concat_param { %s }'
                    % params, xs)
    np.testing.assert_array_equal(top[0].data, np.concatenate(xs, axis=axis))


def test_concat_errors():
    with pytest.raises(LayerError, match="not both"):
        run('name: "c" type: "Concat" bottom: "a" bottom: "b" top: "y" '
            'concat_param { axis: 1 concat_dim: 1 }', [np.zeros((2, 2)), np.zeros((2, 2))])
    with pytest.raises(LayerError, match="every axis but"):
        run('name: "c" type: "Concat" bottom: "a" bottom: "b" top: "y"',
            [np.zeros((2, 2)), np.zeros((3, 2))])


def test_concat_gradient():
    layer = make_layer('name: "c" type: "Concat" bottom: "a" bottom: "b" top: "y" concat_param { axis: 2 }')
    assert check_gradient(layer, [randn(2, 2, 1), randn(2, 2, 3, seed=1)]) > 0


def test_slice_points_and_even():
    x = randn(2, 6, 3)
    layer, bottom, top = run('name: "s" type: "Slice" bottom: "x" top: "a" top: "b" top: "c" '
                             'slice_param { slice_point: 1 slice_point: 4 }', [x])
    for t, e in zip(top, np.split(x, [1, 4], axis=1)):
        np.testing.assert_array_equal(t.data, e)
    dys = [randn(*t.shape, seed=i) for i, t in enumerate(top)]
    (dx,) = backward(layer, bottom, top, dys)
    np.testing.assert_array_equal(dx, np.concatenate(dys, axis=1))
    _, _, top = run('name: "s" type: "Slice" bottom: "x" top: "a" top: "b" top: "c" '
                    'slice_param { slice_dim: 1 }', [x])
    for t, e in zip(top, np.split(x, 3, axis=1)):
        np.testing.assert_array_equal(t.data, e)


def test_slice_errors():
    with pytest.raises(LayerError, match="evenly"):
        run('name: "s" type: "Slice" bottom: "x" top: "a" top: "b" slice_param { axis: 0 }',
            [np.zeros((3, 2))])
    with pytest.raises(LayerError, match="increase"):
        run('name: "s" type: "Slice" bottom: "x" top: "a" top: "b" top: "c" '
            'slice_param { slice_point: 2 slice_point: 2 }', [np.zeros((1, 4))])
    with pytest.raises(LayerError, match="need 3 tops"):
        run('name: "s" type: "Slice" bottom: "x" top: "a" top: "b" '
            'slice_param { slice_point: 1 slice_point: 2 }', [np.zeros((1, 4))])


def test_slice_gradient():
    layer = make_layer('name: "s" type: "Slice" bottom: "x" top: "a" top: "b" '
                       'slice_param { axis: -1 slice_point: 1 }')
    assert check_gradient(layer, [randn(2, 3, 3)]) > 0


# -- Eltwise -------------------------------------------------------------------

def eltwise(op, extra=""):
    return ('name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y" '
            'eltwise_param { operation: %s %s }' % (op, extra))


def test_eltwise_prod_and_sum():
    xs = [randn(2, 3, seed=i) for i in range(3)]
    layer, bottom, top = run(eltwise("PROD"), xs)
    np.testing.assert_allclose(top[0].data, xs[0] * xs[1] * xs[2])
    dy = randn(2, 3, seed=7)
    dxs = backward(layer, bottom, top, [dy])
    for i in range(3):
        others = [xs[j] for j in range(3) if j != i]
        np.testing.assert_allclose(dxs[i], dy * others[0] * others[1])
    layer, bottom, top = run(eltwise("SUM", "coeff: 1 coeff: -0.5 coeff: 2"), xs)
    np.testing.assert_allclose(top[0].data, xs[0] - 0.5 * xs[1] + 2 * xs[2])
    dxs = backward(layer, bottom, top, [dy])
    for dx, c in zip(dxs, (1, -0.5, 2)):
        np.testing.assert_allclose(dx, c * dy)


def test_eltwise_max_mask_and_ties():
    a = np.array([1.0, 5.0, 2.0, 3.0, 0.0])
    b = np.array([1.0, 4.0, 6.0, 3.0, 0.0])
    c = np.array([0.0, 5.0, 6.0, 9.0, -1.0])
    layer, bottom, top = run(eltwise("MAX"), [a, b, c])
    np.testing.assert_array_equal(top[0].data, [1, 5, 6, 9, 0])
    # winner per element: a == b -> b; later bottoms win only when strictly greater
    winner = [1, 0, 1, 2, 1]
    dy = np.arange(1.0, 6.0)
    dxs = backward(layer, bottom, top, [dy])
    for i in range(3):
        np.testing.assert_array_equal(dxs[i], [dy[k] if winner[k] == i else 0 for k in range(5)])


def test_eltwise_unstable_prod_grad():
    xs = [randn(3, 2, seed=i) for i in range(3)]
    layer, bottom, top = run(eltwise("PROD", "stable_prod_grad: false"), xs)
    dy = randn(3, 2, seed=5)
    dxs = backward(layer, bottom, top, [dy])
    np.testing.assert_allclose(dxs[1], dy * xs[0] * xs[2])


def test_eltwise_errors():
    with pytest.raises(LayerError, match="one value per bottom"):
        run(eltwise("SUM", "coeff: 1"), [np.zeros(2)] * 3)
    with pytest.raises(LayerError, match="SUM only"):
        run(eltwise("PROD", "coeff: 1 coeff: 1 coeff: 1"), [np.zeros(2)] * 3)
    with pytest.raises(LayerError, match="all must match"):
        run(eltwise("SUM"), [np.zeros(2), np.zeros(2), np.zeros(3)])


@pytest.mark.parametrize("op, extra", [("PROD", ""), ("PROD", "stable_prod_grad: false"),
                                       ("SUM", "coeff: 0.5 coeff: -2 coeff: 1"), ("MAX", "")])
def test_eltwise_gradient(op, extra):
    layer = make_layer(eltwise(op, extra))
    # Distinct values spaced well apart: no MAX ties within the finite-difference step.
    vals = np.random.default_rng(4).permutation(36).reshape(3, 3, 4) * 0.1 - 1.75
    assert check_gradient(layer, [vals[0], vals[1], vals[2]]) > 0


# -- Flatten / Reshape -----------------------------------------------------------

@pytest.mark.parametrize("params, shape", [
    ("", (2, 60)), ("axis: 1 end_axis: 2", (2, 12, 5)), ("axis: 0 end_axis: -2", (24, 5)),
    ("axis: -1", (2, 3, 4, 5)),
])
def test_flatten_shapes_and_sharing(params, shape):
    x = randn(2, 3, 4, 5)
    layer, bottom, top = run('name: "f" type: "Flatten" bottom: "x" top: "y" flatten_param { %s }'
                             % params, [x])
    assert top[0].shape == shape
    np.testing.assert_array_equal(top[0].data, x.reshape(shape))
    assert np.shares_memory(top[0].data, bottom[0].data)
    dy = randn(*shape, seed=3)
    (dx,) = backward(layer, bottom, top, [dy])
    np.testing.assert_array_equal(dx, dy.reshape(x.shape))


@pytest.mark.parametrize("params, shape", [
    ("shape { dim: 0 dim: -1 dim: 2 }", (2, 12, 2)),
    ("shape { dim: 2 dim: -1 } axis: 1 num_axes: 1", (2, 2, 3, 4)),
    ("shape { dim: 1 } axis: -1 num_axes: 0", (2, 6, 4, 1)),
    ("shape { dim: 4 dim: 3 dim: 2 dim: 2 } axis: 0", (4, 3, 2, 2)),
    ("shape { } axis: 1 num_axes: 0", (2, 6, 4)),
    ("shape { dim: -1 } axis: 1", (2, 24)),
])
def test_reshape_shapes_and_sharing(params, shape):
    x = randn(2, 6, 4)
    layer, bottom, top = run('name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { %s }'
                             % params, [x])
    assert top[0].shape == shape
    np.testing.assert_array_equal(top[0].data, x.reshape(shape))
    assert np.shares_memory(top[0].data, bottom[0].data)


def test_reshape_errors():
    x = [np.zeros((2, 6))]
    for params, msg in [("shape { dim: -1 dim: -1 }", "at most one -1"),
                        ("shape { dim: 5 dim: -1 }", "divisible"),
                        ("shape { dim: 0 dim: 0 dim: 0 }", "no axis"),
                        ("shape { dim: 3 dim: 3 }", "must match"),
                        ("shape { dim: 2 } axis: 3", "out of range")]:
        with pytest.raises(LayerError, match=msg):
            run('name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { %s }' % params, x)


@pytest.mark.parametrize("text", [
    'name: "f" type: "Flatten" bottom: "x" top: "y" flatten_param { axis: 1 end_axis: 2 }',
    'name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: -1 dim: 3 } }',
])
def test_flatten_reshape_gradient(text):
    assert check_gradient(make_layer(text), [randn(2, 3, 2, 2)]) > 0


# -- Tile ------------------------------------------------------------------------

@pytest.mark.parametrize("axis, tiles", [(1, 3), (-1, 2), (0, 2)])
def test_tile(axis, tiles):
    x = randn(2, 3, 4)
    text = 'name: "t" type: "Tile" bottom: "x" top: "y" tile_param { axis: %d tiles: %d }' % (axis, tiles)
    layer, bottom, top = run(text, [x])
    reps = [1, 1, 1]
    reps[axis] = tiles
    np.testing.assert_array_equal(top[0].data, np.tile(x, reps))
    dy = randn(*top[0].shape, seed=1)
    (dx,) = backward(layer, bottom, top, [dy])
    parts = np.split(dy, tiles, axis=axis)
    np.testing.assert_allclose(dx, sum(parts))
    assert check_gradient(make_layer(text), [x]) > 0


def test_tile_needs_tiles():
    with pytest.raises(LayerError, match="tiles"):
        run('name: "t" type: "Tile" bottom: "x" top: "y"', [np.zeros((2, 2))])


# -- Reduction -----------------------------------------------------------------------

@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_reduction(op, axis):
    x = randn(2, 3, 4)
    text = ('name: "r" type: "Reduction" bottom: "x" top: "y" reduction_param { operation: %s '
            'axis: %d coeff: -1.5 }' % (op, axis))
    layer, bottom, top = run(text, [x])
    a = axis % 3
    num = int(np.prod(x.shape[:a]))
    rows = x.reshape(num, -1)
    expected, grads = [], []
    for r in rows:
        total = 0.0
        for v in r:
            total += {"SUM": v, "ASUM": abs(v), "SUMSQ": v * v, "MEAN": v / r.size}[op]
        expected.append(-1.5 * total)
        grads.append({"SUM": np.ones_like(r), "ASUM": np.sign(r), "SUMSQ": 2 * r,
                      "MEAN": np.full_like(r, 1.0 / r.size)}[op])
    assert top[0].shape == x.shape[:a]
    np.testing.assert_allclose(top[0].data.reshape(-1), expected, rtol=1e-12)
    dy = randn(*x.shape[:a], seed=4)
    (dx,) = backward(layer, bottom, top, [dy])
    np.testing.assert_allclose(dx.reshape(num, -1), -1.5 * np.reshape(dy, (num, 1)) * np.array(grads),
                               rtol=1e-12)
    assert check_gradient(make_layer(text), [x], kink=0.0, kink_range=1e-3) > 0


# -- Silence ---------------------------------------------------------------------------

def test_silence():
    layer, bottom, top = run('name: "s" type: "Silence" bottom: "a" bottom: "b"',
                             [randn(2, 3), randn(4)], num_top=0)
    for b in bottom:
        b.diff[...] = 7.0
    layer.backward([], [True, False], bottom)
    assert not bottom[0].diff.any() and (bottom[1].diff == 7.0).all()
    layer = make_layer('name: "s" type: "Silence" bottom: "a"')
    assert check_gradient(layer, [randn(3)], num_top=0) > 0


# -- Filter ----------------------------------------------------------------------------

FILTER = 'name: "f" type: "Filter" bottom: "x" bottom: "z" bottom: "sel" top: "y" top: "w"'


def test_filter_forward_backward():
    x, z = randn(5, 2, 3), randn(5, 4, seed=1)
    sel = np.array([0.0, 1.0, 0.0, 2.0, -1.0])
    layer = make_layer(FILTER)
    bottom, top = build(layer, [x, z, sel])
    assert top[0].shape == (5, 2, 3)  # Caffe's first reshape keeps every item
    forward(layer, bottom, top)
    kept = [i for i in range(5) if sel[i] != 0]
    np.testing.assert_array_equal(top[0].data, np.stack([x[i] for i in kept]))
    np.testing.assert_array_equal(top[1].data, np.stack([z[i] for i in kept]))
    dy = randn(3, 2, 3, seed=2)
    dxs = backward(layer, bottom, top, [dy, np.zeros((3, 4))], [True, False, False])
    for i in range(5):
        expected = dy[kept.index(i)] if i in kept else np.zeros((2, 3))
        np.testing.assert_array_equal(dxs[0][i], expected)
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(2)
    with pytest.raises(LayerError, match="selector"):
        layer.backward(top, [False, False, True], bottom)


def test_filter_nothing_selected_and_bad_selector():
    layer = make_layer('name: "f" type: "Filter" bottom: "x" bottom: "sel" top: "y"')
    bottom, top = build(layer, [randn(3, 2), np.zeros(3)])
    forward(layer, bottom, top)
    assert top[0].shape == (0, 2)
    with pytest.raises(LayerError, match="selector"):
        run('name: "f" type: "Filter" bottom: "x" bottom: "sel" top: "y"', [randn(3, 2), np.ones((3, 2))])


def test_filter_gradient():
    layer = make_layer('name: "f" type: "Filter" bottom: "x" bottom: "sel" top: "y"')
    assert check_gradient(layer, [randn(4, 3), np.array([1.0, 0.0, 1.0, 1.0])], check_bottom=[0]) > 0


# -- Embed -------------------------------------------------------------------------------

EMBED = ('name: "e" type: "Embed" bottom: "ids" top: "y" embed_param { input_dim: 5 num_output: 3 %s '
         'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }')


def test_embed_forward_backward():
    ids = np.array([[4.0, 0.0, 4.0], [2.0, 4.0, 1.0]])
    layer, bottom, top = run(EMBED % "", [ids])
    w, b = layer.blobs[0].data, layer.blobs[1].data
    assert top[0].shape == (2, 3, 3)
    for i, j in np.ndindex(2, 3):
        np.testing.assert_allclose(top[0].data[i, j], w[int(ids[i, j])] + b)
    dy = randn(2, 3, 3, seed=1)
    top[0].diff[...] = dy
    layer.backward(top, [False], bottom)
    dw = np.zeros_like(w)
    for i, j in np.ndindex(2, 3):
        dw[int(ids[i, j])] += dy[i, j]
    np.testing.assert_allclose(layer.blobs[0].diff, dw)
    np.testing.assert_allclose(layer.blobs[1].diff, dy.sum(axis=(0, 1)))
    assert not layer.allow_force_backward(0)
    with pytest.raises(LayerError, match="ids"):
        layer.backward(top, [True], bottom)


@pytest.mark.parametrize("bad", [5.0, -1.0, 1.5])
def test_embed_rejects_bad_ids(bad):
    with pytest.raises(LayerError, match="not an integer in"):
        run(EMBED % "bias_term: false", [np.array([0.0, bad])])


def test_embed_gradient():
    layer = make_layer(EMBED % "")
    assert check_gradient(layer, [np.array([3.0, 1.0, 3.0, 0.0])], check_bottom=[]) > 0


# -- Parameter ---------------------------------------------------------------------------

def test_parameter_top_is_the_param_blob():
    layer, _, top = run('name: "p" type: "Parameter" top: "y" '
                        'parameter_param { shape { dim: 2 dim: 3 } }', [])
    assert top[0].shape == (2, 3) and layer.blobs[0].shape == (2, 3)
    layer.blobs[0].data[...] = randn(2, 3)
    layer.reshape([], top)
    layer.forward([], top)
    np.testing.assert_array_equal(top[0].data, layer.blobs[0].data)
    # The gradient: a finite-difference check by hand (gradcheck zeroes param diffs after
    # writing top diffs, which here are the same memory).
    w = randn(2, 3, seed=1)

    def objective():
        layer.reshape([], top)
        layer.forward([], top)
        return float((top[0].data * w).sum())

    layer.blobs[0].diff[...] = 0
    top[0].diff[...] = w
    layer.backward(top, [], [])
    analytic = layer.blobs[0].diff.copy()
    flat = layer.blobs[0].data.reshape(-1)
    for i in range(flat.size):
        x0 = flat[i]
        flat[i] = x0 + 1e-5
        plus = objective()
        flat[i] = x0 - 1e-5
        minus = objective()
        flat[i] = x0
        assert abs((plus - minus) / 2e-5 - analytic.reshape(-1)[i]) < 1e-8


# -- BatchReindex ---------------------------------------------------------------------------

def test_batch_reindex():
    x = randn(4, 3, 2)
    permut = np.array([2.0, 0.0, 2.0, 3.0, 1.0])
    layer, bottom, top = run('name: "r" type: "BatchReindex" bottom: "x" bottom: "p" top: "y"', [x, permut])
    for n in range(5):
        np.testing.assert_array_equal(top[0].data[n], x[int(permut[n])])
    dy = randn(5, 3, 2, seed=3)
    dx = backward(layer, bottom, top, [dy], [True, False])[0]
    expected = np.zeros_like(x)
    for n in range(5):
        expected[int(permut[n])] += dy[n]
    np.testing.assert_allclose(dx, expected)
    assert not layer.allow_force_backward(1)
    with pytest.raises(LayerError, match="index"):
        run('name: "r" type: "BatchReindex" bottom: "x" bottom: "p" top: "y"', [x, np.array([4.0])])
    layer = make_layer('name: "r" type: "BatchReindex" bottom: "x" bottom: "p" top: "y"')
    assert check_gradient(layer, [x, permut], check_bottom=[0]) > 0


# -- BatchNorm ---------------------------------------------------------------------------------

BN = 'name: "bn" type: "BatchNorm" bottom: "x" top: "y" batch_norm_param { %s }'


def test_batchnorm_train_statistics_and_output():
    x = randn(3, 2, 4) * 2 + 1
    layer = make_layer(BN % "moving_average_fraction: 0.5 eps: 0.01")
    bottom, top = build(layer, [x])
    stats = [np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array([2.0])]
    for b, v in zip(layer.blobs, stats):
        b.data[...] = v
    forward(layer, bottom, top)
    mean = x.mean(axis=(0, 2))
    var = ((x - mean[None, :, None]) ** 2).mean(axis=(0, 2))
    expected = (x - mean[None, :, None]) / np.sqrt(var + F32(0.01))[None, :, None]
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-12)
    m = 12
    np.testing.assert_allclose(layer.blobs[2].data, [0.5 * 2 + 1])
    np.testing.assert_allclose(layer.blobs[0].data, 0.5 * stats[0] + mean, rtol=1e-12)
    np.testing.assert_allclose(layer.blobs[1].data, 0.5 * stats[1] + m / (m - 1.0) * var)


def test_batchnorm_freezes_its_statistics():
    layer, _, _ = run(BN % "", [randn(2, 3)])
    assert [p.lr_mult for p in layer.layer_param.param] == [0, 0, 0]
    layer, _, _ = run('name: "bn" type: "BatchNorm" bottom: "x" top: "y" param { lr_mult: 0 '
                      'decay_mult: 0 }', [randn(2, 3)])
    assert [p.lr_mult for p in layer.layer_param.param] == [0, 0, 0]
    with pytest.raises(LayerError, match="cannot be learned"):
        run('name: "bn" type: "BatchNorm" bottom: "x" top: "y" param { lr_mult: 1 }', [randn(2, 3)])


def test_batchnorm_global_stats_default_in_test_and_zero_factor():
    x = randn(2, 3, 2, 2)
    layer = make_layer(BN % "eps: 0.001", phase=TEST)
    bottom, top = build(layer, [x])
    for b, v in zip(layer.blobs, ([0.2, 0.4, 0.6], [2.0, 4.0, 8.0], [2.0])):
        b.data[...] = v
    forward(layer, bottom, top)
    mean = np.array([0.1, 0.2, 0.3])[None, :, None, None]
    std = np.sqrt(np.array([1.0, 2.0, 4.0]) + F32(0.001))[None, :, None, None]
    np.testing.assert_allclose(top[0].data, (x - mean) / std, rtol=1e-12)
    dy = randn(*x.shape, seed=1)
    (dx,) = backward(layer, bottom, top, [dy])
    np.testing.assert_allclose(dx, dy / std, rtol=1e-12)
    layer.blobs[2].data[...] = 0  # factor 0: mean and variance count as 0
    forward(layer, bottom, top)
    np.testing.assert_allclose(top[0].data, x / np.sqrt(F32(0.001)), rtol=1e-12)
    before = [b.data.copy() for b in layer.blobs]
    forward(layer, bottom, top)
    for b, v in zip(layer.blobs, before):
        np.testing.assert_array_equal(b.data, v)  # global stats are not updated


def test_batchnorm_in_place_matches():
    x = randn(4, 3, 5)
    dy = randn(4, 3, 5, seed=1)
    layer, bottom, top = run(BN % "", [x])
    (expected,) = backward(layer, bottom, top, [dy])
    y = top[0].data.copy()
    layer = make_layer(BN % "")
    blob = Blob(x.shape, dtype=np.float64, xp=np)
    blob.data[...] = x
    layer.setup([blob], [blob])
    layer.reshape([blob], [blob])
    layer.forward([blob], [blob])
    np.testing.assert_allclose(blob.data, y, rtol=1e-12)
    blob.data[...] = -1  # a later in-place layer may clobber the output
    blob.diff[...] = dy
    layer.backward([blob], [True], [blob])
    np.testing.assert_allclose(blob.diff, expected, rtol=1e-10)


@pytest.mark.parametrize("params, phase", [("", TRAIN), ("use_global_stats: false", TEST),
                                           ("", TEST), ("use_global_stats: true", TRAIN)])
def test_batchnorm_gradient(params, phase):
    layer = make_layer(BN % params, phase)
    x = randn(3, 2, 2, 2)
    bottom, top = build(layer, [x])
    for b, v in zip(layer.blobs, ([0.5, -1.0], [3.0, 1.5], [1.5])):
        b.data[...] = v
    # The statistics blobs get no gradient (Caffe freezes them): check the bottom only.
    assert check_gradient(layer, [x], check_params=False, bottom=bottom, top=top) > 0


# -- MVN ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("params", ["", "across_channels: true", "normalize_variance: false",
                                    "across_channels: true normalize_variance: false"])
def test_mvn(params):
    x = randn(2, 3, 2, 3) * 3 + 2
    layer, bottom, top = run('name: "m" type: "MVN" bottom: "x" top: "y" mvn_param { eps: 0.001 %s }'
                             % params, [x])
    axes = (1, 2, 3) if "across" in params else (2, 3)
    expected = x - x.mean(axis=axes, keepdims=True)
    if "normalize_variance: false" not in params:
        expected /= x.std(axis=axes, keepdims=True) + F32(0.001)
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-12, atol=1e-12)
    text = 'name: "m" type: "MVN" bottom: "x" top: "y" mvn_param { %s }' % params
    assert check_gradient(make_layer(text), [randn(2, 2, 2, 3)]) > 0


def test_mvn_in_place_backward_matches():
    x, dy = randn(2, 3, 4), randn(2, 3, 4, seed=1)
    text = 'name: "m" type: "MVN" bottom: "x" top: "y"'
    layer, bottom, top = run(text, [x])
    (expected,) = backward(layer, bottom, top, [dy])
    layer = make_layer(text)
    blob = Blob(x.shape, dtype=np.float64, xp=np)
    blob.data[...] = x
    layer.setup([blob], [blob])
    layer.reshape([blob], [blob])
    layer.forward([blob], [blob])
    blob.diff[...] = dy
    layer.backward([blob], [True], [blob])
    np.testing.assert_allclose(blob.diff, expected, rtol=1e-10)


# -- Parity with real Caffe (float32), driven layer by layer ---------------------------------------

MY_TYPES = ("crop_", "ip_", "eltwise_", "concat_", "slice_", "flatten", "reshape_", "split_",
            "tile_", "batchnorm_", "mvn", "reduction_", "embed_")
MY_CASES = ("silence", "parameter", "dummydata_constant", "batch_reindex", "filter")


def my_cases():
    # without the fixtures cases() raises at collection, as in test_parity_layers.py
    names = cases("layers")
    return [n for n in names if n.startswith(MY_TYPES) or n in MY_CASES]


def with_splits(net):
    """Caffe's InsertSplits for the tiny case graphs: a blob read by several layers
    gets a Split whose tops feed the readers."""
    readers = {}
    for li, lp in enumerate(net.layer):
        for bi, b in enumerate(lp.bottom):
            readers.setdefault(b, []).append((li, bi))
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    for li, lp in enumerate(net.layer):
        new = out.layer.add()
        new.CopyFrom(lp)
        for bi, b in enumerate(lp.bottom):
            users = readers[b]
            if len(users) > 1:
                new.bottom[bi] = "%s_split_%d" % (b, users.index((li, bi)))
        for t in lp.top:
            users = readers.get(t, [])
            if len(users) > 1 and t not in lp.bottom:
                split = out.layer.add()
                split.name, split.type = "%s_split" % t, "Split"
                split.bottom.append(t)
                split.top.extend("%s_split_%d" % (t, k) for k in range(len(users)))
    return out


def run_parity(name):
    folder = PARITY / "layers" / name
    meta = json.loads((folder / "meta.json").read_text())
    io = dict(np.load(folder / "io.npz"))
    tol = meta["tolerance"]
    net = caffe_pb2.NetParameter()
    text_format.Parse((folder / "net.prototxt").read_text(), net)
    net = with_splits(net)
    phase = TRAIN if meta["phase"] == "TRAIN" else TEST
    old = os.getcwd()
    os.chdir(folder)
    try:
        blobs, layers = {}, []
        for lp in net.layer:
            layer = create_layer(lp, phase, dtype=np.float32, xp=np)
            bottom = [blobs[b] for b in lp.bottom]
            top = []
            for t in lp.top:
                if t not in lp.bottom:
                    blobs[t] = Blob((), dtype=np.float32, xp=np)
                top.append(blobs[t])
            layer.check_arity(len(bottom), len(top))
            layer.setup(bottom, top)
            layer.reshape(bottom, top)
            layer.param_propagate_down = [True] * len(layer.blobs)
            layers.append((lp, layer, bottom, top))
        by_name = {lp.name: layer for lp, layer, _, _ in layers}
        for key, value in io.items():
            if key.startswith("param/"):
                _, lname, i = key.split("/")
                by_name[lname].blobs[int(i)].data[...] = value
            elif key.startswith("in/"):
                blobs[key[3:]].reshape(value.shape)
                blobs[key[3:]].data[...] = value
        for _, layer, bottom, top in layers:
            layer.reshape(bottom, top)
            layer.forward(bottom, top)
        checked = 0

        def check(actual, key):
            nonlocal checked
            rtol, atol = tol[key]
            np.testing.assert_allclose(actual, io[key], rtol=rtol, atol=atol, err_msg=key)
            checked += 1

        for key in io:
            if key.startswith("out/"):
                check(blobs[key[4:]].data, key)
            elif key.startswith("param_after_forward/"):
                _, lname, i = key.split("/")
                check(by_name[lname].blobs[int(i)].data, key)
        if meta["backward"]:
            # Param diffs first: a Parameter layer's top diff *is* its param diff.
            for _, layer, _, _ in layers:
                for p in layer.blobs:
                    p.diff[...] = 0
            for key, value in io.items():
                if key.startswith("top_diff/"):
                    blobs[key[9:]].diff[...] = value
            for lp, layer, bottom, top in reversed(layers):
                # Caffe runs no backward in a net without a loss unless force_backward is set
                # (the Embed cases: their stored param diffs are zero).
                if lp.type == "Input" or not meta["force_backward"]:
                    continue
                down = [meta["force_backward"] and layer.allow_force_backward(i)
                        for i in range(len(bottom))]
                layer.backward(top, down, bottom)
            for key in io:
                if key.startswith("in_diff/"):
                    check(blobs[key[8:]].diff, key)
                elif key.startswith("param_diff/"):
                    _, lname, i = key.split("/")
                    check(by_name[lname].blobs[int(i)].diff, key)
        assert checked > 0
    finally:
        os.chdir(old)


@pytest.mark.parametrize("name", my_cases())
def test_parity(name):
    run_parity(name)
