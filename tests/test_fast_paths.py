"""The engine's shortcuts against the plain computations they replace.

Lazy parameter diffs (cleared by a flag, promised copies and low-rank
products), the SGD step through OpenBLAS and through chunked NumPy ufuncs,
the direct Deconvolution for huge kernels, the convolution box that skips
outputs reading only padding, windowed im2col, and MAX pooling whose choice
is computed only when a TEST-phase net asks for it.
"""
import os

import numpy as np
import pytest
from google.protobuf import text_format

import protonet

from gradcheck import build, check_gradient, make_layer
from protonet import blas as blas_module, ckernels, elementwise, layer as layer_module
from protonet.blob import Blob
from protonet.layer import TEST, TRAIN, add_product_to_diff
from protonet.layers import conv as conv_module
from protonet.layers._im2col import ColPlan
from protonet.proto import caffe_pb2
from protonet.solver import SGDSolver, get_solver


# -- Blob: lazy diffs ---------------------------------------------------------------
# The engine reads diffs through engine_diff(), which keeps the lazy forms; the public
# ``diff`` property hands the array out, and from then on nothing is deferred.
def test_clear_diff_is_a_flag_and_reads_as_zero():
    b = Blob((3, 4), dtype=np.float64)
    b.engine_diff()[...] = 7
    b.clear_diff()
    assert b._gbuf[0] == 7                      # no pass over memory yet
    np.testing.assert_array_equal(b.engine_diff(), 0)    # reading zero-fills
    b.clear_diff()
    diff, overwrite = b.grad_target()
    assert overwrite and diff.shape == (3, 4)
    diff[...] = 1                               # the caller writes every element
    diff, overwrite = b.grad_target()
    assert not overwrite
    np.testing.assert_array_equal(diff, 1)
    assert not b.diff_handed_out


def test_a_handed_out_diff_is_cleared_at_once():
    b = Blob((3, 4), dtype=np.float64)
    held = b.diff
    assert b.diff_handed_out
    held[...] = 7
    b.clear_diff()
    np.testing.assert_array_equal(held, 0)      # the memory itself, no flag
    assert b.grad_target()[1] is False          # so a layer adds to it
    held[...] = 2                               # a write through the held array counts
    np.testing.assert_array_equal(b.engine_diff(), 2)


def test_shared_diff_follows_its_owner():
    owner, sharer = Blob((2, 3), dtype=np.float64), Blob((6,), dtype=np.float64)
    sharer.share_diff(owner)
    owner.engine_diff()[...] = 5
    sharer.clear_diff()                         # clears the owner's memory
    assert owner.grad_target()[1]               # the owner may overwrite
    owner.clear_diff()
    sharer.engine_diff()[...] += 2              # a reader through the sharer sees zeros
    diff, overwrite = owner.grad_target()
    assert not overwrite
    np.testing.assert_array_equal(diff, 2)
    assert sharer.grad_target()[1] is False     # sharers never overwrite
    held = sharer.diff                          # handing out a sharer's diff hands out the owner's
    assert owner.diff_handed_out
    owner.clear_diff()
    np.testing.assert_array_equal(held, 0)


def test_deferred_copy_and_product():
    r = np.random.default_rng(0)
    b = Blob((4, 5), dtype=np.float64)
    src = r.standard_normal(20)
    b.defer_diff_copy(src)
    np.testing.assert_array_equal(b.engine_diff().reshape(-1), src)
    b.defer_diff_copy(src)
    b.clear_diff()                              # a clear cancels the copy
    np.testing.assert_array_equal(b.engine_diff(), 0)

    a, m = r.standard_normal((4, 2)), r.standard_normal((2, 5))
    b.clear_diff()
    b.defer_diff_product(a, m)
    a[...] = 0                                  # the operands were copied
    pending = b.pending_product()
    assert pending is not None and pending[0].shape == (4, 2) and pending[1].shape == (5, 2)
    expect = pending[0] @ pending[1].T
    diff, overwrite = b.grad_target()           # a second gradient adds to the product
    assert not overwrite and b.pending_product() is None
    np.testing.assert_allclose(diff, expect)
    b.defer_diff_copy(src)
    b.reshape(20)                               # a reshape takes a pending copy first
    np.testing.assert_array_equal(b.engine_diff(), src)
    assert not b.diff_handed_out

    held = b.diff                               # from now on both are carried out at once
    b.defer_diff_copy(-src)
    np.testing.assert_array_equal(held, -src)
    b.reshape(4, 5)
    b.clear_diff()
    b.defer_diff_product(r.standard_normal((4, 2)), m)
    assert b.pending_product() is None
    np.testing.assert_allclose(held.reshape(4, 5), b._product_buffers[0] @ b._product_buffers[1].T)


