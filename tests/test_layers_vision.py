"""Convolution, Deconvolution, Im2col, Pooling, SPP, LRN: loop references, gradients, parity."""
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from parity import run_layer_case_direct
from gradcheck import build, check_gradient, forward, make_layer
from protonet import rng
from protonet.layer import LayerError, TEST, TRAIN
from protonet.layers._im2col import ColPlan
from protonet.proto import caffe_pb2

PARITY = Path(__file__).resolve().parent / "caffe_reference" / "parity" / "layers"
FLT_MAX = float(np.finfo(np.float32).max)

FILLERS = ('weight_filler { type: "gaussian" std: 0.7 } '
           'bias_filler { type: "uniform" min: -0.5 max: 0.5 }')


def layer(kind, params, tops=("y",), phase=TRAIN):
    text = 'name: "l" type: "%s" %s %s' % (kind, " ".join('top: "%s"' % t for t in tops), params)
    return make_layer(text, phase=phase)


def run(lay, *arrays, num_top=None):
    bottom, top = build(lay, list(arrays), num_top)
    lay.forward(bottom, top)
    return bottom, top


def distinct(r, shape, spacing=0.05):
    """Values pairwise at least ``spacing`` apart (no MAX ties under finite differences)."""
    n = int(np.prod(shape))
    return (r.permutation(n) * spacing - n * spacing / 2 + r.uniform(0, 0.01, n)).reshape(shape)


