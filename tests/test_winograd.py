"""Winograd F(2x2, 3x3) and F(2x2, 5x5) (protonet/layers/_winograd.py) against im2col and finite differences."""
import numpy as np
import pytest

from gradcheck import build, check_gradient, make_layer
from protonet import blas as blas_module, ckernels
from protonet.layer import TEST, TRAIN
from protonet.layers import _winograd
from protonet.layers._winograd import Winograd

needs_kernels = pytest.mark.skipif(not ckernels.available() or blas_module.get(np.float64) is None,
                                   reason="Winograd needs the compiled kernels and NumPy's OpenBLAS")


def _any_layer(monkeypatch, passes=("forward", "data", "weight")):
    """Small layers take the path too (the thresholds are for speed, not for correctness);
    the backward passes not in ``passes`` run on im2col."""
    rules = {p: ((1, 1),) if p in passes else () for p in ("forward", "data", "weight")}
    monkeypatch.setattr(Winograd, "RULES", {3: rules, 5: rules})


def _conv(params, phase=TRAIN, dtype=np.float64):
    if "kernel_" not in params:
        params += " kernel_size: 3"
    text = ('name: "c" type: "Convolution" top: "y" top: "z" convolution_param { %s '
            'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } }' % params)
    return make_layer(text, phase=phase, dtype=dtype)


def _forward_backward_agree(fast, ref, rng, tol):
    """``fast`` and ``ref`` ((layer, bottoms, tops), two bottoms each), given the same weights,
    inputs and top diffs, agree to ``tol`` of the largest value: tops, bottom diffs and
    parameter diffs."""
    (lay, bottom, top), (rlay, rbottom, rtop) = fast, ref
    for src, dst in zip(lay.blobs, rlay.blobs):
        dst.data[...] = src.data
    dys = None
    for layer, b, t in (fast, ref):
        layer.forward(b, t)
        if dys is None:
            dys = [rng.standard_normal(t[0].shape) for _ in range(2)]
        for k in range(2):
            t[k].diff[...] = dys[k]
        for p in layer.blobs:
            p.clear_diff()
        layer.backward(t, [True, True], b)

    def agree(a, b):
        np.testing.assert_allclose(a, b, rtol=0, atol=tol * max(np.abs(b).max(), 1))

    for k in range(2):
        agree(top[k].data, rtop[k].data)
        agree(bottom[k].diff, rbottom[k].diff)
    for p, q in zip(lay.blobs, rlay.blobs):
        agree(p.diff, q.diff)


CASES = [
    ("num_output: 6 pad: 1", (2, 4, 7, 9)),              # odd output: a half tile on each edge
    ("num_output: 4 pad: 0", (3, 5, 8, 6)),
    ("num_output: 5 pad: 2", (1, 3, 5, 4)),              # backward-data then pads by 0
    ("num_output: 6 group: 3 pad: 1", (2, 6, 6, 5)),
    ("num_output: 4 pad_h: 0 pad_w: 2", (2, 3, 4, 7)),
    ("num_output: 3 pad: 1", (2, 2, 1, 1)),              # one pixel: every tap but one is padding
    ("num_output: 2 pad: 0 bias_term: false", (1, 2, 3, 3)),
    ("num_output: 4 kernel_size: 5 pad: 2", (2, 3, 7, 9)),      # AlexNet's conv2, small
    ("num_output: 6 kernel_size: 5 group: 2 pad: 2", (2, 4, 6, 6)),
    ("num_output: 3 kernel_size: 5 pad: 0", (1, 2, 5, 8)),
    ("num_output: 3 kernel_size: 5 pad: 4", (2, 2, 3, 2)),      # backward-data pads by 0
    ("num_output: 3 kernel_size: 5 pad_h: 1 pad_w: 3", (1, 3, 6, 5)),
]


@needs_kernels
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("block,passes", [
    (1 << 30, "forward data weight"),                     # one block
    (1, "forward data weight"),                           # one tile row per block
    (1 << 30, "forward weight"),                          # backward-data on im2col
    (1 << 30, "forward data"),                            # the weight gradient on im2col
])
@pytest.mark.parametrize("params,shape", CASES)
def test_winograd_matches_im2col(params, shape, block, passes, dtype, tol, monkeypatch):
    _any_layer(monkeypatch, passes.split())
    monkeypatch.setattr(Winograd, "BLOCK_BYTES", block)
    monkeypatch.setattr(Winograd, "GRAD_BLOCK_BYTES", block)
    r = np.random.default_rng(3)
    xs = [r.standard_normal(shape), r.standard_normal(shape)]
    wino = _conv(params, dtype=dtype)
    bottom, top = build(wino, xs)
    assert wino._wino is not None
    assert (wino._wino.weight_grad, wino._wino.data_grad) == ("weight" in passes, "data" in passes)
    monkeypatch.setattr(_winograd.Winograd, "ENABLED", False)
    ref = _conv(params, dtype=dtype)
    rbottom, rtop = build(ref, xs)
    assert ref._wino is None
    _forward_backward_agree((wino, bottom, top), (ref, rbottom, rtop), r, tol)


