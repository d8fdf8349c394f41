"""The compiled CPU kernels (protonet/_ckernels.c) against the NumPy paths they replace.

im2col, col2im and MAX pooling must give the NumPy path's values bit for bit (copies, sums in
the same order, the same first-maximum choice with NaN, -inf and ties; col2im within rounding
where NumPy loops over outputs instead of taps); AVE pooling the same
values to the last bit in forward where NumPy sums by taps (Caffe's order) and within rounding in backward (the
C kernel adds in Caffe's output order, the NumPy path in tap order). Each is also run split
over threads, which must not change a bit.
"""
import itertools
import os
import time

import numpy as np
import pytest

from protonet import ckernels
from protonet.layers._im2col import ColPlan
from protonet.layers.pooling import Pool2d, P


@pytest.fixture
def numpy_path(monkeypatch):
    """A context in which the callers fall back to their NumPy paths."""
    class Switch:
        def __enter__(self):
            monkeypatch.setattr(ckernels, "_load", lambda: None)

        def __exit__(self, *exc):
            monkeypatch.undo()
    return Switch()


@pytest.fixture(params=[False, True], ids=["one-thread", "split"])
def split(request, monkeypatch):
    """Run each pass on the calling thread, or split into the smallest ranges allowed."""
    if request.param:
        monkeypatch.setattr(ckernels, "MIN_SPLIT", 1)
        monkeypatch.setattr(ckernels, "_threads", 3)
    else:
        monkeypatch.setattr(ckernels, "_threads", 1)
    return request.param


def test_the_library_is_built_and_loaded():
    # setup.py builds it (a C compiler is all it needs); .ci/run installs g++
    if os.environ.get("PROTONET_CKERNELS", "1") == "0":
        pytest.skip("disabled by PROTONET_CKERNELS=0")
    assert ckernels.available()


def test_num_threads_follows_the_environment(monkeypatch):
    monkeypatch.setattr(ckernels, "_threads", None)
    monkeypatch.setenv("PROTONET_NUM_THREADS", "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert ckernels.num_threads() == 3
    monkeypatch.setattr(ckernels, "_threads", None)
    monkeypatch.delenv("PROTONET_NUM_THREADS")
    assert ckernels.num_threads() == 5
    monkeypatch.setattr(ckernels, "_threads", None)
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert ckernels.num_threads() == 1
    monkeypatch.setattr(ckernels, "_threads", None)


GEOMETRIES = [
    # in_size, kernel, pad, stride, dilation, out_size (None: Caffe's formula)
    ((9, 11), (3, 3), (1, 1), (1, 1), (1, 1), None),
    ((16, 16), (5, 5), (2, 2), (1, 1), (1, 1), None),
    ((15, 13), (7, 5), (3, 1), (2, 3), (1, 1), None),
    ((12, 12), (3, 3), (2, 2), (1, 1), (2, 2), None),
    ((8, 9), (11, 11), (5, 5), (4, 4), (1, 1), None),       # kernel larger than the output
    ((6, 7), (1, 1), (0, 0), (2, 2), (1, 1), None),
    ((10, 10), (3, 3), (-1, 0), (2, 1), (1, 1), (3, 8)),    # a box plan: windows start inside
    ((5, 5), (6, 6), (100, 100), (1, 1), (1, 1), None),     # FCN's pad 100: mostly padding
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "x".join(map(str, g[0])) + "k" + str(g[1][0]))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_im2col_and_col2im_match_numpy(geometry, dtype, numpy_path, split):
    in_size, kernel, pad, stride, dilation, out_size = geometry
    rng = np.random.default_rng(0)
    n, c = 5, 3
    plan = ColPlan(in_size, kernel, pad, stride, dilation, out_size=out_size)
    img = rng.standard_normal((n, c) + in_size).astype(dtype)
    # the kernel writes every column, the padding's zeros included: start from garbage
    col = np.full(plan.col_shape(c, n), 7.0, dtype)
    plan.im2col(img, col)
    ref = np.zeros_like(col)
    with numpy_path:
        plan.im2col(img, ref)
    np.testing.assert_array_equal(col, ref)
    assert (col != 0).any()

    dcol = rng.standard_normal(col.shape).astype(dtype)
    got = np.full_like(img, 3.0)
    plan.col2im(dcol, got)
    want = np.full_like(img, -3.0)
    with numpy_path:
        plan.col2im(dcol, want)
    if all(k <= o for k, o in zip(plan.kernel, plan.out_size)):
        np.testing.assert_array_equal(got, want)
    else:
        # NumPy then loops over outputs (a range of taps each), adding in another order;
        # the kernel keeps Caffe's: taps in increasing order per pixel
        np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-13, atol=1e-6)


