"""A Convolution followed by an in-place ReLU: the net has the convolution apply the ReLU as it
writes its top (protonet/net.py, ``_fusable_relus``), on every path the convolution can take.

The fused forward must be invisible: the same bits in every blob as the two layers one after
the other, the same gradients after it, and no fusing where anything could see the top
between the two layers (a forward that ends at the convolution, hooks, a ReLU that is not
in place, or has a slope).
"""
import numpy as np
import pytest
from google.protobuf import text_format

import protonet
from protonet import blas as blas_module, ckernels
from protonet.layers import conv as conv_module
from protonet.layers.neuron import ReLU
from protonet.layers._winograd import Winograd
from protonet.proto import caffe_pb2

SHAPE = (3, 4, 9, 10)


def _net(conv_params, phase=protonet.TRAIN, dtype=np.float64, relu="", shape=SHAPE, extra="",
         relu_top="c"):
    text = """
    layer { name: "x" type: "Input" top: "x" input_param { shape { %s } } }
    layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
            convolution_param { %s weight_filler { type: "gaussian" std: 0.5 }
                                bias_filler { type: "gaussian" std: 0.5 } } }
    layer { name: "relu" type: "ReLU" bottom: "c" top: "%s" %s }
    layer { name: "sum" type: "Reduction" bottom: "%s" top: "s" loss_weight: 1 }
    %s
    """ % (" ".join("dim: %d" % d for d in shape), conv_params, relu_top, relu, relu_top, extra)
    param = caffe_pb2.NetParameter()
    text_format.Parse(text, param)
    return protonet.Net(param, phase, dtype=dtype)


def _relu_calls(monkeypatch):
    calls = []
    real = ReLU.forward

    def counted(self, bottom, top):
        calls.append(self.name)
        real(self, bottom, top)
    monkeypatch.setattr(ReLU, "forward", counted)
    return calls


def _fill(net, seed, nan=False):
    r = np.random.default_rng(seed)
    x = r.standard_normal(net.blobs["x"].data.shape)
    if nan:
        x[0, 0, 2, 3] = np.nan
        x[1, 2, 0, 0] = np.inf
    net.blobs["x"].data[...] = x
    return r


def _forward_backward(net, fuse):
    """Blob data and diffs, parameter diffs, after a forward (fused or not) and a backward."""
    saved = net._relu_fused
    if not fuse:
        net._relu_fused = {}
    try:
        net.forward_from_to()
        net.clear_param_diffs()
        net.backward_from_to()
    finally:
        net._relu_fused = saved
    out = {"data " + k: b.data.copy() for k, b in net.blobs.items()}
    out.update(("diff " + k, b.diff.copy()) for k, b in net.blobs.items() if k != "s")
    out.update(("param %d" % i, p.diff.copy()) for i, p in enumerate(net.learnable_params))
    return out


PATHS = {
    # the path the convolution's forward takes: (convolution_param, setup)
    "winograd": ("num_output: 5 kernel_size: 3 pad: 1",
                 lambda mp: mp.setattr(Winograd, "RULES", {3: {"forward": ((1, 1),), "data": (), "weight": ()},
                                                           5: Winograd.RULES[5]})),
    "winograd 5x5": ("num_output: 5 kernel_size: 5 pad: 2",
                     lambda mp: mp.setattr(Winograd, "RULES", {5: {"forward": ((1, 1),), "data": (), "weight": ()},
                                                               3: Winograd.RULES[3]})),
    "kernel rows": ("num_output: 6 group: 2 kernel_size: 5 pad: 1",
                    lambda mp: (mp.setattr(conv_module._KernelRows, "MIN_POSITIONS", 1),
                                mp.setattr(conv_module._KernelRows, "MIN_COLUMN_BYTES", 0),
                                mp.setattr(conv_module._KernelRows, "MIN_DEPTH_WITH_CKERNELS", 0))),
    "per image 1x1": ("num_output: 5 kernel_size: 1",
                      lambda mp: mp.setattr(conv_module, "PER_IMAGE_MIN_POSITIONS", 1)),
    "1x1 batched": ("num_output: 5 kernel_size: 1",
                    lambda mp: mp.setattr(conv_module, "PER_IMAGE_MIN_POSITIONS", 10 ** 9)),
    "chunks": ("num_output: 3 kernel_h: 3 kernel_w: 2 pad_h: 2 pad_w: 1 stride: 2",
               lambda mp: (mp.setattr(conv_module, "DCOL_BYTES", 1), mp.setattr(conv_module, "DCOL_MIN_COLUMNS", 1),
                           mp.setattr(conv_module, "TRAIN_KEEP_COLUMN_BYTES", 0))),
    "columns": ("num_output: 4 kernel_size: 3 stride: 2", lambda mp: None),
    "box": ("num_output: 3 kernel_size: 3 pad: 5 stride: 2", lambda mp: None),
    "no bias": ("num_output: 4 kernel_size: 3 stride: 2 bias_term: false", lambda mp: None),
}