@needs_kernels
@pytest.mark.parametrize("k", [3, 5])
def test_winograd_gradient(k, monkeypatch):
    _any_layer(monkeypatch)
    text = ('name: "c" type: "Convolution" top: "y" convolution_param { num_output: 4 group: 2 kernel_size: %d '
            'pad: 1 weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } }' % k)
    x = np.random.default_rng(11).standard_normal((2, 4, 5, 6))
    lay = make_layer(text)
    build(lay, [x])
    assert lay._wino is not None
    assert check_gradient(make_layer(text), [x]) > 0


@needs_kernels
@pytest.mark.parametrize("grad_here", [True, False])
def test_winograd_adds_to_a_held_weight_gradient(grad_here, monkeypatch):
    # a second backward (iter_size, a shared weight) adds to the diff, whichever path takes it
    _any_layer(monkeypatch, ("forward", "data", "weight") if grad_here else ("forward", "data"))
    lay = _conv("num_output: 4 pad: 1")
    x = np.random.default_rng(5).standard_normal((2, 3, 6, 6))
    bottom, top = build(lay, [x, x])
    assert lay._wino is not None and lay._wino.weight_grad == grad_here
    lay.forward(bottom, top)
    for t in top:
        t.diff[...] = np.random.default_rng(6).standard_normal(t.shape)
    lay.blobs[0].clear_diff()
    lay.backward(top, [False, False], bottom)
    once = lay.blobs[0].diff.copy()
    lay.blobs[0].clear_diff()
    lay.backward(top, [False, False], bottom)
    lay.backward(top, [False, False], bottom)
    np.testing.assert_allclose(lay.blobs[0].diff, 2 * once, rtol=1e-13, atol=1e-13)
    assert np.abs(once).max() > 0.1


@pytest.mark.parametrize("r", [3, 5])
def test_winograd_matrices_compute_a_correlation(r):
    # 1-d F(2, r): A^T [(G g) . (B^T d)] is the correlation of d (r + 1 values) with g
    m = _winograd.MATRICES[r]
    rng = np.random.default_rng(r)
    for _ in range(5):
        g, d = rng.standard_normal(r), rng.standard_normal(r + 1)
        ref = [np.dot(g, d[i:i + r]) for i in range(2)]
        np.testing.assert_allclose(m.at @ ((m.g @ g) * (m.bt @ d)), ref, rtol=1e-12, atol=1e-12)
    assert set(np.unique(m.bt)) <= set(range(-5, 6))      # integer input transforms


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("r", [3, 5])
def test_compiled_transforms_are_the_derived_matrices(r, dtype):
    # one tile, one channel: the compiled B^T d B, A^T m A and A g A^T, and the kernel's
    # G g G^T and G^T u G, equal the matrices _winograd.Matrices derives
    m = _winograd.MATRICES[r]
    a = r + 1
    rng = np.random.default_rng(r)
    d = rng.integers(-4, 5, (1, 1, a, a)).astype(dtype)       # small integers: exact in float32
    v = np.empty((a * a, 1, 1), dtype)
    ckernels.winograd_input(m, d, v, (0, 0), (1, 1), (0, 1))
    np.testing.assert_array_equal(v.reshape(a, a), m.bt @ d[0, 0] @ m.bt.T)
    prod = rng.integers(-4, 5, (a * a, 1, 1)).astype(dtype)
    y = np.empty((1, 1, 2, 2), dtype)
    ckernels.winograd_output(m, prod, y, None, (1, 1), (0, 1))
    np.testing.assert_array_equal(y[0, 0], m.at @ prod.reshape(a, a) @ m.at.T)
    ckernels.winograd_grad(m, y, prod, (1, 1), (0, 1))
    np.testing.assert_array_equal(prod.reshape(a, a), m.at.T @ y[0, 0] @ m.at)
    g = rng.standard_normal((1, 1, r, r)).astype(dtype)
    u = np.empty((a * a, 1, 1), dtype)
    ckernels.winograd_weights(m, g, u)
    tol = 1e-6 if dtype == np.float32 else 1e-14              # G's 1/6, 1/24 round

    def near(got, want):
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())

    near(u.reshape(a, a), m.g @ g[0, 0] @ m.g.T)
    dg = np.empty_like(g)
    ckernels.winograd_weights_grad(m, u, dg, accumulate=False)
    near(dg[0, 0], m.g.T @ u.reshape(a, a) @ m.g)