def test_non_contiguous_columns_keep_the_numpy_path(numpy_path):
    # Im2colLayer hands a transposed view of its top: the kernel must decline it
    plan = ColPlan((6, 6), (3, 3), (1, 1), (1, 1), (1, 1))
    img = np.random.default_rng(1).standard_normal((2, 2, 6, 6)).astype(np.float32)
    top = np.zeros((2, 2 * 9, 6, 6), np.float32)
    view = top.reshape(2, 2, 3, 3, 6, 6).transpose(1, 2, 3, 0, 4, 5)
    assert not ckernels.im2col(img, view, plan.kernel, plan.pad, plan.stride, plan.dilation, plan.out_size)
    plan.im2col(img, view)
    ref = np.zeros(plan.col_shape(2, 2), np.float32)
    with numpy_path:
        plan.im2col(img, ref)
    np.testing.assert_array_equal(view, ref)


POOLS = [
    # shape, kernel, stride, pad, ceil
    ((2, 3, 9, 9), (3, 3), (2, 2), (0, 0), True),
    ((2, 3, 8, 8), (3, 3), (2, 2), (1, 1), True),
    ((2, 2, 7, 10), (3, 2), (1, 3), (1, 0), True),
    ((1, 4, 14, 14), (3, 3), (1, 1), (1, 1), True),        # GoogLeNet's inception pool
    ((2, 3, 6, 6), (6, 6), (1, 1), (0, 0), True),          # global
    ((2, 3, 5, 7), (2, 2), (2, 2), (0, 0), False),
    ((1, 2, 13, 13), (3, 3), (3, 3), (0, 0), True),
]