def test_add_product_to_diff_overwrites_defers_and_accumulates(monkeypatch):
    r = np.random.default_rng(1)
    a, m = r.standard_normal((64, 3)), r.standard_normal((3, 80))
    b = Blob((64, 80), dtype=np.float64)
    b.clear_diff()
    add_product_to_diff(b, a, m)                # small: written straight into the diff
    assert b.pending_product() is None
    np.testing.assert_allclose(b.engine_diff(), a @ m)
    add_product_to_diff(b, a, m)                # a GEMM with beta = 1 (NumPy's OpenBLAS)
    np.testing.assert_allclose(b.engine_diff(), 2 * a @ m)
    monkeypatch.setattr(blas_module, "USE_BLAS", False)
    monkeypatch.setattr(layer_module, "_ACCUMULATE_BLOCK", 100)   # several row blocks
    add_product_to_diff(b, a, m)
    np.testing.assert_allclose(b.engine_diff(), 3 * a @ m)
    g = Blob((2, 4, 5), dtype=np.float64)       # batched over groups, transposed operand
    ga, gb = r.standard_normal((2, 4, 3)), r.standard_normal((2, 5, 3))
    add_product_to_diff(g, ga, gb.transpose(0, 2, 1))
    monkeypatch.setattr(blas_module, "USE_BLAS", True)
    add_product_to_diff(g, ga, gb.transpose(0, 2, 1))
    np.testing.assert_allclose(g.engine_diff(), 2 * ga @ gb.transpose(0, 2, 1))
    monkeypatch.setattr(layer_module, "DEFER_PRODUCT_MIN", 1)
    b.clear_diff()
    add_product_to_diff(b, a, m)                # big and low-rank: promised
    assert b.pending_product() is not None
    np.testing.assert_allclose(b.engine_diff(), a @ m)
    held = b.diff
    b.clear_diff()
    add_product_to_diff(b, a, m)                # a held diff is never a promise
    assert b.pending_product() is None
    np.testing.assert_allclose(held, a @ m)


@pytest.mark.parametrize("shape", [(1, 8, 3), (13, 1, 7), (64, 27, 96), (2, 5, 40, 33), (120, 3, 96)])
def test_a_gradient_is_the_same_bits_over_a_lazy_clear_and_a_zeroed_diff(shape, monkeypatch):
    # a script that holds a diff turns the overwrite into an addition to zeros:
    # the same GEMM kernel must run, or looking at a diff would change training
    r = np.random.default_rng(13)
    *batch, m, k, n = shape
    a = r.standard_normal(tuple(batch) + (k, m)).astype(np.float32).swapaxes(-1, -2)
    x = r.standard_normal(tuple(batch) + (k, n)).astype(np.float32)
    results = []
    for hold in (False, True, "deferred"):
        monkeypatch.setattr(layer_module, "DEFER_PRODUCT_MIN", 1 if hold == "deferred" else 1 << 20)
        blob = Blob(tuple(batch) + (m, n))
        if hold is True:
            blob.diff
        blob.engine_diff()[...] = 5             # last iteration's gradient
        blob.clear_diff()
        add_product_to_diff(blob, a, x)
        if hold == "deferred":
            assert (blob.pending_product() is not None) == (not batch and m * n >= 4 * k * (m + n))
        results.append(blob.engine_diff().copy())
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])   # a promise taken later: the same GEMM
    np.testing.assert_allclose(results[0], a @ x, rtol=1e-5, atol=1e-5)


# -- elementwise --------------------------------------------------------------------
def test_chunked_run_equals_one_pass(monkeypatch):
    monkeypatch.setattr(elementwise, "CHUNK", 7)
    r = np.random.default_rng(2)
    x, y = r.standard_normal(50).astype(np.float32), r.standard_normal(50).astype(np.float32)
    expect = x * np.float32(0.5) + y

    def fn(views, extra, scratch):
        xv, yv = views
        np.multiply(xv, extra, out=scratch[0])
        yv += scratch[0]
    elementwise.run(np, [([x, y], np.float32(0.5)), ([x[:0], y[:0]], None)], fn)
    np.testing.assert_array_equal(y, expect)


def bundled_openblas(dtype):
    """protonet.blas's binding for ``dtype``, or None where NumPy bundles no OpenBLAS.

    pip's NumPy wheels for Linux and Windows ship one (numpy.libs/); builds on Accelerate
    or MKL and distributions' packages do not, and protonet then keeps to NumPy's own
    paths. A bundled library that does not bind is an error: the fast paths would be
    lost without a word.
    """
    blas = blas_module.get(dtype)
    if blas is None:
        found = blas_module._numpy_openblas()
        assert not found, ("NumPy bundles OpenBLAS (%s) but protonet.blas could not bind "
                           "its cblas_%sgemm/axpy/axpby/scal" % (found[0], "sd"[dtype == np.float64]))
    return blas


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blas_programs_match_numpy(dtype, monkeypatch):
    blas = bundled_openblas(dtype)
    if blas is None:
        return              # NumPy bundles no OpenBLAS (checked): its callers keep to NumPy
    monkeypatch.setattr(blas_module, "CHUNK", 1000)
    r = np.random.default_rng(3)
    w, g, h = (r.standard_normal(2500).astype(dtype) for _ in range(3))
    w0, g0, h0 = w.copy(), g.copy(), h.copy()
    blas.run([("scal", 0.5, g), ("axpy", 0.1, w, g), ("axpby", 0.01, g, 0.9, h), ("axpy", -1.0, h, w)])
    g1 = g0 * 0.5 + 0.1 * w0
    h1 = 0.01 * g1 + 0.9 * h0
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(g, g1, rtol=tol, atol=tol)
    np.testing.assert_allclose(h, h1, rtol=tol, atol=tol)
    np.testing.assert_allclose(w, w0 - h1, rtol=tol, atol=tol)
    a, bt, big = (r.standard_normal(s).astype(dtype) for s in ((6, 4), (9, 4), (8, 12)))
    c = big[1:7, 2:11]                                  # row-strided output
    c0 = c.copy()
    blas.gemm(a, bt.T, c, 0.3, 0.7)
    np.testing.assert_allclose(c, 0.3 * a @ bt.T + 0.7 * c0, rtol=tol * 10, atol=tol * 10)
    other = r.standard_normal((8, 12)).astype(dtype)
    blas.gemm(other[:4, 1:7].T, other[2:6, :9], c)      # transposed, strided operands
    np.testing.assert_allclose(c, other[:4, 1:7].T @ other[2:6, :9], rtol=tol * 10, atol=tol * 10)
    with pytest.raises(ValueError):
        blas.gemm(a, bt, c)                             # shapes do not chain
    with pytest.raises(ValueError):
        blas.gemm(big[:, ::2][:6, :4], bt.T, c)         # no unit stride