def test_winograd_only_where_it_pays():
    # the real rules: which layers, and which of their passes
    def passes(params, shape, phase=TRAIN):
        lay = _conv(params, phase=phase, dtype=np.float32)
        build(lay, [np.zeros(shape, np.float32)] * 2)
        w = lay._wino
        return None if w is None else ("forward",) + ("data",) * w.data_grad + ("weight",) * w.weight_grad

    if not (ckernels.available() and blas_module.get(np.float32) is not None):
        assert passes("num_output: 128 pad: 1", (4, 96, 28, 28)) is None
        return
    every = ("forward", "data", "weight")
    assert passes("num_output: 128 pad: 1", (4, 96, 28, 28)) == every          # GoogLeNet 3a
    assert passes("num_output: 128 pad: 1", (4, 96, 28, 28), TEST) == every
    assert passes("num_output: 256 pad: 1", (4, 128, 14, 14)) == ("forward",)   # 196 tiles
    assert passes("num_output: 384 pad: 1", (4, 192, 7, 7)) is None            # 64 tiles
    assert passes("num_output: 64 pad: 1", (1, 32, 64, 64)) is None            # shallow, 1024 tiles
    assert passes("num_output: 32 pad: 1", (100, 32, 16, 16)) == every         # shallow, 6400 tiles
    assert passes("num_output: 384 group: 2 pad: 1", (8, 384, 13, 13)) == every  # CaffeNet conv4
    assert passes("num_output: 384 pad: 1", (1, 256, 28, 28)) == every         # FCN-AlexNet conv3
    assert passes("num_output: 256 kernel_size: 5 group: 2 pad: 2", (8, 96, 27, 27)) == every  # conv2
    assert passes("num_output: 256 kernel_size: 5 group: 2 pad: 2", (1, 96, 63, 63)) == ("forward",)
    assert passes("num_output: 64 kernel_size: 5 pad: 2", (100, 32, 16, 16)) == ("forward", "data")
    assert passes("num_output: 50 kernel_size: 5", (64, 20, 12, 12)) is None      # LeNet's conv2
    for other in ("pad: 1 stride: 2", "pad: 2 dilation: 2", "pad: 3", "kernel_size: 7 pad: 3",
                  "kernel_h: 3 kernel_w: 5 pad: 1"):
        assert passes("num_output: 128 " + other, (4, 128, 28, 28)) is None


def test_winograd_switch(monkeypatch):
    monkeypatch.setattr(_winograd.Winograd, "ENABLED", False)
    lay = _conv("num_output: 128 pad: 1", dtype=np.float32)
    build(lay, [np.zeros((4, 96, 28, 28), np.float32)] * 2)
    assert lay._wino is None


@needs_kernels
def test_winograd_forward_with_kernel_rows_backward(monkeypatch):
    # AlexNet's conv2 at FCN sizes: Winograd forward, its backward passes by kernel rows
    from protonet.layers import conv as conv_module
    _any_layer(monkeypatch, ("forward",))
    monkeypatch.setattr(conv_module._KernelRows, "MIN_POSITIONS", 1)
    monkeypatch.setattr(conv_module._KernelRows, "MIN_COLUMN_BYTES", 0)
    monkeypatch.setattr(conv_module._KernelRows, "MIN_DEPTH_WITH_CKERNELS", 0)
    params = "num_output: 4 kernel_size: 5 group: 2 pad: 2"
    r = np.random.default_rng(8)
    xs = [r.standard_normal((2, 4, 7, 8)) for _ in range(2)]
    lay = _conv(params)
    bottom, top = build(lay, xs)
    assert lay._wino is not None and lay._rows is not None
    monkeypatch.setattr(_winograd.Winograd, "ENABLED", False)
    monkeypatch.setattr(conv_module._KernelRows, "MIN_ROWS", 99)
    ref = _conv(params)
    rbottom, rtop = build(ref, xs)
    assert ref._wino is None and ref._rows is None
    _forward_backward_agree((lay, bottom, top), (ref, rbottom, rtop), r, 1e-12)


@needs_kernels
@pytest.mark.parametrize("k", [3, 5])
def test_weight_gradient_block_budget(k, monkeypatch):
    # 3x3's weight gradient goes in BLOCK_BYTES blocks (as fast, half the scratch); 5x5's in
    # the wider GRAD_BLOCK_BYTES its 36 GEMMs over few channels need
    _any_layer(monkeypatch)
    monkeypatch.setattr(Winograd, "BLOCK_BYTES", 1 << 20)
    monkeypatch.setattr(Winograd, "GRAD_BLOCK_BYTES", 1 << 30)
    budgets = []
    real = Winograd._blocks

    def spy(self, tiles, channels, budget):
        budgets.append(budget)
        return real(self, tiles, channels, budget)
    monkeypatch.setattr(Winograd, "_blocks", spy)
    lay = _conv("num_output: 4 kernel_size: %d pad: 1" % k)
    x = np.random.default_rng(9).standard_normal((2, 3, 9, 9))
    bottom, top = build(lay, [x, x])
    lay.forward(bottom, top)
    for t in top:
        t.diff[...] = 1
    budgets.clear()
    lay.backward(top, [False, False], bottom)            # the weight gradient only
    assert budgets == [1 << 20 if k == 3 else 1 << 30] * 2      # one per bottom