# -- loop references --------------------------------------------------------------
def ref_conv(x, w, b, stride, pad, dil, group):
    N, C, H, W = x.shape
    Co, Cg, kh, kw = w.shape
    Ho = (H + 2 * pad[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    Wo = (W + 2 * pad[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    y = np.zeros((N, Co, Ho, Wo))
    for n, o, i, j in itertools.product(range(N), range(Co), range(Ho), range(Wo)):
        g = o // (Co // group)
        s = 0.0 if b is None else b[o]
        for c, a, e in itertools.product(range(Cg), range(kh), range(kw)):
            h = i * stride[0] - pad[0] + a * dil[0]
            v = j * stride[1] - pad[1] + e * dil[1]
            if 0 <= h < H and 0 <= v < W:
                s += w[o, c, a, e] * x[n, g * Cg + c, h, v]
        y[n, o, i, j] = s
    return y


def ref_deconv(x, w, b, stride, pad, dil, group):
    # Scatter form: every input pixel adds weight * value into the output.
    N, Ci, H, W = x.shape
    _, Cog, kh, kw = w.shape
    Ho = stride[0] * (H - 1) + dil[0] * (kh - 1) + 1 - 2 * pad[0]
    Wo = stride[1] * (W - 1) + dil[1] * (kw - 1) + 1 - 2 * pad[1]
    y = np.zeros((N, Cog * group, Ho, Wo))
    Cig = Ci // group
    for n, c, i, j in itertools.product(range(N), range(Ci), range(H), range(W)):
        g = c // Cig
        for o, a, e in itertools.product(range(Cog), range(kh), range(kw)):
            h = i * stride[0] - pad[0] + a * dil[0]
            v = j * stride[1] - pad[1] + e * dil[1]
            if 0 <= h < Ho and 0 <= v < Wo:
                y[n, g * Cog + o, h, v] += w[c, o, a, e] * x[n, c, i, j]
    if b is not None:
        y += b[None, :, None, None]
    return y


def ref_pool_size(size, k, p, s, ceil=True, any_pad=None):
    f = math.ceil if ceil else math.floor
    out = int(f((size + 2 * p - k) / s)) + 1
    if (p if any_pad is None else any_pad) and (out - 1) * s >= size + p:
        out -= 1
    return out


def ref_pool(x, method, k, s, p, ceil=True):
    """MAX (value, flat index) and AVE by explicit windows."""
    N, C, H, W = x.shape
    any_pad = p[0] or p[1]
    Ho = ref_pool_size(H, k[0], p[0], s[0], ceil, any_pad)
    Wo = ref_pool_size(W, k[1], p[1], s[1], ceil, any_pad)
    y = np.zeros((N, C, Ho, Wo))
    idx = np.full((N, C, Ho, Wo), -1.0)
    for n, c, i, j in itertools.product(range(N), range(C), range(Ho), range(Wo)):
        hs, ws = i * s[0] - p[0], j * s[1] - p[1]
        if method == "MAX":
            best, where = -FLT_MAX, -1
            for h in range(max(hs, 0), min(hs + k[0], H)):
                for v in range(max(ws, 0), min(ws + k[1], W)):
                    if x[n, c, h, v] > best:
                        best, where = x[n, c, h, v], h * W + v
            y[n, c, i, j], idx[n, c, i, j] = best, where
        else:
            area = (min(hs + k[0], H + p[0]) - hs) * (min(ws + k[1], W + p[1]) - ws)
            y[n, c, i, j] = x[n, c, max(hs, 0):min(hs + k[0], H), max(ws, 0):min(ws + k[1], W)].sum() / area
    return y, idx


def ref_lrn_across(x, n, alpha, beta, k):
    N, C, H, W = x.shape
    y = np.zeros_like(x)
    for c in range(C):
        lo, hi = max(0, c - (n - 1) // 2), min(C, c + (n - 1) // 2 + 1)
        scale = k + alpha / n * (x[:, lo:hi] ** 2).sum(axis=1)
        y[:, c] = x[:, c] * scale ** -beta
    return y


def ref_lrn_within(x, n, alpha, beta):
    N, C, H, W = x.shape
    half = (n - 1) // 2
    y = np.zeros_like(x)
    for h, v in itertools.product(range(H), range(W)):
        win = x[:, :, max(0, h - half):h + half + 1, max(0, v - half):v + half + 1]
        scale = 1 + alpha / (n * n) * (win ** 2).sum(axis=(2, 3))
        y[:, :, h, v] = x[:, :, h, v] * scale ** -beta
    return y


# -- Convolution ---------------------------------------------------------------------
CONV_CASES = [
    ("num_output: 4 kernel_size: 3 pad: 1", (2, 3, 5, 6)),
    ("num_output: 6 group: 2 kernel_size: 3 stride: 2 pad: 2 dilation: 2", (2, 4, 7, 6)),
    ("num_output: 4 kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 0 stride_h: 1 stride_w: 2", (1, 3, 5, 6)),
    ("num_output: 3 kernel_size: 1", (2, 3, 4, 4)),
    ("num_output: 3 kernel_size: 1", (1, 4, 3, 5)),
    ("num_output: 2 kernel_size: 5 pad: 7 stride: 3", (1, 2, 3, 4)),
    # kernel larger than the output: the plan loops over output positions
    ("num_output: 3 kernel_size: 4 stride: 1 group: 3", (2, 3, 5, 5)),
    ("num_output: 2 kernel_size: 3 pad: 1 bias_term: false", (3, 2, 4, 3)),
    ("num_output: 2 kernel_size: 2 kernel_size: 3 stride: 2 stride: 1 pad: 0 pad: 1", (1, 2, 5, 5)),
]


def _geometry(lay):
    return lay.stride, lay.pad, lay.dilation, lay.group


@pytest.mark.parametrize("params,shape", CONV_CASES)
def test_convolution_forward_matches_loops(params, shape):
    lay = layer("Convolution", "convolution_param { %s %s }" % (params, FILLERS))
    x = np.random.default_rng(1).standard_normal(shape)
    _, top = run(lay, x)
    b = lay.blobs[1].data if len(lay.blobs) > 1 else None
    np.testing.assert_allclose(top[0].data, ref_conv(x, lay.blobs[0].data, b, *_geometry(lay)),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("params,shape", CONV_CASES)
def test_deconvolution_forward_matches_loops(params, shape):
    if "pad: 7" in params:
        shape = (1, 2, 6, 6)  # a deconvolution needs room for the pad
    lay = layer("Deconvolution", "convolution_param { %s %s }" % (params, FILLERS))
    x = np.random.default_rng(2).standard_normal(shape)
    _, top = run(lay, x)
    assert lay.blobs[0].shape[0] == shape[1]  # Caffe's (C_in, C_out / group, kh, kw)
    b = lay.blobs[1].data if len(lay.blobs) > 1 else None
    np.testing.assert_allclose(top[0].data, ref_deconv(x, lay.blobs[0].data, b, *_geometry(lay)),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["Convolution", "Deconvolution"])
@pytest.mark.parametrize("params,shape", [CONV_CASES[i] for i in (0, 1, 2, 3, 4, 6, 8)])
def test_convolution_gradient(kind, params, shape):
    lay = layer(kind, "convolution_param { %s %s }" % (params, FILLERS))
    x = np.random.default_rng(3).standard_normal(shape)
    assert check_gradient(lay, [x]) > 0


def test_convolution_two_bottoms_share_weights():
    lay = make_layer('name: "c" type: "Convolution" top: "y1" top: "y2" convolution_param '
                     '{ num_output: 3 kernel_size: 3 stride: 2 %s }' % FILLERS)
    r = np.random.default_rng(4)
    x1, x2 = r.standard_normal((2, 2, 5, 5)), r.standard_normal((2, 2, 5, 5))
    _, top = run(lay, x1, x2)
    w, b = lay.blobs[0].data, lay.blobs[1].data
    np.testing.assert_allclose(top[0].data, ref_conv(x1, w, b, (2, 2), (0, 0), (1, 1), 1), atol=1e-12)
    np.testing.assert_allclose(top[1].data, ref_conv(x2, w, b, (2, 2), (0, 0), (1, 1), 1), atol=1e-12)
    assert check_gradient(lay, [x1, x2]) > 0


def test_convolution_weight_diff_accumulates_for_large_weights():
    # >= 2^20 weights: the first backward writes the product into the zero diff directly
    lay = layer("Convolution", "convolution_param { num_output: 1024 kernel_size: 1 bias_term: false }")
    r = np.random.default_rng(17)
    x = r.standard_normal((1, 1024, 1, 2))
    bottom, top = run(lay, x)
    top[0].diff[...] = r.standard_normal(top[0].shape)
    expect = top[0].diff[0, :, 0] @ x[0, :, 0].T
    lay.backward(top, [False], bottom)
    np.testing.assert_allclose(lay.blobs[0].diff[:, :, 0, 0], expect, rtol=1e-12)
    lay.backward(top, [False], bottom)
    np.testing.assert_allclose(lay.blobs[0].diff[:, :, 0, 0], 2 * expect, rtol=1e-12)


def test_convolution_nd_and_axis():
    r = np.random.default_rng(5)
    # 3 spatial axes
    lay = layer("Convolution", "convolution_param { num_output: 2 kernel_size: 2 kernel_size: 3 kernel_size: 2 "
                "pad: 1 stride: 2 %s }" % FILLERS)
    x = r.standard_normal((1, 2, 3, 4, 3))
    _, top = run(lay, x)
    w, b = lay.blobs[0].data, lay.blobs[1].data
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1), (1, 1)))
    expect = np.zeros(top[0].shape)
    for o, i, j, k in itertools.product(*map(range, top[0].shape[1:])):
        expect[0, o, i, j, k] = b[o] + (w[o] * xp[0, :, 2 * i:2 * i + 2, 2 * j:2 * j + 3, 2 * k:2 * k + 2]).sum()
    np.testing.assert_allclose(top[0].data, expect, atol=1e-12)
    assert check_gradient(lay, [x]) > 0
    # 1 spatial axis, batch axes (2, 3) before the channel axis 2
    lay = layer("Convolution", "convolution_param { num_output: 2 kernel_size: 3 axis: 2 %s }" % FILLERS)
    x = r.standard_normal((2, 3, 2, 6))
    _, top = run(lay, x)
    assert top[0].shape == (2, 3, 2, 4)
    w, b = lay.blobs[0].data, lay.blobs[1].data
    expect = np.einsum("ock,abckt->abot", w,
                       np.stack([x[..., t:t + 3] for t in range(4)], axis=-1))
    np.testing.assert_allclose(top[0].data, expect + b[:, None], atol=1e-12)
    assert check_gradient(lay, [x]) > 0
    # no spatial axis: a fully connected product, as in Caffe
    lay = layer("Convolution", "convolution_param { num_output: 3 %s }" % FILLERS)
    x = r.standard_normal((2, 4))
    _, top = run(lay, x)
    np.testing.assert_allclose(top[0].data, x @ lay.blobs[0].data.T + lay.blobs[1].data, atol=1e-12)
    assert check_gradient(lay, [x]) > 0


def test_deconvolution_huge_kernel_small_input():
    # FCN upscore style: kernel 2 * stride - 1, group = channels, a tiny input.
    lay = layer("Deconvolution", 'convolution_param { num_output: 2 group: 2 kernel_size: 15 stride: 8 '
                'bias_term: false weight_filler { type: "bilinear" } }')
    x = np.random.default_rng(6).standard_normal((1, 2, 2, 3))
    _, top = run(lay, x)
    assert top[0].shape == (1, 2, 23, 31)
    np.testing.assert_allclose(top[0].data, ref_deconv(x, lay.blobs[0].data, None, (8, 8), (0, 0), (1, 1), 2),
                               atol=1e-12)
    assert len(lay._plan.steps) == 6  # one step per input pixel, not per kernel tap
    assert check_gradient(lay, [x]) > 0


def test_convolution_errors():
    x = np.zeros((1, 4, 5, 5))
    with pytest.raises(LayerError, match="group"):
        run(layer("Convolution", "convolution_param { num_output: 4 kernel_size: 3 group: 3 }"), x)
    with pytest.raises(LayerError, match="num_output"):
        run(layer("Convolution", "convolution_param { num_output: 3 kernel_size: 3 group: 2 }"), x)
    with pytest.raises(LayerError, match="kernel_size"):
        run(layer("Convolution", "convolution_param { num_output: 3 }"), x)
    with pytest.raises(LayerError, match="kernel_h"):
        run(layer("Convolution", "convolution_param { num_output: 3 kernel_h: 3 }"), x)
    with pytest.raises(LayerError, match="empty output"):
        run(layer("Convolution", "convolution_param { num_output: 3 kernel_size: 7 }"), x)
    with pytest.raises(LayerError, match="once per spatial axis"):
        run(layer("Convolution", "convolution_param { num_output: 3 kernel_size: 1 kernel_size: 2 "
                  "kernel_size: 3 }"), x)


def test_im2col_plan_matches_loops():
    r = np.random.default_rng(7)
    for k, p, s, d, size in [((3, 2), (1, 0), (2, 1), (1, 2), (6, 7)), ((5, 4), (2, 3), (1, 3), (1, 1), (3, 2))]:
        x = r.standard_normal((2, 3) + size)
        plan = ColPlan(size, k, p, s, d)
        col = np.zeros(plan.col_shape(3, 2))
        plan.im2col(x, col)
        expect = np.zeros_like(col)
        for c, a, e, n, i, j in itertools.product(range(3), range(k[0]), range(k[1]), range(2),
                                                  *map(range, plan.out_size)):
            h, v = i * s[0] - p[0] + a * d[0], j * s[1] - p[1] + e * d[1]
            if 0 <= h < size[0] and 0 <= v < size[1]:
                expect[c, a, e, n, i, j] = x[n, c, h, v]
        np.testing.assert_array_equal(col, expect)
        # col2im is the adjoint of im2col
        g = r.standard_normal(col.shape)
        back = np.empty_like(x)
        plan.col2im(g, back)
        np.testing.assert_allclose((g * expect).sum(), (back * x).sum(), rtol=1e-12)


# -- Im2col layer --------------------------------------------------------------------
def test_im2col_layer_forward_and_gradient():
    lay = layer("Im2col", "convolution_param { kernel_size: 3 stride: 2 pad: 1 }")
    x = np.random.default_rng(8).standard_normal((2, 2, 5, 6))
    _, top = run(lay, x)
    assert top[0].shape == (2, 18, 3, 3)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for c, a, e in itertools.product(range(2), range(3), range(3)):
        np.testing.assert_array_equal(top[0].data[:, (c * 3 + a) * 3 + e], xp[:, c, a:a + 5:2, e:e + 5:2])
    assert check_gradient(lay, [x]) > 0


# -- Pooling -------------------------------------------------------------------------
POOL_CASES = [
    ("pool: MAX kernel_size: 3 stride: 2", (2, 2, 8, 8)),            # ceil adds a partial window
    ("pool: MAX kernel_size: 2 stride: 2 pad: 1", (1, 2, 5, 5)),     # clip rule drops a window
    ("pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0", (1, 2, 7, 6)),
    ("pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR", (1, 2, 8, 8)),
    ("pool: MAX kernel_size: 4 stride: 1", (1, 2, 5, 5)),            # window loop (16 taps > 4 outputs)
    ("pool: AVE kernel_size: 3 stride: 2 pad: 1", (2, 2, 7, 7)),
    ("pool: AVE kernel_size: 4 stride: 3", (1, 2, 6, 6)),
    ("pool: AVE kernel_size: 2 stride: 2 pad: 1", (1, 2, 5, 7)),
    ("pool: AVE kernel_size: 5 stride: 3 pad: 2", (1, 1, 6, 5)),     # window loop, padded divisor
]


def _pool_args(lay):
    plan = lay._plan
    return plan.kernel, plan.stride, plan.pad


@pytest.mark.parametrize("params,shape", POOL_CASES)
def test_pooling_forward_matches_loops(params, shape):
    lay = layer("Pooling", "pooling_param { %s }" % params)
    x = distinct(np.random.default_rng(9), shape)
    _, top = run(lay, x)
    k, s, p = _pool_args(lay)
    expect, _ = ref_pool(x, "MAX" if "MAX" in params else "AVE", k, s, p, ceil="FLOOR" not in params)
    assert top[0].shape == expect.shape
    np.testing.assert_allclose(top[0].data, expect, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("params,shape", POOL_CASES)
def test_pooling_gradient(params, shape):
    lay = layer("Pooling", "pooling_param { %s }" % params)
    assert check_gradient(lay, [distinct(np.random.default_rng(10), shape)]) > 0


def test_pooling_output_size_rules():
    # ceil, then drop a last window starting in the padding (only when the layer pads)
    assert ref_pool_size(5, 2, 1, 2) == 3
    for H, k, p, s in itertools.product(range(3, 9), range(1, 5), range(0, 3), range(1, 4)):
        if p >= k:
            continue
        lay = layer("Pooling", "pooling_param { pool: AVE kernel_size: %d stride: %d pad: %d }" % (k, s, p))
        if ref_pool_size(H, k, p, s) <= 0:
            continue
        bottom, top = build(lay, [np.zeros((1, 1, H, H))])
        assert top[0].shape[2] == ref_pool_size(H, k, p, s)


def test_pooling_mask_top_and_ties():
    lay = layer("Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 }", tops=("y", "mask"))
    x = distinct(np.random.default_rng(11), (1, 2, 6, 7))
    x[0, 0, 0, :3] = x[0, 0, 1, :3] = 99.0  # ties: Caffe keeps the first in row-major order
    _, top = run(lay, x)
    expect, idx = ref_pool(x, "MAX", (3, 3), (2, 2), (0, 0))
    np.testing.assert_array_equal(top[0].data, expect)
    np.testing.assert_array_equal(top[1].data, idx)
    assert top[1].data[0, 0, 0, 0] == 0


def test_pooling_max_window_without_a_winner():
    # Caffe starts from -FLT_MAX with a strict >: a window of -inf keeps -FLT_MAX, mask -1, no gradient
    x = distinct(np.random.default_rng(18), (1, 1, 5, 5))
    x[0, 0, :2, :2] = x[0, 0, 3:, 3:] = -np.inf
    for params in ("kernel_size: 2 stride: 2 pad: 1",     # tap loop
                   "kernel_size: 5 stride: 4 pad: 1"):    # window loop
        lay = layer("Pooling", "pooling_param { pool: MAX %s }" % params, tops=("y", "mask"))
        bottom, top = run(lay, x)
        k, s, p = _pool_args(lay)
        expect, idx = ref_pool(x, "MAX", k, s, p)
        np.testing.assert_array_equal(top[0].data, expect)
        np.testing.assert_array_equal(top[1].data, idx)
        assert top[0].data[0, 0, -1, -1] == -FLT_MAX and top[1].data[0, 0, -1, -1] == -1
        top[0].diff[...] = 1
        lay.backward(top, [True], bottom)
        assert bottom[0].diff.sum() == (idx >= 0).sum()
        assert not bottom[0].diff[np.isinf(x)].any()


def test_pooling_max_nan_never_wins():
    # Caffe's strict > skips NaN: the window's maximum is that of its other cells, in both loops
    x = distinct(np.random.default_rng(19), (1, 2, 5, 5))
    x[0, 0, 1, 1] = x[0, 1, 4, 4] = np.nan
    for params in ("kernel_size: 2 stride: 2 pad: 1",     # tap loop
                   "kernel_size: 5 stride: 4 pad: 1",     # window loop
                   "global_pooling: true"):               # one window
        lay = layer("Pooling", "pooling_param { pool: MAX %s }" % params, tops=("y", "mask"))
        _, top = run(lay, x)
        k, s, p = _pool_args(lay)
        expect, idx = ref_pool(np.where(np.isnan(x), -np.inf, x), "MAX", k, s, p)
        assert not np.isnan(top[0].data).any()
        np.testing.assert_array_equal(top[0].data, expect)
        np.testing.assert_array_equal(top[1].data, idx)


def test_pooling_global():
    x = distinct(np.random.default_rng(12), (2, 3, 5, 4))
    for pool in ("MAX", "AVE"):
        lay = layer("Pooling", "pooling_param { pool: %s global_pooling: true }" % pool)
        _, top = run(lay, x)
        expect = x.max(axis=(2, 3)) if pool == "MAX" else x.mean(axis=(2, 3))
        np.testing.assert_allclose(top[0].data[:, :, 0, 0], expect, rtol=1e-13)
        assert check_gradient(lay, [x]) > 0
    with pytest.raises(LayerError, match="global_pooling"):
        run(layer("Pooling", "pooling_param { global_pooling: true kernel_size: 2 }"), x)


def test_pooling_errors():
    x = np.zeros((1, 1, 5, 5))
    with pytest.raises(LayerError, match="smaller than the kernel"):
        run(layer("Pooling", "pooling_param { kernel_size: 2 pad: 2 }"), x)
    with pytest.raises(LayerError, match="kernel_size"):
        run(layer("Pooling", "pooling_param { kernel_h: 2 }"), x)
    with pytest.raises(LayerError, match="MAX and AVE"):
        run(layer("Pooling", "pooling_param { pool: STOCHASTIC kernel_size: 2 pad: 1 }"), x)
    with pytest.raises(LayerError, match="4 axes"):
        run(layer("Pooling", "pooling_param { kernel_size: 2 }"), np.zeros((1, 5, 5)))
    with pytest.raises(LayerError, match="at most 1 top"):
        run(layer("Pooling", "pooling_param { pool: AVE kernel_size: 2 }", tops=("a", "b")), x)


@pytest.mark.parametrize("params,shape", [("kernel_size: 3 stride: 2", (2, 2, 7, 7)),
                                          ("kernel_size: 5 stride: 4", (1, 2, 6, 6))])
def test_pooling_stochastic(params, shape):
    r = np.random.default_rng(13)
    x = r.uniform(0.1, 1.0, shape)
    k = int(params.split()[1])
    s = int(params.split()[3])
    # TEST: probability-weighted average sum(x^2) / sum(x)
    lay = layer("Pooling", "pooling_param { pool: STOCHASTIC %s }" % params, phase=TEST)
    _, top = run(lay, x)
    num, _ = ref_pool(x * x, "AVE", (k, k), (s, s), (0, 0))
    den, _ = ref_pool(x, "AVE", (k, k), (s, s), (0, 0))
    np.testing.assert_allclose(top[0].data, num / den, rtol=1e-12)
    # TRAIN: the first cell whose running sum reaches u * window sum
    lay = layer("Pooling", "pooling_param { pool: STOCHASTIC %s }" % params, phase=TRAIN)
    bottom, top = build(lay, [x])
    forward(lay, bottom, top, seed=5)
    rng.set_random_seed(5)
    u = rng.get_rng().uniform(top[0].data.size, 0, 1, top[0].data.dtype).reshape(top[0].shape)
    H, W = shape[2:]
    for n, c, i, j in itertools.product(*map(range, top[0].shape)):
        win = x[n, c, i * s:min(i * s + k, H), j * s:min(j * s + k, W)].ravel()
        pick = int(np.argmax(np.cumsum(win) >= u[n, c, i, j] * win.sum()))
        assert top[0].data[n, c, i, j] == win[pick]
    # the gradient goes to the sampled cells (kept fixed by reseeding)
    assert check_gradient(lay, [x]) > 0


# -- SPP ---------------------------------------------------------------------------------
@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_spp_forward_and_gradient(pool):
    x = distinct(np.random.default_rng(14), (2, 3, 7, 9))
    lay = layer("SPP", "spp_param { pyramid_height: 3 pool: %s }" % pool)
    _, top = run(lay, x)
    parts = []
    for level in range(3):
        bins = 2 ** level
        k = (-(-7 // bins), -(-9 // bins))
        p = ((k[0] * bins - 7 + 1) // 2, (k[1] * bins - 9 + 1) // 2)
        y, _ = ref_pool(x, pool, k, k, p)
        parts.append(y.reshape(2, -1))
    np.testing.assert_allclose(top[0].data, np.concatenate(parts, axis=1), rtol=1e-13)
    assert check_gradient(lay, [x]) > 0
    # one level: Caffe passes the pooled blob through unflattened
    lay = layer("SPP", "spp_param { pyramid_height: 1 pool: %s }" % pool)
    _, top = run(lay, x)
    assert top[0].shape == (2, 3, 1, 1)


# -- LRN ---------------------------------------------------------------------------------
LRN_CASES = [
    "local_size: 5 alpha: 0.3 beta: 0.75",
    "local_size: 3 alpha: 0.9 beta: 0.6 k: 2.0",
    "local_size: 9 alpha: 0.5 beta: 1.0 k: 1.5",
    "local_size: 3 alpha: 0.4 beta: 0.75 k: 3.0 norm_region: WITHIN_CHANNEL",
    "local_size: 5 alpha: 0.7 beta: 0.5 norm_region: WITHIN_CHANNEL",
    "local_size: 17 alpha: 0.8 beta: 0.75",  # past CenteredWindowSum.MAX_DIRECT: running sums
    "local_size: 17 alpha: 0.8 beta: 0.75 norm_region: WITHIN_CHANNEL",
]


def _lrn_ref(x, params):
    lp = caffe_pb2.LRNParameter()
    text_format.Parse(params, lp)
    if lp.norm_region == lp.WITHIN_CHANNEL:
        return ref_lrn_within(x, lp.local_size, lp.alpha, lp.beta)
    return ref_lrn_across(x, lp.local_size, lp.alpha, lp.beta, lp.k)


@pytest.mark.parametrize("params", LRN_CASES)
def test_lrn_forward_matches_loops(params):
    x = np.random.default_rng(15).standard_normal((2, 7, 4, 5)) * 2
    _, top = run(layer("LRN", "lrn_param { %s }" % params), x)
    np.testing.assert_allclose(top[0].data, _lrn_ref(x, params), rtol=1e-12)


@pytest.mark.parametrize("params", LRN_CASES)
def test_lrn_gradient(params):
    x = np.random.default_rng(16).standard_normal((2, 6, 3, 4))
    assert check_gradient(layer("LRN", "lrn_param { %s }" % params), [x]) > 0


def test_lrn_even_size_rejected():
    with pytest.raises(LayerError, match="odd"):
        run(layer("LRN", "lrn_param { local_size: 4 }"), np.zeros((1, 3, 2, 2)))


# -- parity with real Caffe (direct harness: one Layer, float32) ------------------------------
VISION_TYPES = {"Convolution", "Deconvolution", "Pooling", "LRN", "Im2col", "SPP"}


def _vision_cases():
    with open(PARITY.parent / "cases.json") as f:
        names = json.load(f)["layers"]
    out = []
    for name in names:
        with open(PARITY / name / "meta.json") as f:
            if set(json.load(f)["layer_types"]) <= VISION_TYPES:
                out.append(name)
    return out


@pytest.mark.parametrize("name", _vision_cases())
def test_parity(name):
    run_layer_case_direct(name)


def test_parity_covers_every_vision_case():
    names = _vision_cases()
    for prefix in ("conv_", "deconv_", "pool_", "lrn_"):
        assert any(n.startswith(prefix) for n in names)
    assert "im2col" in names and "spp" in names