def _pool_input(shape, dtype, specials):
    rng = np.random.default_rng(2)
    # few distinct values: many ties, where the first maximum must win
    x = rng.integers(-3, 4, size=shape).astype(dtype)
    if specials:
        flat = x.reshape(-1)
        flat[rng.choice(flat.size, flat.size // 7, replace=False)] = np.nan
        flat[rng.choice(flat.size, flat.size // 7, replace=False)] = -np.inf
        flat[:shape[-1] * 2] = np.nan         # a window with nothing to pick
    return x


@pytest.mark.parametrize("pool", POOLS, ids=lambda p: "%dx%d-k%d-s%d-p%d" % (p[0][2], p[0][3], p[1][0], p[2][0], p[3][0]))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("specials", [False, True], ids=["plain", "nan-inf"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "test"])
def test_max_pooling_matches_numpy(pool, dtype, specials, train, numpy_path, split):
    shape, kernel, stride, pad, ceil = pool
    x = _pool_input(shape, dtype, specials)

    def run():
        p = Pool2d(np, dtype, P.MAX, shape, kernel, stride, pad, ceil_mode=ceil, train=train)
        top = np.full(p.out_shape, 5.0, dtype)
        p.forward(x, top)
        mask = p.flat_index(x)
        g = np.random.default_rng(3).standard_normal(p.out_shape).astype(dtype)
        dx = np.full(shape, 9.0, dtype)
        p.backward(g, dx, x)
        return top, mask, dx

    got = run()
    with numpy_path:
        want = run()
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("pool", POOLS, ids=lambda p: "%dx%d-k%d-s%d-p%d" % (p[0][2], p[0][3], p[1][0], p[2][0], p[3][0]))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ave_pooling_matches_numpy(pool, dtype, numpy_path, split):
    shape, kernel, stride, pad, ceil = pool
    x = np.random.default_rng(4).standard_normal(shape).astype(dtype)
    g = np.random.default_rng(5).standard_normal(shape).astype(dtype)

    def run():
        p = Pool2d(np, dtype, P.AVE, shape, kernel, stride, pad, ceil_mode=ceil)
        top = np.full(p.out_shape, 5.0, dtype)
        p.forward(x, top)
        dx = np.full(shape, 9.0, dtype)
        p.backward(g[tuple(slice(0, s) for s in p.out_shape)].copy(), dx)
        return top, dx

    (top, dx) = run()
    with numpy_path:
        (top_ref, dx_ref) = run()
    if kernel[0] * kernel[1] <= top.shape[2] * top.shape[3]:
        np.testing.assert_array_equal(top, top_ref)
    else:
        # NumPy then sums each window with .sum() (pairwise); the kernel in Caffe's row order
        np.testing.assert_allclose(top, top_ref, rtol=1e-6 if dtype == np.float32 else 1e-14)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-6 if dtype == np.float32 else 1e-14, atol=1e-7)


@pytest.mark.parametrize("itype", [np.int8, np.int16, np.int32])
def test_max_pool_choice_types(itype):
    # Pool2d picks the narrowest type; every width has its kernel
    x = np.random.default_rng(6).standard_normal((1, 2, 20, 20)).astype(np.float32)
    top = np.empty((1, 2, 10, 10), np.float32)
    choice = np.empty(top.shape, itype)
    assert ckernels.max_pool_forward(x, top, choice, (2, 2), (2, 2), (0, 0))
    windows = x.reshape(1, 2, 10, 2, 10, 2).transpose(0, 1, 2, 4, 3, 5).reshape(1, 2, 10, 10, 4)
    np.testing.assert_array_equal(top, windows.max(-1))
    np.testing.assert_array_equal(choice, windows.argmax(-1) + 1)
    g = np.arange(top.size, dtype=np.float32).reshape(top.shape)
    dx = np.empty_like(x)
    assert ckernels.max_pool_backward(g, choice, dx, (2, 2), (2, 2), (0, 0))
    assert dx.sum() == g.sum() and np.count_nonzero(dx) == top.size - 1   # g's 0 lands too


def _lrn_pass(params, x, dy, dtype):
    from google.protobuf import text_format
    from protonet.blob import Blob
    from protonet.layer import create_layer, TRAIN
    from protonet.proto import caffe_pb2
    param = caffe_pb2.LayerParameter()
    text_format.Parse('name: "n" type: "LRN" bottom: "x" top: "y" lrn_param { %s }' % params, param)
    lay = create_layer(param, phase=TRAIN, dtype=dtype, xp=np)
    bottom, top = [Blob(x.shape, dtype=dtype, xp=np)], [Blob((), dtype=dtype, xp=np)]
    bottom[0].data[...] = x
    lay.setup(bottom, top)
    lay.reshape(bottom, top)
    lay.forward(bottom, top)
    top[0].diff[...] = dy
    lay.backward(top, [True], bottom)
    return top[0].data.copy(), bottom[0].diff.copy(), lay.scale.copy()


@pytest.mark.parametrize("params", ["local_size: 5 alpha: 0.0001 beta: 0.75",
                                    "local_size: 3 alpha: 0.9 beta: 0.6 k: 2.0",
                                    "local_size: 1 alpha: 0.5 beta: 1.0",
                                    "local_size: 15 alpha: 0.8 beta: 0.75 k: 1.5",
                                    "local_size: 3 alpha: 5e-05 beta: 0.75 norm_region: WITHIN_CHANNEL",
                                    "local_size: 5 alpha: 0.7 beta: 0.5 norm_region: WITHIN_CHANNEL",
                                    "local_size: 1 alpha: 0.3 beta: 1.0 norm_region: WITHIN_CHANNEL"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 7, 4, 5), (1, 3, 23, 29)], ids=["small", "blocks"])
def test_lrn_matches_numpy(params, dtype, shape, numpy_path, split):
    # (1, 3, 23, 29): 667 positions, three work units of 256, the last one short
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    got = _lrn_pass(params, x, dy, dtype)
    with numpy_path:
        want = _lrn_pass(params, x, dy, dtype)
    # the same sums in the same order; only pow may differ by an ulp (NumPy may use its own)
    tol = 4e-7 if dtype == np.float32 else 1e-15
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    np.testing.assert_array_equal(got[2], want[2])     # the scale: no pow in it


def test_lrn_three_quarter_power_within_an_ulp_of_powf(split):
    # beta 0.75 (every AlexNet-family LRN) takes r sqrt(r), r = 1/sqrt(scale), in double
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((2, 6, 50, 40)) * 10 ** rng.uniform(-3, 3, (2, 6, 50, 40))).astype(np.float32)
    scale, scale_pow, top = (np.empty_like(x) for _ in range(3))
    assert ckernels.lrn_forward(x, scale, scale_pow, top, 5, 2.0, 0.75, 1.0)
    want = np.power(scale, np.float32(-0.75))
    ulps = np.abs(scale_pow.view(np.int32).astype(np.int64) - want.view(np.int32))
    assert ulps.max() <= 1 and (ulps == 0).mean() > 0.99
    np.testing.assert_array_equal(top, x * scale_pow)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_a_forked_child_gets_a_pool_of_its_own(monkeypatch):
    # the parent's pool threads do not exist in a child: work handed to them would never run
    monkeypatch.setattr(ckernels, "MIN_SPLIT", 1)
    monkeypatch.setattr(ckernels, "_threads", 2)
    x = np.random.default_rng(9).standard_normal((4, 3, 8, 8)).astype(np.float32)
    top = np.empty((4, 3, 4, 4), np.float32)
    assert ckernels.max_pool_forward(x, top, None, (2, 2), (2, 2), (0, 0))   # the pool exists now
    assert ckernels._pool is not None
    pid = os.fork()
    if pid == 0:
        try:
            out = np.empty_like(top)
            ok = ckernels.max_pool_forward(x, out, None, (2, 2), (2, 2), (0, 0)) and np.array_equal(out, top)
            os._exit(0 if ok else 1)
        finally:
            os._exit(2)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on the parent's pool")
    assert os.waitstatus_to_exitcode(status) == 0