# -- the SGD step, three ways -------------------------------------------------------------
NET = """
name: "tiny"
layer { name: "in" type: "Input" top: "data" top: "target"
        input_param { shape { dim: 2 dim: 3 dim: 10 dim: 10 } shape { dim: 2 dim: 5 dim: 1 dim: 1 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 8 kernel_size: 3 pad: 6 stride: 2
          weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "Convolution" bottom: "conv" top: "fc"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 5 kernel_size: 10
          weight_filler { type: "gaussian" std: 0.05 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "fc" bottom: "target" top: "loss" }
"""


def _train(steps, iter_size=1, read_diffs=False, **solver_fields):
    p = caffe_pb2.SolverParameter()
    text_format.Parse(NET, p.train_net_param)
    p.type = "SGD"
    p.base_lr, p.lr_policy, p.momentum, p.weight_decay = 0.01, "fixed", 0.9, 0.01
    p.max_iter, p.random_seed, p.iter_size, p.snapshot_after_train = 100, 7, iter_size, False
    for k, v in solver_fields.items():
        setattr(p, k, v)
    solver = get_solver(p)
    solver.progress, solver.curve_path = False, None
    r = np.random.default_rng(4)
    solver.net.blobs["data"].data[...] = r.standard_normal((2, 3, 10, 10))
    solver.net.blobs["target"].data[...] = r.standard_normal((2, 5, 1, 1))
    seen = []
    if read_diffs:
        solver.add_callback(None, lambda: seen.append(solver.net.params["fc"][0].diff.copy()))
    solver.step(steps)
    return solver, seen


@pytest.mark.parametrize("iter_size", [1, 2])
def test_sgd_step_same_through_blas_numpy_and_deferred_products(iter_size, monkeypatch):
    plain, _ = _train(4, iter_size)
    monkeypatch.setattr(blas_module, "USE_BLAS", False)
    numpy_path, _ = _train(4, iter_size)
    monkeypatch.setattr(blas_module, "USE_BLAS", True)
    monkeypatch.setattr(layer_module, "DEFER_PRODUCT_MIN", 1)
    deferred, _ = _train(4, iter_size)
    for other in (numpy_path, deferred):
        for a, b in zip(plain.net.learnable_params, other.net.learnable_params):
            np.testing.assert_allclose(b.data, a.data, rtol=1e-5, atol=1e-7)
        for a, b in zip(plain.history, other.history):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)
        # Caffe leaves the update value (the history) in the diff
        for blob, h in zip(other.net.learnable_params, other.history):
            np.testing.assert_array_equal(blob.diff, h)


def test_callbacks_see_the_gradient_of_a_deferred_product(monkeypatch):
    plain, seen_plain = _train(2, read_diffs=True)
    monkeypatch.setattr(layer_module, "DEFER_PRODUCT_MIN", 1)
    deferred, seen = _train(2, read_diffs=True)
    for a, b in zip(seen_plain, seen):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
    for a, b in zip(plain.net.learnable_params, deferred.net.learnable_params):
        np.testing.assert_allclose(b.data, a.data, rtol=1e-5, atol=1e-7)


def test_clipping_uses_the_materialized_gradient(monkeypatch):
    plain, _ = _train(3, clip_gradients=0.01)
    monkeypatch.setattr(layer_module, "DEFER_PRODUCT_MIN", 1)
    deferred, _ = _train(3, clip_gradients=0.01)
    for a, b in zip(plain.net.learnable_params, deferred.net.learnable_params):
        np.testing.assert_allclose(b.data, a.data, rtol=1e-5, atol=1e-7)
    assert isinstance(deferred, SGDSolver)


def test_the_solver_loop_keeps_the_lazy_forms_where_no_script_looks():
    # the engine's own reads (layers, clipping, the update, debug info) hand nothing out
    solver, _ = _train(2, clip_gradients=100.0, debug_info=True, display=1)
    for blob, h in zip(solver.net.learnable_params, solver.history):
        assert not blob.diff_handed_out
        assert blob._diff_fill is h                 # the update value is a promised copy
    solver.net.clear_param_diffs()
    fc = solver.net.params["fc"][0]
    assert fc._diff_fill == 0                       # the clear is a flag
    assert fc.grad_target()[1]                      # which the first gradient overwrites
    # a script that looks turns them all eager, with Caffe's values
    watched, _ = _train(2, read_diffs=True)
    fc = watched.net.params["fc"][0]
    assert fc.diff_handed_out and fc._diff_fill is None
    np.testing.assert_array_equal(fc._diff, watched.history[2])


# -- Deconvolution: direct patches -----------------------------------------------------------
DECONV_CASES = [
    ("num_output: 2 group: 2 kernel_size: 7 stride: 3", (1, 2, 2, 2)),
    ("num_output: 4 group: 2 kernel_size: 9 stride: 4 pad: 2", (2, 2, 2, 3)),
    ("num_output: 3 group: 3 kernel_h: 8 kernel_w: 5 stride_h: 3 stride_w: 2 pad_h: 1", (1, 3, 2, 2)),
    ("num_output: 2 group: 2 kernel_size: 4 stride: 5", (1, 2, 1, 3)),       # gaps between patches
]


