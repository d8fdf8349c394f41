"""protonet/cuda_kernels.py against the NumPy paths, run on the host through tests/fakecupy.py.

The fake compiles each kernel's source with g++ and runs its grid-stride loop
on one thread, so these tests check the kernels' index arithmetic and
Caffe's rules (ceil pooling windows, padded AVE divisors, NaN never winning a
MAX window, LRN windows at the channel edges) on every CPU test run.

With ``PROTONET_TEST_DEVICE=cupy`` (tests/conftest.py) the tests that take the
``cp`` fixture run the kernels on a real GPU through CuPy instead.
"""
import itertools
import shutil
import subprocess

import numpy as np
import pytest
from google.protobuf import text_format

import protonet
from protonet import backend, cuda_kernels
from protonet.layers._im2col import ColPlan
from protonet.layers.pooling import P, Pool2d
from protonet.proto import caffe_pb2


@pytest.fixture
def cp(device):
    """The device module (fakecupy, or CuPy under PROTONET_TEST_DEVICE=cupy) installed, in CPU
    mode: the tests pick each array's side themselves."""
    backend.set_mode_cpu()
    return device


IM2COL_CASES = [  # (N, C, H, W), kernel, pad, stride, dilation
    ((2, 3, 9, 8), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((1, 2, 11, 11), (5, 4), (2, 0), (2, 3), (1, 2)),
    ((2, 1, 5, 5), (7, 7), (3, 3), (2, 2), (1, 1)),            # kernel larger than the image
    ((1, 3, 15, 15), (11, 11), (5, 5), (4, 4), (1, 1)),        # AlexNet's conv1 shape, small
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,kernel,pad,stride,dilation", IM2COL_CASES)
def test_im2col_and_col2im_kernels_equal_the_strided_steps(cp, shape, kernel, pad, stride, dilation, dtype):
    r = np.random.default_rng(1)
    n, c = shape[:2]
    plan = ColPlan(shape[2:], kernel, pad, stride, dilation)
    img = r.standard_normal(shape).astype(dtype)
    expect = np.zeros(plan.col_shape(c, n), dtype)
    plan.im2col(img, expect)
    col = cp.full(plan.col_shape(c, n), 7, dtype)       # padding entries must be written as 0
    plan.im2col(cp.asarray(img), col)
    np.testing.assert_array_equal(col.get(), expect)

    g = r.standard_normal(expect.shape).astype(dtype)
    back = np.empty_like(img)
    plan.col2im(g, back)
    out = cp.full(shape, 9, dtype)
    plan.col2im(cp.asarray(g), out)
    np.testing.assert_allclose(out.get(), back, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-5 if dtype == np.float32 else 1e-12)
    assert cp.launch_counts["pn_im2col"] == 1 and cp.launch_counts["pn_col2im"] == 1


def test_im2col_kernel_with_a_sub_range_of_outputs(cp):
    # the box plan of a heavily padded convolution: out_size given, the pad is the first window's
    plan = ColPlan((6, 6), (3, 3), (-2, -1), (2, 2), (1, 1), out_size=(2, 2))
    img = np.random.default_rng(2).standard_normal((1, 2, 6, 6)).astype(np.float32)
    expect = np.zeros(plan.col_shape(2, 1), np.float32)
    plan.im2col(img, expect)
    col = cp.zeros(expect.shape, np.float32)
    plan.im2col(cp.asarray(img), col)
    np.testing.assert_array_equal(col.get(), expect)


def test_kernels_fall_back_for_three_spatial_axes(cp):
    plan = ColPlan((4, 4, 4), (2, 2, 2), (0, 0, 0), (1, 1, 1), (1, 1, 1))
    img = np.random.default_rng(3).standard_normal((1, 1, 4, 4, 4)).astype(np.float32)
    expect = np.zeros(plan.col_shape(1, 1), np.float32)
    plan.im2col(img, expect)
    col = cp.zeros(expect.shape, np.float32)
    plan.im2col(cp.asarray(img), col)
    np.testing.assert_array_equal(col.get(), expect)
    assert cp.launch_counts["pn_im2col"] == 0


POOL_CASES = [  # shape, kernel, stride, pad
    ((2, 3, 13, 13), (3, 3), (2, 2), (0, 0)),     # AlexNet's pooling, ceil adds a partial window
    ((1, 2, 10, 9), (3, 2), (2, 3), (1, 1)),      # the clip rule drops a window
    ((2, 2, 7, 7), (7, 7), (1, 1), (0, 0)),       # one window (global)
    ((1, 2, 6, 5), (5, 5), (3, 3), (2, 2)),       # padded AVE divisors
]


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("method", [P.MAX, P.AVE])
@pytest.mark.parametrize("shape,kernel,stride,pad", POOL_CASES)
def test_pooling_kernels_equal_the_numpy_plan(cp, shape, kernel, stride, pad, method, train):
    r = np.random.default_rng(4)
    x = r.standard_normal(shape).astype(np.float32)
    x[0, 0, 1, 1] = np.nan              # never wins a MAX window
    x[-1, -1, :3, :] = -np.inf          # a window may have no winner: -FLT_MAX, no gradient
    x[0, 1, 2, :2] = x[0, 1, 3, :2] = 5.0   # ties: the first in row-major order wins
    dy = r.standard_normal(Pool2d(np, np.float32, method, shape, kernel, stride, pad).out_shape).astype(np.float32)
    host = Pool2d(np, np.float32, method, shape, kernel, stride, pad, train=train)
    top = np.empty(host.out_shape, np.float32)
    dx = np.empty_like(x)
    host.forward(x, top)
    host.backward(dy, dx, x)
    dev_pool = Pool2d(cp.module, np.float32, method, shape, kernel, stride, pad, train=train)
    dtop = cp.empty(host.out_shape, np.float32)
    ddx = cp.empty(shape, np.float32)
    dev_pool.forward(cp.asarray(x), dtop)
    dev_pool.backward(cp.asarray(dy), ddx, cp.asarray(x))
    if method == P.MAX:
        assert not np.isnan(dtop.get()).any()
        np.testing.assert_array_equal(dtop.get(), top)
        np.testing.assert_array_equal(dev_pool.flat_index().get(), host.flat_index(x))
        np.testing.assert_array_equal(ddx.get(), dx)
    else:
        np.testing.assert_allclose(dtop.get(), top, rtol=1e-6, atol=1e-6, equal_nan=True)
        np.testing.assert_allclose(ddx.get(), dx, rtol=1e-6, atol=1e-6)
    name = "max" if method == P.MAX else "ave"
    assert cp.launch_counts["pn_%s_pool_forward" % name] == 1
    assert cp.launch_counts["pn_%s_pool_backward" % name] == 1


def _lrn_net(shape, size, region):
    text = ('force_backward: true input: "x" input_shape { %s } '
            'layer { name: "n" type: "LRN" bottom: "x" top: "y" '
            'lrn_param { local_size: %d alpha: 0.3 beta: 0.75 k: 2 norm_region: %s } }'
            % (" ".join("dim: %d" % d for d in shape), size, region))
    return text_format.Merge(text, caffe_pb2.NetParameter())


@pytest.mark.parametrize("size,region", [(1, "ACROSS_CHANNELS"), (3, "ACROSS_CHANNELS"),
                                         (5, "ACROSS_CHANNELS"), (9, "ACROSS_CHANNELS"),
                                         (3, "WITHIN_CHANNEL")])
def test_lrn_kernels_equal_the_numpy_layer(cp, size, region):
    shape = (2, 6, 4, 3)
    r = np.random.default_rng(5)
    x = r.standard_normal(shape).astype(np.float32)
    dy = r.standard_normal(shape).astype(np.float32)
    results = []
    for gpu in (False, True):
        if gpu:
            protonet.set_mode_gpu()
        net = protonet.Net(_lrn_net(shape, size, region), caffe_pb2.TRAIN)
        net.blobs["x"].data[...] = cp.asarray(x) if gpu else x
        net.forward()
        net.blobs["y"].diff[...] = cp.asarray(dy) if gpu else dy
        net.backward()
        results.append([backend.to_host(net.blobs[k].data if k == "y" else net.blobs["x"].diff)
                        for k in ("y", "dx")])
        backend.set_mode_cpu()
    # powf and FMA contraction on a real GPU: a few ulp apart from g++ and NumPy (cp.tol)
    for cpu, gpu in zip(*results):
        np.testing.assert_allclose(gpu, cpu, **cp.tol(2e-6, 1e-6, gpu=(2e-5, 1e-5)))
    across = region == "ACROSS_CHANNELS"
    assert cp.launch_counts["pn_lrn_scale"] == int(across)
    assert cp.launch_counts["pn_lrn_backward"] == int(across)


def test_kernel_sources_are_typed_per_dtype():
    # double nets get double kernels, and the choice type follows the pooling's
    for name, dtype, ctype in itertools.product(("pn_max_pool_forward",), (np.float32, np.float64),
                                                (np.int8, np.int16, np.int32)):
        src = cuda_kernels.source(name, dtype, ctype)
        assert ("typedef %s T;" % ("float" if dtype == np.float32 else "double")) in src
        assert ("typedef %s CT;" % {np.int8: "signed char", np.int16: "short", np.int32: "int"}[ctype]) in src


def test_kernels_need_contiguous_device_arrays(cp):
    a = cp.zeros((4, 4), np.float32)
    assert cuda_kernels.supported(a)
    assert not cuda_kernels.supported(a[:, ::2])
    assert not cuda_kernels.supported(np.zeros((4, 4), np.float32))
    assert not cuda_kernels.supported(cp.zeros((4, 4), np.int32))


def test_benchmark_trains_fcn_alexnet_on_the_device_path(cp, monkeypatch):
    # benchmarks/fcn_alexnet.py --gpu 0, one iteration: every 2-d pass of the net uses a kernel
    import os
    import sys
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    monkeypatch.delitem(sys.modules, "fcn_alexnet", raising=False)
    import fcn_alexnet
    from protonet.log import ensure_handler
    level = ensure_handler().level
    try:
        row = fcn_alexnet.run_one("train", 3, 1, 1, 0, 0)
    finally:
        ensure_handler().setLevel(level)
    assert row["device"] == "gpu 0 (%s)" % cp.device_name     # "protonet fake device" on the fake
    assert row["device"].startswith("gpu 0 (")
    assert row["gpu_pool_mb"] > 200          # 57M parameters, their diffs and momentum
    assert row["ms"]["median"] > 0
    # im2col for conv1-5 and fc6 (6x6; the weight gradients reuse the columns), col2im for the
    # bottom diffs of conv2-5 and fc6, 3 pooling layers and 2 LRNs each way
    assert cp.launch_counts["pn_im2col"] == 6 and cp.launch_counts["pn_col2im"] == 5
    assert cp.launch_counts["pn_max_pool_forward"] == 3 and cp.launch_counts["pn_max_pool_backward"] == 3
    assert cp.launch_counts["pn_lrn_scale"] == 2 and cp.launch_counts["pn_lrn_backward"] == 2


def test_kernel_sources_compile(tmp_path):
    # CUDA's own front end where nvcc is installed (this project's GPU machines); elsewhere
    # g++ after fakecupy's prelude, the compile every host run of the kernels goes through
    kernels = [(name, dtype, np.int16 if "max_pool" in name else None)
               for name in cuda_kernels._SOURCES for dtype in (np.float32, np.float64)]
    if shutil.which("nvcc") is None:
        import fakecupy
        for name, dtype, ctype in kernels:
            kernel = fakecupy.RawKernel(cuda_kernels.source(name, dtype, ctype), name)
            assert callable(kernel.kernel), name      # raises with g++'s errors if it fails
        return
    jobs = []
    for name, dtype, ctype in kernels:
        src = tmp_path / ("%s_%s.cu" % (name, np.dtype(dtype).name))
        src.write_text(cuda_kernels.source(name, dtype, ctype))
        jobs.append((src, subprocess.Popen(["nvcc", "-ptx", "-arch=compute_75", str(src),
                                            "-o", str(src.with_suffix(".ptx"))],
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)))
    for src, proc in jobs:
        out = proc.communicate()[0].decode()
        assert proc.returncode == 0, "%s: %s" % (src.name, out)
        assert (".entry %s(" % src.name.rsplit("_", 1)[0]) in src.with_suffix(".ptx").read_text()


def test_in_place_lrn_on_the_device_equals_the_cpu(cp):
    # threads read their neighbours' channels: the top is written only after every scale
    text = ('force_backward: true input: "x" input_shape { dim: 2 dim: 6 dim: 3 dim: 2 } '
            'layer { name: "n" type: "LRN" bottom: "x" top: "x" lrn_param { local_size: 5 alpha: 1 beta: 0.75 k: 1 } }')
    r = np.random.default_rng(7)
    x = r.standard_normal((2, 6, 3, 2)).astype(np.float32) * 3
    dy = r.standard_normal(x.shape).astype(np.float32)
    results = []
    for gpu in (False, True):
        (protonet.set_mode_gpu if gpu else protonet.set_mode_cpu)()
        net = protonet.Net(text_format.Merge(text, caffe_pb2.NetParameter()), caffe_pb2.TRAIN)
        net.blobs["x"].set_data(x)
        net.forward()
        y = backend.to_host(net.blobs["x"].data).copy()
        net.blobs["x"].set_diff(dy)
        net.backward()
        results.append((y, backend.to_host(net.blobs["x"].diff).copy()))
        backend.set_mode_cpu()
    np.testing.assert_allclose(results[1][0], results[0][0], **cp.tol(2e-6, 1e-6, gpu=(2e-5, 1e-5)))
    np.testing.assert_allclose(results[1][1], results[0][1], **cp.tol(2e-6, 1e-6, gpu=(2e-5, 1e-5)))
    assert cp.launch_counts["pn_lrn_scale"] == 1 and cp.launch_counts["pn_lrn_backward"] == 0


def test_double_max_pooling_window_without_a_winner_keeps_minus_flt_max(cp):
    x = np.full((1, 1, 2, 4), np.nan)
    x[..., 2:] = 1.5
    host = Pool2d(np, np.float64, P.MAX, x.shape, (2, 2), (2, 2), (0, 0))
    top = np.empty(host.out_shape)
    host.forward(x, top)
    device = Pool2d(cp.module, np.float64, P.MAX, x.shape, (2, 2), (2, 2), (0, 0))
    dtop = cp.empty(host.out_shape, np.float64)
    device.forward(cp.asarray(x), dtop)
    assert top[0, 0, 0, 0] == -float(np.finfo(np.float32).max) and top[0, 0, 0, 1] == 1.5
    np.testing.assert_array_equal(dtop.get(), top)


@pytest.mark.parametrize("decay", [0.0, 5e-4])
def test_sgd_update_kernel_equals_the_numpy_passes(cp, monkeypatch, decay):
    from protonet import blas
    from protonet.solver import SGDSolver
    monkeypatch.setattr(blas, "get", lambda dtype: None)     # the CPU run: NumPy's ufunc passes, not OpenBLAS's
    text = ('force_backward: true input: "x" input_shape { dim: 4 dim: 5 } input: "t" input_shape { dim: 4 dim: 3 } '
            'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
            'inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } '
            'bias_filler { type: "constant" value: 0.2 } } } '
            'layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }')
    r = np.random.default_rng(8)
    x, t = r.standard_normal((4, 5)).astype(np.float32), r.standard_normal((4, 3)).astype(np.float32)
    weights = None
    results = []
    for gpu in (False, True):
        (protonet.set_mode_gpu if gpu else protonet.set_mode_cpu)()
        s = caffe_pb2.SolverParameter()
        text_format.Merge(text, s.net_param)
        s.base_lr, s.lr_policy, s.momentum, s.weight_decay = 0.1, "fixed", 0.9, decay
        s.max_iter, s.display, s.snapshot_after_train = 100, 0, False
        solver = SGDSolver(s)
        solver.progress = False
        solver.curve_path = None
        if weights is None:
            weights = [backend.to_host(b.data).copy() for b in solver.net.learnable_params]
        for b, v in zip(solver.net.learnable_params, weights):
            b.set_data(v)
        solver.net.blobs["x"].set_data(x)
        solver.net.blobs["t"].set_data(t)
        solver.step(4)
        results.append([backend.to_host(b.data).copy() for b in solver.net.learnable_params]
                       + [backend.to_host(h).copy() for h in solver.history])
        backend.set_mode_cpu()
    for cpu, gpu in zip(*results):
        np.testing.assert_allclose(gpu, cpu, **cp.tol(0, 0, gpu=(1e-5, 1e-6)))
    assert cp.launch_counts["pn_sgd_update"] == 4 * 2        # weight and bias, 4 steps