def _taken(net, path):
    lay = net.layers[1]
    return {"winograd": lay._wino is not None, "winograd 5x5": lay._wino is not None,
            "kernel rows": lay._rows is not None, "per image 1x1": lay._per_image,
            "1x1 batched": lay.is_1x1 and not lay._per_image, "chunks": lay._forward_in_chunks(),
            "columns": lay._wino is None and lay._rows is None and lay._box is None,
            "box": lay._box is not None, "no bias": not lay.bias_term}[path]


@pytest.mark.parametrize("compiled", [True, False], ids=["ckernels", "numpy"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("phase", [protonet.TRAIN, protonet.TEST])
@pytest.mark.parametrize("path", sorted(PATHS))
def test_fused_forward_is_the_two_layers_bit_for_bit(path, phase, dtype, compiled, monkeypatch):
    if not compiled:
        monkeypatch.setattr(ckernels, "_load", lambda: None)
    params, setup = PATHS[path]
    setup(monkeypatch)
    net = _net(params, phase, dtype)
    assert net._relu_fused == {1: 2}
    # Winograd needs the compiled kernels and NumPy's OpenBLAS, kernel rows the OpenBLAS
    unavailable = ((path.startswith("winograd") and not ckernels.available())
                   or (path.startswith("winograd") or path == "kernel rows") and blas_module.get(dtype) is None)
    assert _taken(net, path) != unavailable
    calls = _relu_calls(monkeypatch)
    _fill(net, 1, nan=True)
    fused = _forward_backward(net, True)
    assert calls == []                          # the ReLU's own pass did not run
    plain = _forward_backward(net, False)
    assert calls == ["relu"]
    assert set(fused) == set(plain)
    for k in fused:
        assert np.array_equal(fused[k], plain[k], equal_nan=True), k
    c = fused["data c"]
    assert np.isnan(c).any() and (c == 0).any() and (c > 0).any() and not (c < 0).any()


def test_a_forward_that_stops_at_the_convolution_leaves_its_top_unrectified(monkeypatch):
    net = _net("num_output: 4 kernel_size: 3 pad: 1")
    calls = _relu_calls(monkeypatch)
    _fill(net, 2)
    net.forward_from_to(0, 1)
    raw = net.blobs["c"].data.copy()
    assert (raw < 0).any()
    net.forward_from_to(2, 3)                   # then the ReLU by itself
    assert calls == ["relu"]
    np.testing.assert_array_equal(net.blobs["c"].data, np.maximum(raw, 0))
    net.forward_from_to(0, 2)                   # a range holding both: fused
    assert calls == ["relu"]
    np.testing.assert_array_equal(net.blobs["c"].data, np.maximum(raw, 0))


def test_hooks_see_the_convolution_top_before_the_relu(monkeypatch):
    net = _net("num_output: 4 kernel_size: 3 pad: 1")
    calls = _relu_calls(monkeypatch)
    _fill(net, 3)
    seen = {}
    net.after_forward_hooks.append(lambda li: seen.setdefault(li, net.blobs["c"].data.copy()))
    net.forward_from_to()
    assert calls == ["relu"]
    assert (seen[1] < 0).any()
    np.testing.assert_array_equal(seen[2], np.maximum(seen[1], 0))


@pytest.mark.parametrize("relu,relu_top,extra", [
    ("relu_param { negative_slope: 0.1 }", "c", ""),      # a slope: not max(x, 0)
    ("", "r", ""),                                          # not in place: c keeps its own values
])
def test_no_fusing_where_the_relu_is_not_a_plain_in_place_max(relu, relu_top, extra, monkeypatch):
    net = _net("num_output: 4 kernel_size: 3 pad: 1", relu=relu, relu_top=relu_top, extra=extra)
    assert net._relu_fused == {}
    calls = _relu_calls(monkeypatch)
    _fill(net, 4)
    net.forward_from_to()
    assert calls == ["relu"]
    if relu_top == "r":
        assert (net.blobs["c"].data < 0).any()


def test_no_fusing_for_a_convolution_with_two_tops():
    text = """
    layer { name: "x" type: "Input" top: "x" top: "y" input_param { shape { dim: 1 dim: 2 dim: 5 dim: 5 }
                                                                    shape { dim: 1 dim: 2 dim: 5 dim: 5 } } }
    layer { name: "conv" type: "Convolution" bottom: "x" bottom: "y" top: "c" top: "d"
            convolution_param { num_output: 2 kernel_size: 3 } }
    layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }
    """
    param = caffe_pb2.NetParameter()
    text_format.Parse(text, param)
    assert protonet.Net(param, protonet.TEST)._relu_fused == {}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("relu", [True, False])
def test_bias_relu_kernel_is_numpy_bit_for_bit(dtype, with_bias, relu):
    if not ckernels.handles(dtype):
        pytest.skip("the compiled kernels are not built here")
    r = np.random.default_rng(5)
    y = r.standard_normal((3, 7, 1000)).astype(dtype)
    y[0, 0, :4] = [np.nan, -np.inf, np.inf, -0.0]
    bias = r.standard_normal(7).astype(dtype) if with_bias else None
    want = y.copy()
    if with_bias:
        want += bias[:, None]
    if relu:
        # Caffe's std::max(x, 0): x < 0 ? 0 : x (NaN stays, and so does -0.0)
        want = np.where(want < 0, dtype(0), want)
    got = y.copy()
    assert ckernels.bias_relu(got, bias, relu)
    assert np.array_equal(got, want, equal_nan=True)
    assert np.array_equal(np.signbit(got), np.signbit(want))
    assert not ckernels.bias_relu(y[:, :, ::2], bias, relu)     # not contiguous: the caller's NumPy


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("split", [False, True])
def test_ungroup_bias_relu_kernel_is_the_copy_then_bias_relu(monkeypatch, dtype, with_bias, relu, split):
    # the forward's copy out of the batch's product (K, N*P) into (N, K, P), with the bias and
    # the ReLU on the way: the NumPy transpose-copy, then bias_relu's values, bit for bit
    if not ckernels.handles(dtype):
        pytest.skip("the compiled kernels are not built here")
    if split:
        monkeypatch.setattr(ckernels, "MIN_SPLIT", 1)
        monkeypatch.setattr(ckernels, "_threads", 3)
    r = np.random.default_rng(6)
    N, K, P = 5, 7, 37
    product = r.standard_normal((K, N * P)).astype(dtype)
    product[0, :4] = [np.nan, -np.inf, np.inf, -0.0]
    product[3, P:P + 2] = [-0.0, 0.0]
    bias = r.standard_normal(K).astype(dtype) if with_bias else None
    want = np.ascontiguousarray(product.reshape(K, N, P).transpose(1, 0, 2))
    if with_bias:
        want += bias[:, None]
    if relu:
        want = np.where(want < 0, dtype(0), want)
    got = np.full((N, K, P), 99, dtype)
    assert ckernels.ungroup_bias_relu(product, got, bias, relu)
    assert np.array_equal(got, want, equal_nan=True)
    assert np.array_equal(np.signbit(got), np.signbit(want))
    assert not ckernels.ungroup_bias_relu(product, got[:, :, ::2], bias, relu)   # not contiguous
    with pytest.raises(ValueError, match="regroup"):
        ckernels.ungroup_bias_relu(np.ascontiguousarray(product[:, :-P]), got, bias, relu)


def test_a_chunk_the_kernel_refuses_gets_its_bias_and_relu_once(monkeypatch):
    # the chunked forward copies each chunk out with the kernel, or by NumPy and then adds the
    # bias to that chunk alone: a mix of the two must equal the plain computation
    text = """
    layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 9 dim: 3 dim: 10 dim: 10 } } }
    layer { name: "c" type: "Convolution" bottom: "x" top: "c"
            convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 1
                                weight_filler { type: "gaussian" std: 0.5 }
                                bias_filler { type: "gaussian" std: 0.5 } } }
    layer { name: "r" type: "ReLU" bottom: "c" top: "c" }
    """
    param = caffe_pb2.NetParameter()
    text_format.Parse(text, param)
    net = protonet.Net(param, protonet.TEST)
    conv = net.layers[1]
    monkeypatch.setattr(conv_module, "DCOL_BYTES", 3 * 9 * 100 * 4 * 2)    # 2 images a chunk
    monkeypatch.setattr(conv_module, "DCOL_MIN_COLUMNS", 1)
    conv._plan = type(conv._plan)(conv.img_spatial, conv.kernel, conv.pad, conv.stride, conv.dilation)
    monkeypatch.setattr(type(conv), "_shares_columns", lambda self: False)
    assert conv._forward_in_chunks() and conv._images_per_chunk() == 2
    x = np.random.default_rng(7).standard_normal((9, 3, 10, 10)).astype(np.float32)
    net.blobs["x"].data[...] = x
    w, b = conv.blobs[0].data, conv.blobs[1].data
    cols = np.lib.stride_tricks.sliding_window_view(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), (3, 3), (2, 3))
    want = np.einsum("nchwij,kcij->nkhw", cols, w) + b[None, :, None, None]
    want = np.maximum(want, 0)
    calls = []
    real = ckernels.ungroup_bias_relu

    def every_other(product, y, bias, relu):
        calls.append(y.shape[0])
        return real(product, y, bias, relu) if len(calls) % 2 else False
    monkeypatch.setattr(ckernels, "ungroup_bias_relu", every_other)
    net.forward_from_to()
    assert calls == [2, 2, 2, 2, 1]
    np.testing.assert_allclose(net.blobs["c"].data, want, rtol=1e-5, atol=1e-5)


def test_fused_training_matches_the_unfused_net(monkeypatch):
    # a few SGD steps of a small net with Winograd, rows and im2col layers, fused and not
    monkeypatch.setattr(Winograd, "RULES", {3: {"forward": ((1, 1),), "data": ((1, 1),), "weight": ((1, 1),)},
                                            5: Winograd.RULES[5]})
    text = """
    layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } } }
    layer { name: "c1" type: "Convolution" bottom: "x" top: "c1"
            convolution_param { num_output: 6 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
    layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
    layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
            convolution_param { num_output: 4 kernel_size: 3 stride: 2 weight_filler { type: "xavier" } } }
    layer { name: "r2" type: "ReLU" bottom: "c2" top: "c2" }
    layer { name: "sum" type: "Reduction" bottom: "c2" top: "s" loss_weight: 1 reduction_param { operation: SUMSQ } }
    """
    results = []
    for fuse in (True, False):
        s = caffe_pb2.SolverParameter()
        text_format.Parse(text, s.train_net_param)
        s.base_lr, s.lr_policy, s.momentum, s.max_iter, s.display = 0.01, "fixed", 0.9, 100, 0
        s.random_seed, s.snapshot_after_train = 7, False
        solver = protonet.SGDSolver(s)
        solver.progress, solver.curve_path = False, None
        assert solver.net._relu_fused == {1: 2, 3: 4}
        if not fuse:
            solver.net._relu_fused = {}
        solver.net.blobs["x"].data[...] = np.random.default_rng(8).standard_normal((2, 3, 12, 12))
        solver.step(3)
        results.append([p.data.copy() for p in solver.net.learnable_params])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