@pytest.mark.parametrize("params,shape", DECONV_CASES)
def test_direct_deconvolution_matches_the_gemm_path(params, shape):
    text = ('name: "d" type: "Deconvolution" top: "y" convolution_param { %s '
            'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } }' % params)
    r = np.random.default_rng(5)
    x = r.standard_normal(shape)
    direct = make_layer(text)
    bottom, top = build(direct, [x])
    assert direct._direct is not None
    gemm = make_layer(text)
    gbottom, gtop = build(gemm, [x])
    gemm._direct = None
    for src, dst in zip(direct.blobs, gemm.blobs):
        dst.data[...] = src.data
    direct.forward(bottom, top)
    gemm.forward(gbottom, gtop)
    np.testing.assert_allclose(top[0].data, gtop[0].data, atol=1e-12)
    dy = r.standard_normal(top[0].shape)
    top[0].diff[...] = dy
    gtop[0].diff[...] = dy
    for lay, b, t in ((direct, bottom, top), (gemm, gbottom, gtop)):
        for p in lay.blobs:
            p.clear_diff()
        lay.backward(t, [True], b)
    np.testing.assert_allclose(bottom[0].diff, gbottom[0].diff, atol=1e-12)
    for p, q in zip(direct.blobs, gemm.blobs):
        np.testing.assert_allclose(p.diff, q.diff, atol=1e-11)
    assert check_gradient(make_layer(text), [x]) > 0


# -- Convolution: the box of outputs that see the image --------------------------------------
@pytest.mark.parametrize("params,shape", [
    ("num_output: 3 kernel_size: 3 pad: 5 stride: 2", (2, 2, 5, 6)),
    ("num_output: 4 group: 2 kernel_size: 2 pad: 4 dilation: 2", (1, 2, 4, 4)),
    ("num_output: 2 kernel_h: 3 kernel_w: 1 pad_h: 6 pad_w: 0 stride: 1", (1, 1, 3, 4)),
])
def test_convolution_box_matches_the_full_computation(params, shape, monkeypatch):
    text = ('name: "c" type: "Convolution" top: "y" convolution_param { %s '
            'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } }' % params)
    r = np.random.default_rng(6)
    x = r.standard_normal(shape)
    boxed = make_layer(text)
    bottom, top = build(boxed, [x])
    assert boxed._box is not None
    monkeypatch.setattr(conv_module, "_touching_box", lambda *a: None)
    full = make_layer(text)
    fbottom, ftop = build(full, [x])
    monkeypatch.undo()
    for src, dst in zip(boxed.blobs, full.blobs):
        dst.data[...] = src.data
    boxed.forward(bottom, top)
    full.forward(fbottom, ftop)
    np.testing.assert_allclose(top[0].data, ftop[0].data, atol=1e-12)
    dy = r.standard_normal(top[0].shape)
    for lay, b, t in ((boxed, bottom, top), (full, fbottom, ftop)):
        t[0].diff[...] = dy
        for p in lay.blobs:
            p.clear_diff()
        lay.backward(t, [True], b)
    np.testing.assert_allclose(bottom[0].diff, fbottom[0].diff, atol=1e-12)
    for p, q in zip(boxed.blobs, full.blobs):
        np.testing.assert_allclose(p.diff, q.diff, atol=1e-11)
    assert check_gradient(make_layer(text), [x]) > 0


def test_convolution_backward_twice_recomputes_a_spent_column_buffer():
    text = ('name: "c" type: "Convolution" top: "y" convolution_param { num_output: 4 kernel_size: 3 '
            'pad: 1 weight_filler { type: "gaussian" std: 0.5 } }')
    lay = make_layer(text)
    x = np.random.default_rng(7).standard_normal((1, 3, 6, 6))
    bottom, top = build(lay, [x])
    lay.forward(bottom, top)
    top[0].diff[...] = 1
    lay.blobs[0].clear_diff()
    lay.backward(top, [True], bottom)
    first_w, first_x = lay.blobs[0].diff.copy(), bottom[0].diff.copy()
    lay.blobs[0].clear_diff()
    lay.backward(top, [True], bottom)        # the column buffer now holds the col2im input
    np.testing.assert_allclose(lay.blobs[0].diff, first_w, atol=1e-12)
    np.testing.assert_allclose(bottom[0].diff, first_x, atol=1e-12)


@pytest.mark.parametrize("size,kernel,pad,stride,dilation", [
    ((9, 8), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((10, 12), (5, 3), (2, 0), (2, 3), (1, 1)),
    ((11, 11), (3, 3), (1, 1), (1, 2), (2, 1)),
    ((7,), (3,), (1,), (2,), (1,)),
])
def test_windowed_im2col_equals_the_tap_steps(size, kernel, pad, stride, dilation):
    plan = ColPlan(size, kernel, pad, stride, dilation)
    plan.windowed = True        # chosen by the padded area; both forms must agree
    img = np.random.default_rng(8).standard_normal((2, 3) + size)
    windowed = np.zeros(plan.col_shape(3, 2))
    plan.im2col(img, windowed)
    plan.windowed = False
    steps = np.zeros(plan.col_shape(3, 2))
    plan.im2col(img, steps)
    np.testing.assert_array_equal(windowed, steps)


# -- Pooling: the MAX choice of a TEST-phase net -----------------------------------------------
@pytest.mark.parametrize("params", [
    "kernel_size: 3 stride: 2", "kernel_size: 2 stride: 2 pad: 1", "kernel_size: 3 stride: 1 pad: 1",
    "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0", "kernel_size: 3 stride: 2 round_mode: FLOOR"])
def test_test_phase_max_values_equal_train_phase(params):
    x = np.random.default_rng(12).standard_normal((2, 3, 7, 9))
    x[0, 0, :3, :3] = -np.inf           # a window without a winner keeps -FLT_MAX
    x[1, 2, 2, 4] = np.nan              # NaN never wins
    tops = []
    for phase in (TRAIN, TEST):
        lay = make_layer('name: "p" type: "Pooling" top: "y" pooling_param { pool: MAX %s }' % params, phase)
        bottom, top = build(lay, [x])
        lay.forward(bottom, top)
        tops.append(top[0].data.copy())
    np.testing.assert_array_equal(tops[0], tops[1])
    assert not np.isnan(tops[1]).any()


def test_test_phase_max_pooling_computes_its_choice_when_asked():
    text = 'name: "p" type: "Pooling" top: "y" top: "mask" pooling_param { pool: MAX kernel_size: 3 stride: 2 }'
    r = np.random.default_rng(9)
    x = r.standard_normal((2, 3, 9, 8))
    results = {}
    for phase in (TRAIN, TEST):
        lay = make_layer(text, phase=phase)
        bottom, top = build(lay, [x])
        lay.forward(bottom, top)
        top[0].diff[...] = np.arange(top[0].count).reshape(top[0].shape)
        lay.backward(top, [True], bottom)
        results[phase] = (top[0].data.copy(), top[1].data.copy(), bottom[0].diff.copy())
    for a, b in zip(results[TRAIN], results[TEST]):
        np.testing.assert_array_equal(a, b)
    # without a mask top the choice is first needed by backward
    grads = []
    for phase in (TRAIN, TEST):
        lay = make_layer(text.replace(' top: "mask"', ''), phase=phase)
        bottom, top = build(lay, [x])
        lay.forward(bottom, top)
        top[0].diff[...] = 1
        lay.backward(top, [True], bottom)
        grads.append(bottom[0].diff.copy())
    np.testing.assert_array_equal(grads[0], grads[1])
    assert grads[0].sum() == top[0].count


def test_large_stride_one_plans_are_windowed():
    assert ColPlan((56, 56), (5, 5), (2, 2), (1, 1), (1, 1)).windowed
    assert not ColPlan((256, 256), (11, 11), (100, 100), (4, 4), (1, 1)).windowed   # mostly padding
    assert not ColPlan((70, 70), (63, 63), (0, 0), (32, 32), (1, 1)).windowed         # kernel > output


# -- Convolution: one GEMM per kernel row --------------------------------------------------------
ROWS_CASES = [
    ("num_output: 6 group: 2 kernel_size: 5 pad: 2", (2, 4, 9, 8)),
    ("num_output: 3 kernel_h: 5 kernel_w: 3 pad_h: 1 pad_w: 2", (1, 2, 7, 6)),
    ("num_output: 2 kernel_size: 6", (1, 3, 6, 9)),                      # a single output row
]


@pytest.mark.parametrize("phase", [TRAIN, TEST])
@pytest.mark.parametrize("params,shape", ROWS_CASES)
def test_kernel_row_convolution_matches_im2col(params, shape, phase, monkeypatch):
    # without NumPy's OpenBLAS both layers take im2col: the fallback must agree too
    bound = bundled_openblas(np.float64) is not None
    monkeypatch.setattr(conv_module._KernelRows, "MIN_POSITIONS", 1)      # small cases take the path too
    monkeypatch.setattr(conv_module._KernelRows, "MIN_COLUMN_BYTES", 0)
    monkeypatch.setattr(conv_module._KernelRows, "MIN_DEPTH_WITH_CKERNELS", 0)   # shallow ones too
    text = ('name: "c" type: "Convolution" top: "y" top: "z" convolution_param { %s '
            'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } }' % params)
    r = np.random.default_rng(10)
    x1, x2 = r.standard_normal(shape), r.standard_normal(shape)
    rows = make_layer(text, phase=phase)
    bottom, top = build(rows, [x1, x2])
    assert (rows._rows is not None) == bound
    monkeypatch.setattr(conv_module._KernelRows, "MIN_ROWS", 99)
    ref = make_layer(text, phase=phase)
    rbottom, rtop = build(ref, [x1, x2])
    assert ref._rows is None
    for src, dst in zip(rows.blobs, ref.blobs):
        dst.data[...] = src.data
    for lay, b, t in ((rows, bottom, top), (ref, rbottom, rtop)):
        b[0].data[...] = -x1                 # a first forward on other data: backward must not reuse it
        lay.forward(b, t)
        b[0].data[...] = x1
        lay.forward(b, t)
    for k in range(2):
        np.testing.assert_allclose(top[k].data, rtop[k].data, atol=1e-12)
    dys = [r.standard_normal(top[0].shape) for _ in range(2)]
    for lay, b, t in ((rows, bottom, top), (ref, rbottom, rtop)):
        for k in range(2):
            t[k].diff[...] = dys[k]
        for p in lay.blobs:
            p.clear_diff()
        lay.backward(t, [True, True], b)
    for k in range(2):
        np.testing.assert_allclose(bottom[k].diff, rbottom[k].diff, atol=1e-12)
    for p, q in zip(rows.blobs, ref.blobs):
        np.testing.assert_allclose(p.diff, q.diff, atol=1e-11)


def test_kernel_row_convolution_gradient(monkeypatch):
    bound = bundled_openblas(np.float64) is not None
    monkeypatch.setattr(conv_module._KernelRows, "MIN_POSITIONS", 1)
    monkeypatch.setattr(conv_module._KernelRows, "MIN_COLUMN_BYTES", 0)
    monkeypatch.setattr(conv_module._KernelRows, "MIN_DEPTH_WITH_CKERNELS", 0)
    text = ('name: "c" type: "Convolution" top: "y" convolution_param { num_output: 4 group: 2 kernel_size: 5 '
            'pad: 1 weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } }')
    lay = make_layer(text)
    x = np.random.default_rng(11).standard_normal((2, 2, 6, 7))
    build(lay, [x])
    assert (lay._rows is not None) == bound
    assert check_gradient(make_layer(text), [x]) > 0


def test_kernel_rows_only_for_wide_outputs(monkeypatch):
    # FCN's fc6 (6x6 kernel on 9x9 outputs) keeps im2col; AlexNet's conv2 takes the rows
    def chosen(params, shape):
        lay = make_layer('name: "c" type: "Convolution" top: "y" convolution_param { %s }' % params)
        build(lay, [np.zeros(shape)])
        return lay._rows is not None
    bound = bundled_openblas(np.float64) is not None
    assert chosen("num_output: 8 group: 2 kernel_size: 5 pad: 2", (1, 96, 56, 56)) == bound
    assert not chosen("num_output: 8 kernel_size: 6", (1, 256, 14, 14))
    assert not chosen("num_output: 8 kernel_size: 3 pad: 1", (1, 96, 56, 56))
    monkeypatch.setattr(blas_module, "USE_BLAS", False)        # no OpenBLAS: im2col
    assert not chosen("num_output: 8 group: 2 kernel_size: 5 pad: 2", (1, 96, 56, 56))


@pytest.mark.parametrize("phase", [TRAIN, TEST])
@pytest.mark.parametrize("type_,params", [
    ("Convolution", "num_output: 4 group: 2 kernel_size: 3 pad: 2"),
    ("Convolution", "num_output: 3 kernel_h: 3 kernel_w: 2 pad_h: 2 pad_w: 1 stride: 2"),
    ("Deconvolution", "num_output: 4 group: 2 kernel_size: 3 pad: 1 stride: 2"),
])
@pytest.mark.parametrize("compiled", [True, False], ids=["ckernels", "numpy"])
def test_convolution_a_few_images_at_a_time_matches_the_whole_batch(type_, params, phase, compiled, monkeypatch):
    # batch 5 in chunks of 2: two full chunks and a shorter last one
    if not compiled:
        monkeypatch.setattr(ckernels, "_load", lambda: None)
    text = ('name: "c" type: "%s" top: "y" convolution_param { %s '
            'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } }'
            % (type_, params))
    r = np.random.default_rng(11)
    x = r.standard_normal((5, 4, 6, 6))
    chunked, whole = make_layer(text, phase=phase), make_layer(text, phase=phase)
    bottom, top = build(chunked, [x])
    wbottom, wtop = build(whole, [x])
    for src, dst in zip(chunked.blobs, whole.blobs):
        dst.data[...] = src.data
    dy = r.standard_normal(top[0].shape)

    def run(lay, b, t, chunk):
        monkeypatch.setattr(conv_module, "DCOL_BYTES", 1 if chunk else 1 << 40)
        monkeypatch.setattr(conv_module, "DCOL_MIN_COLUMNS", 2 * lay.P)
        monkeypatch.setattr(conv_module, "TRAIN_KEEP_COLUMN_BYTES", 0 if chunk else 1 << 40)
        assert lay._images_per_chunk() == (2 if chunk else 5)
        b[0].data[...] = -x             # a first forward on other data: padding must stay zero
        lay.forward(b, t)
        b[0].data[...] = x
        lay.forward(b, t)
        t[0].diff[...] = dy
        for p in lay.blobs:
            p.clear_diff()
        lay.backward(t, [True], b)
    run(chunked, bottom, top, True)
    run(whole, wbottom, wtop, False)
    if type_ == "Convolution":     # TRAIN: the weight gradient redid the im2col in chunks
        assert chunked._col is None and whole._chunk_col is None
        # a buffer of its own only where the im2col leaves the padding alone (NumPy's); the
        # compiled one rewrites every column and shares one scratch between layers
        assert (chunked._chunk_col is None) == chunked._plan.writes_every_column(np, np.float64)
        assert chunked._plan.writes_every_column(np, np.float64) == (compiled or chunked._plan.windowed)
    np.testing.assert_allclose(top[0].data, wtop[0].data, atol=1e-12)
    np.testing.assert_allclose(bottom[0].diff, wbottom[0].diff, atol=1e-12)
    for p, q in zip(chunked.blobs, whole.blobs):
        np.testing.assert_allclose(p.diff, q.diff, atol=1e-11)


@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_per_image_1x1_convolution_matches_the_batched_gemm(phase, monkeypatch):
    # GoogLeNet's 1x1 layers over a batch: a GEMM per image on the planes, no transposes
    text = ('name: "c" type: "Convolution" top: "y" top: "z" convolution_param { num_output: 5 '
            'kernel_size: 1 weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } }')
    r = np.random.default_rng(12)
    x1, x2 = r.standard_normal((3, 4, 6, 7)), r.standard_normal((3, 4, 6, 7))
    monkeypatch.setattr(conv_module, "PER_IMAGE_MIN_POSITIONS", 1)
    per_image = make_layer(text, phase=phase)
    bottom, top = build(per_image, [x1, x2])
    assert per_image._per_image
    monkeypatch.setattr(conv_module, "PER_IMAGE_MIN_POSITIONS", 10 ** 9)
    batched = make_layer(text, phase=phase)
    bbottom, btop = build(batched, [x1, x2])
    assert not batched._per_image
    for src, dst in zip(per_image.blobs, batched.blobs):
        dst.data[...] = src.data
    dys = [r.standard_normal(t.shape) for t in top]
    for lay, b, t in ((per_image, bottom, top), (batched, bbottom, btop)):
        lay.forward(b, t)
        for ti, dy in zip(t, dys):
            ti.diff[...] = dy
        for p in lay.blobs:
            p.clear_diff()
        lay.backward(t, [True, True], b)
    for a, c in zip(top + bottom, btop + bbottom):
        np.testing.assert_allclose(a.data, c.data, atol=1e-12)
        np.testing.assert_allclose(a.diff, c.diff, atol=1e-12)
    for p, q in zip(per_image.blobs, batched.blobs):
        np.testing.assert_allclose(p.diff, q.diff, atol=1e-11)
    # and against plain loops: y[n] = W x[n] + b
    w, bias = per_image.blobs[0].data.reshape(5, 4), per_image.blobs[1].data
    want = np.einsum("oc,nchw->nohw", w, x1) + bias[None, :, None, None]
    np.testing.assert_allclose(top[0].data, want, atol=1e-12)


def test_per_image_1x1_convolution_gradient(monkeypatch):
    monkeypatch.setattr(conv_module, "PER_IMAGE_MIN_POSITIONS", 1)
    lay = make_layer('name: "c" type: "Convolution" top: "y" convolution_param { num_output: 3 kernel_size: 1 '
                     'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } }')
    x = np.random.default_rng(13).standard_normal((2, 4, 3, 5))
    bottom, top = build(lay, [x])
    assert lay._per_image
    assert check_gradient(lay, [x], bottom=bottom, top=top) > 0


# -- OpenBLAS's idle workers -------------------------------------------------------------------
_SPIN_PROBE = r"""
import ctypes, os, resource, sys, time
import protonet
import numpy as np
from protonet import blas
a = np.ones((512, 512), np.float32)
for _ in range(3):
    a @ a
time.sleep(0.002)
u = resource.getrusage(resource.RUSAGE_SELF)
time.sleep(0.3)                     # idle: only a spinning OpenBLAS worker burns CPU now
v = resource.getrusage(resource.RUSAGE_SELF)
threads = 0                         # NumPy's OpenBLAS threads, asked from the library itself
for path in blas._numpy_openblas():
    lib = ctypes.CDLL(path)
    for name in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads"):
        if hasattr(lib, name):
            threads = getattr(lib, name)()
            break
print(os.environ.get("OPENBLAS_THREAD_TIMEOUT"), threads, v.ru_utime + v.ru_stime - u.ru_utime - u.ru_stime)
"""


def _probe(env_extra, code=_SPIN_PROBE):
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "GOTO_THREAD_TIMEOUT")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    value, threads, cpu = out.stdout.split()
    return value, int(threads), float(cpu)


def test_openblas_workers_sleep_between_layers():
    # importing protonet before NumPy shortens OpenBLAS's spin after a GEMM from 2^28 cycles
    # (about 0.1 s, burning a core the compiled kernels need) to 2^18
    value, threads, cpu = _probe({})
    assert value == str(protonet.OPENBLAS_THREAD_TIMEOUT) == "18"
    assert cpu < 0.03
    value, threads, cpu = _probe({"OPENBLAS_THREAD_TIMEOUT": "28"})    # the user's choice stands
    assert value == "28"
    assert threads >= 1             # the probe found NumPy's OpenBLAS
    if threads > 1:                 # a worker to spin: it does, for about 0.1 s
        assert cpu > 0.04
    assert _probe({"GOTO_THREAD_TIMEOUT": "20"})[0] == "None"
    # NumPy loaded first: OpenBLAS has read its settings already, so nothing is set
    assert _probe({}, _SPIN_PROBE.replace("import protonet\n", "import numpy\nimport protonet\n"))[0] == "None"


# -- Net: a layer's reshape runs again only when its blobs moved -------------------------
RESHAPE_NET = """
name: "r"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 dim: 8 dim: 8 } shape { dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 5 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "flat" type: "Flatten" bottom: "pool" top: "flat" }
layer { name: "ip" type: "InnerProduct" bottom: "flat" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" }
"""


def _reshape_counts(net):
    counts = {}
    for layer in net.layers:
        def counted(bottom, top, _layer=layer, _reshape=layer.reshape):
            counts[_layer.name] = counts.get(_layer.name, 0) + 1
            _reshape(bottom, top)
        layer.reshape = counted
    return counts


def _reshape_net(tmp_path, batch=4):
    path = tmp_path / "r.prototxt"
    path.write_text(RESHAPE_NET)
    net = protonet.Net(str(path), TRAIN)
    rng = np.random.default_rng(3)
    for p in net.learnable_params:
        p.data[...] = rng.standard_normal(p.shape) * 0.3
    _feed(net, batch, seed=5)
    return net


def _feed(net, batch, seed):
    rng = np.random.default_rng(seed)
    net.blobs["data"].reshape(batch, 3, 8, 8)
    net.blobs["label"].reshape(batch)
    net.blobs["data"].data[...] = rng.standard_normal((batch, 3, 8, 8))
    net.blobs["label"].data[...] = rng.integers(0, 3, batch)


def _outputs(net):
    net.clear_param_diffs()     # backward adds to them, as in Caffe
    net.forward_from_to()
    net.backward_from_to()
    return {n: (net.blobs[n].data.copy(), net.blobs[n].diff.copy())
            for n in ("conv", "pool", "flat", "ip", "loss", "acc")} | \
           {"dW": net.params["ip"][0].diff.copy(), "data_diff": net.blobs["data"].diff.copy()}


def _same_outputs(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], tuple):
            for x, y in zip(a[k], b[k]):
                np.testing.assert_array_equal(x, y, err_msg=k)
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_reshape_runs_once_while_nothing_moves_and_again_after_an_input_reshape(tmp_path):
    net = _reshape_net(tmp_path)
    counts = _reshape_counts(net)
    for _ in range(3):
        net.forward_from_to()
        net.backward_from_to()
    # Input has no bottoms: it is always asked; every other layer once, on the first forward
    assert counts.pop("data") == 3
    assert counts and set(counts.values()) == {1}, counts
    counts.clear()
    _feed(net, 2, seed=6)
    got = _outputs(net)
    assert net.blobs["ip"].shape == (2, 3) and net.blobs["flat"].shape == (2, 5 * 4 * 4)
    assert counts.pop("data") == 1 and set(counts.values()) == {1}, counts
    fresh = _reshape_net(tmp_path)
    for a, b in zip(fresh.learnable_params, net.learnable_params):
        a.data[...] = b.data
    _feed(fresh, 2, seed=6)
    _same_outputs(got, _outputs(fresh))


def test_an_input_grown_and_shrunk_between_forwards_is_read_from_its_new_memory(tmp_path):
    # batch 4 -> 16 (a bigger buffer) -> 4 with no forward between: same shapes as the last
    # reshape, but the data now live elsewhere, so the layers must reshape (and re-view) again
    net = _reshape_net(tmp_path)
    _outputs(net)
    old = net.blobs["data"].data
    net.blobs["data"].reshape(16, 3, 8, 8)
    _feed(net, 4, seed=7)
    assert not np.shares_memory(old, net.blobs["data"].data)
    got = _outputs(net)
    fresh = _reshape_net(tmp_path)
    for a, b in zip(fresh.learnable_params, net.learnable_params):
        a.data[...] = b.data
    _feed(fresh, 4, seed=7)
    _same_outputs(got, _outputs(fresh))
    assert np.shares_memory(net.blobs["flat"].data, net.blobs["pool"].data)


def test_net_reshape_and_a_reshaped_top_bring_the_layer_back(tmp_path):
    net = _reshape_net(tmp_path)
    net.forward_from_to()
    counts = _reshape_counts(net)
    net.reshape()
    assert counts["ip"] == 1
    net.forward_from_to()
    assert counts["ip"] == 2            # Net.reshape() forgets what forward saw
    net.forward_from_to()
    assert counts["ip"] == 2
    net.blobs["ip"].reshape(7, 7)       # a script reshapes a top: its layer puts it back
    net.forward_from_to()
    assert counts["ip"] == 3 and net.blobs["ip"].shape == (4, 3)
    assert np.isfinite(net.blobs["loss"].data)


def test_share_data_again_keeps_the_view_and_its_version():
    src, view = Blob((2, 6)), Blob((12,))
    view.share_data(src)
    first, version = view.data, view.data_version
    view.share_data(src)
    assert view.data is first and view.data_version == version
    src.reshape(3, 6)                   # src's memory moved: the next share is a new view
    src.reshape(2, 6)
    view.share_data(src)
    assert view.data_version == version + 1 and np.shares_memory(view.data, src.data)
    view.reshape(4, 3)                  # its own shape: its own memory, and a new version
    assert view.data_version == version + 2 and not np.shares_memory(view.data, src.data)


FILTER_NET = """
name: "f"
layer { name: "data" type: "Input" top: "x" top: "sel"
        input_param { shape { dim: 5 dim: 2 } shape { dim: 5 } } }
layer { name: "filter" type: "Filter" bottom: "x" bottom: "sel" top: "y" }
layer { name: "plug" type: "Python" bottom: "y" top: "z"
        python_param { module: "reshape_counter" layer: "Counter" } }
"""

COUNTER = """
import caffe


class Counter(caffe.Layer):
    calls = 0

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        Counter.calls += 1
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 2 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        pass
"""


def test_filter_and_python_layers_reshape_on_every_forward(tmp_path):
    (tmp_path / "reshape_counter.py").write_text(COUNTER)
    path = tmp_path / "f.prototxt"
    path.write_text(FILTER_NET)
    net = protonet.Net(str(path), TEST)
    plugin = net.layers[-1]
    counter = type(getattr(plugin, "plugin", plugin))
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    net.blobs["x"].data[...] = x
    before = counter.calls
    # as many picked each time: the shapes stay, only the selector's values say which rows
    for sel in ([1, 0, 1, 0, 0], [0, 1, 0, 1, 0], [0, 0, 0, 1, 1]):
        net.blobs["sel"].data[...] = sel
        net.forward_from_to()
        keep = np.flatnonzero(sel)
        np.testing.assert_array_equal(net.blobs["y"].data, x[keep])     # the selector's values
        np.testing.assert_array_equal(net.blobs["z"].data, 2 * x[keep])
    assert counter.calls - before == 3
