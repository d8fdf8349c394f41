"""Softmax, SoftmaxWithLoss, Accuracy, ArgMax and the loss layers of protonet/layers/loss.py:
loop-by-loop references, finite-difference gradients, Caffe quirks, and parity with real Caffe."""
import json
import math

import numpy as np
import pytest
from google.protobuf import text_format

from parity import PARITY, cases, run_layer_case_direct
from gradcheck import build, check_gradient, forward, make_layer
from protonet.blob import Blob
from protonet.layer import LayerError
from protonet.proto import caffe_pb2

FLT_MIN = float(np.finfo(np.float32).tiny)

MY_TYPES = {"Softmax", "SoftmaxWithLoss", "Accuracy", "ArgMax", "EuclideanLoss",
            "SigmoidCrossEntropyLoss", "HingeLoss", "InfogainLoss", "MultinomialLogisticLoss",
            "ContrastiveLoss"}


def run(layer, arrays, num_top=None, loss_weight=None):
    """setup + reshape + forward in float64; returns (bottom, top)."""
    bottom, top = build(layer, arrays, num_top)
    forward(layer, bottom, top)
    if loss_weight is not None:
        top[0].diff[...] = loss_weight
    return bottom, top


def backward(layer, bottom, top, prop=None):
    prop = [True] + [False] * (len(bottom) - 1) if prop is None else prop
    for b in bottom:
        b.diff[...] = np.nan
    layer.backward(top, prop, bottom)
    return [b.diff.copy() for b in bottom]


def scores_labels(rng, n, c, h=None, w=None, ignore=None, frac=0.25):
    shape = (n, c) if h is None else (n, c, h, w)
    x = rng.standard_normal(shape) * 2
    lshape = (n,) if h is None else (n, 1, h, w)
    lab = rng.integers(0, c, lshape).astype(np.float64)
    if ignore is not None:
        lab[rng.random(lshape) < frac] = ignore
    return x, lab


def softmax_ref(x, axis):
    """Softmax by explicit loops over every position off the axis."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    out = np.empty_like(x)
    for pos in np.ndindex(x.shape[:-1]):
        row = [math.exp(v) for v in x[pos]]
        s = sum(row)
        out[pos] = [r / s for r in row]
    return np.moveaxis(out, -1, axis)


# -- Softmax --------------------------------------------------------------------------
@pytest.mark.parametrize("shape,axis", [((2, 5, 3, 4), 1), ((2, 3, 6), 2), ((3, 4, 2), -1),
                                        ((4, 3), 0)])
def test_softmax_forward(shape, axis):
    x = np.random.default_rng(1).standard_normal(shape) * 3
    layer = make_layer('name: "s" type: "Softmax" top: "y" softmax_param { axis: %d }' % axis)
    _, top = run(layer, [x])
    np.testing.assert_allclose(top[0].data, softmax_ref(x, axis), rtol=1e-12, atol=1e-15)


def test_softmax_large_scores_do_not_overflow():
    layer = make_layer('name: "s" type: "Softmax" top: "y"')
    _, top = run(layer, [np.array([[1000.0, 1000.0, -1000.0]])])
    np.testing.assert_allclose(top[0].data, [[0.5, 0.5, 0.0]])


@pytest.mark.parametrize("axis", [1, 2])
def test_softmax_gradient(axis):
    x = np.random.default_rng(2).standard_normal((2, 3, 4))
    layer = make_layer('name: "s" type: "Softmax" top: "y" softmax_param { axis: %d }' % axis)
    assert check_gradient(layer, [x]) > 0


def test_softmax_in_place():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 3))
    dy = rng.standard_normal(x.shape)
    ref = make_layer('name: "s" type: "Softmax" top: "y"')
    b, t = run(ref, [x])
    t[0].diff[...] = dy
    ref.backward(t, [True], b)
    layer = make_layer('name: "s" type: "Softmax" top: "y"')
    blob = Blob(x.shape, dtype=np.float64, xp=np)
    blob.data[...] = x
    layer.setup([blob], [blob])
    layer.reshape([blob], [blob])
    layer.forward([blob], [blob])
    np.testing.assert_allclose(blob.data, t[0].data, rtol=1e-14)
    blob.diff[...] = dy
    layer.backward([blob], [True], [blob])
    np.testing.assert_allclose(blob.diff, b[0].diff, rtol=1e-12, atol=1e-15)


# -- SoftmaxWithLoss ------------------------------------------------------------------
def softmax_positions(x, lab, axis):
    """Softmax probabilities as (outer, C, inner) and the labels as (outer, inner)."""
    outer = int(np.prod(x.shape[:axis]))
    inner = int(np.prod(x.shape[axis + 1:]))
    return softmax_ref(x, axis).reshape(outer, x.shape[axis], inner), lab.reshape(outer, inner)


def swl_reference(x, lab, ignore, mode, axis=1):
    """Loss and gradient by loops over every (outer, inner) position."""
    p3, lab2 = softmax_positions(x, lab, axis)
    outer, c, inner = p3.shape
    loss, count = 0.0, 0
    grad = p3.copy()
    for o in range(outer):
        for i in range(inner):
            lv = int(lab2[o, i])
            if ignore is not None and lv == ignore:
                grad[o, :, i] = 0
                continue
            loss -= math.log(max(p3[o, lv, i], FLT_MIN))
            grad[o, lv, i] -= 1
            count += 1
    norm = {"FULL": outer * inner, "VALID": count, "BATCH_SIZE": outer, "NONE": 1}[mode]
    norm = max(norm, 1)
    return loss / norm, grad.reshape(x.shape) / norm


@pytest.mark.parametrize("loss_param,mode", [
    ("ignore_label: 255 normalization: FULL", "FULL"),
    ("ignore_label: 255 normalization: VALID", "VALID"),
    ("ignore_label: 255 normalization: BATCH_SIZE", "BATCH_SIZE"),
    ("ignore_label: 255 normalization: NONE", "NONE"),
    ("ignore_label: 255", "VALID"),                     # proto default
    ("ignore_label: 255 normalize: true", "VALID"),
    ("ignore_label: 255 normalize: false", "BATCH_SIZE"),
    # Caffe: an explicit normalization wins over the legacy bool.
    ("ignore_label: 255 normalize: false normalization: FULL", "FULL"),
    ("normalization: VALID", "VALID"),
])
def test_softmax_loss_forward_backward(loss_param, mode):
    rng = np.random.default_rng(4)
    ignore = 255 if "ignore_label" in loss_param else None
    x, lab = scores_labels(rng, 2, 4, 3, 5, ignore=ignore)
    layer = make_layer('name: "l" type: "SoftmaxWithLoss" top: "loss" loss_param { %s }' % loss_param)
    bottom, top = run(layer, [x, lab], loss_weight=0.7)
    loss, grad = swl_reference(x, lab, ignore, mode)
    np.testing.assert_allclose(top[0].data, loss, rtol=1e-12)
    dx, dlab = backward(layer, bottom, top)
    np.testing.assert_allclose(dx, 0.7 * grad, rtol=1e-12, atol=1e-16)
    assert np.isnan(dlab).all()          # labels untouched


def test_softmax_loss_other_axis_and_prob_top():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 2, 5))
    lab = rng.integers(0, 5, (3, 2)).astype(float)
    layer = make_layer('name: "l" type: "SoftmaxWithLoss" top: "loss" top: "prob" '
                       'softmax_param { axis: 2 }')
    bottom, top = run(layer, [x, lab], loss_weight=1.0)
    loss, grad = swl_reference(x, lab, None, "VALID", axis=2)
    np.testing.assert_allclose(top[0].data, loss, rtol=1e-12)
    np.testing.assert_allclose(top[1].data, softmax_ref(x, 2), rtol=1e-12)
    np.testing.assert_allclose(backward(layer, bottom, top)[0], grad, rtol=1e-12, atol=1e-16)


def test_softmax_loss_all_ignored_gives_zero():
    x = np.random.default_rng(6).standard_normal((1, 3, 2, 2))
    lab = np.full((1, 1, 2, 2), 255.0)
    layer = make_layer('name: "l" type: "SoftmaxWithLoss" top: "loss" loss_param { ignore_label: 255 }')
    bottom, top = run(layer, [x, lab], loss_weight=1.0)
    assert top[0].data == 0
    assert (backward(layer, bottom, top)[0] == 0).all()


def test_softmax_loss_clamps_at_flt_min():
    x = np.array([[0.0, -1000.0]])
    layer = make_layer('name: "l" type: "SoftmaxWithLoss" top: "loss"')
    _, top = run(layer, [x, np.array([1.0])])
    np.testing.assert_allclose(top[0].data, -math.log(FLT_MIN))


@pytest.mark.parametrize("loss_param", ["ignore_label: 2 normalization: VALID",
                                        "normalization: FULL", "normalize: false"])
def test_softmax_loss_gradient(loss_param):
    rng = np.random.default_rng(7)
    x, lab = scores_labels(rng, 2, 3, 2, 3)
    lab[0, 0, 0, :2] = 2
    layer = make_layer('name: "l" type: "SoftmaxWithLoss" top: "loss" loss_param { %s }' % loss_param)
    assert check_gradient(layer, [x, lab], check_bottom=[0]) > 0


def test_softmax_loss_refuses_label_gradient_and_bad_shapes():
    rng = np.random.default_rng(8)
    x, lab = scores_labels(rng, 2, 3, 2, 2)
    layer = make_layer('name: "l" type: "SoftmaxWithLoss" top: "loss"')
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)
    bottom, top = run(layer, [x, lab], loss_weight=1.0)
    with pytest.raises(LayerError, match="label"):
        layer.backward(top, [True, True], bottom)
    with pytest.raises(LayerError, match="number of labels"):
        run(make_layer('name: "l" type: "SoftmaxWithLoss" top: "loss"'), [x, lab[:, :, :1]])
    bad = lab.copy()
    bad[0, 0, 0, 0] = 3
    with pytest.raises(LayerError, match="out of range"):
        run(make_layer('name: "l" type: "SoftmaxWithLoss" top: "loss"'), [x, bad])


def test_softmax_loss_reshapes_between_calls():
    rng = np.random.default_rng(9)
    layer = make_layer('name: "l" type: "SoftmaxWithLoss" top: "loss"')
    x, lab = scores_labels(rng, 1, 2, 4, 4)
    bottom, top = run(layer, [x, lab])
    x2, lab2 = scores_labels(rng, 2, 2, 3, 5)
    for b, a in zip(bottom, (x2, lab2)):
        b.reshape(a.shape)
        b.data[...] = a
    forward(layer, bottom, top)
    np.testing.assert_allclose(top[0].data, swl_reference(x2, lab2, None, "VALID")[0], rtol=1e-12)


# -- Accuracy -------------------------------------------------------------------------
def accuracy_reference(x, lab, top_k, ignore, axis=1):
    outer = int(np.prod(x.shape[:axis]))
    c = x.shape[axis]
    inner = int(np.prod(x.shape[axis + 1:]))
    x3 = x.reshape(outer, c, inner)
    lab2 = lab.reshape(outer, inner)
    hits, count = 0, 0
    nums, good = [0] * c, [0] * c
    for o in range(outer):
        for i in range(inner):
            lv = int(lab2[o, i])
            if ignore is not None and lv == ignore:
                continue
            others_ge = sum(1 for k in range(c) if k != lv and x3[o, k, i] >= x3[o, lv, i])
            nums[lv] += 1
            count += 1
            if others_ge < top_k:
                hits += 1
                good[lv] += 1
    acc = hits / count if count else 0.0
    return acc, [g / n if n else 0.0 for g, n in zip(good, nums)]


@pytest.mark.parametrize("param", ["", "top_k: 3", "ignore_label: 1", "top_k: 2 ignore_label: 0"])
def test_accuracy_forward(param):
    rng = np.random.default_rng(10)
    x, lab = scores_labels(rng, 3, 5, 2, 3)
    x = np.round(x)                          # plenty of ties: Caffe counts them against the hit
    layer = make_layer('name: "a" type: "Accuracy" top: "acc" top: "pc" accuracy_param { %s }' % param)
    _, top = run(layer, [x, lab])
    p = caffe_pb2.AccuracyParameter()
    text_format.Parse(param, p)
    acc, per_class = accuracy_reference(x, lab, p.top_k,
                                        p.ignore_label if p.HasField("ignore_label") else None)
    np.testing.assert_allclose(top[0].data, acc, rtol=1e-15)
    np.testing.assert_allclose(top[1].data, per_class, rtol=1e-15)


def test_accuracy_tie_counts_against_true_class():
    layer = make_layer('name: "a" type: "Accuracy" top: "acc"')
    _, top = run(layer, [np.array([[1.0, 1.0, 0.0], [2.0, 1.0, 1.0]]), np.array([0.0, 0.0])])
    assert top[0].data == 0.5


def test_accuracy_axis_and_absent_class():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 3, 4))
    # axis 2: 4 classes, labels over (2, 3); class 3 never appears -> per-class 0
    lab = rng.integers(0, 3, (2, 3)).astype(float)
    layer = make_layer('name: "a" type: "Accuracy" top: "acc" top: "pc" accuracy_param { axis: 2 }')
    _, top = run(layer, [x, lab])
    acc, per_class = accuracy_reference(x, lab, 1, None, axis=2)
    np.testing.assert_allclose(top[0].data, acc)
    np.testing.assert_allclose(top[1].data, per_class)
    assert top[1].data[3] == 0


def test_accuracy_all_ignored_and_errors():
    layer = make_layer('name: "a" type: "Accuracy" top: "acc" accuracy_param { ignore_label: 7 }')
    bottom, top = run(layer, [np.ones((2, 3)), np.full((2,), 7.0)])
    assert top[0].data == 0
    assert not layer.allow_force_backward(0)
    with pytest.raises(LayerError, match="no backward"):
        layer.backward(top, [True, False], bottom)
    with pytest.raises(LayerError, match="top_k"):
        run(make_layer('name: "a" type: "Accuracy" top: "acc" accuracy_param { top_k: 4 }'),
            [np.ones((2, 3)), np.zeros(2)])


# -- ArgMax ---------------------------------------------------------------------------
def argmax_reference(x, top_k, out_max_val, axis=None):
    """Caffe's ranking: descending value, equal values by descending index."""
    def rank(values):
        pairs = sorted(((v, j) for j, v in enumerate(values)), reverse=True)[:top_k]
        return [j for _, j in pairs], [v for v, _ in pairs]
    if axis is None:
        n = x.shape[0]
        flat = x.reshape(n, -1)
        out = np.zeros((n, 2 if out_max_val else 1, top_k))
        for i in range(n):
            idx, val = rank(list(flat[i]))
            out[i, 0] = idx
            if out_max_val:
                out[i, 1] = val
        return out
    moved = np.moveaxis(x, axis, -1)
    out = np.zeros(moved.shape[:-1] + (top_k,))
    for pos in np.ndindex(moved.shape[:-1]):
        idx, val = rank(list(moved[pos]))
        out[pos] = val if out_max_val else idx
    return np.moveaxis(out, -1, axis)


@pytest.mark.parametrize("param,axis", [("", None), ("top_k: 3", None),
                                        ("top_k: 3 out_max_val: true", None),
                                        ("axis: 1 top_k: 2", 1), ("axis: 1", 1),
                                        ("axis: -1 top_k: 2 out_max_val: true", 3),
                                        ("axis: 0 top_k: 2", 0)])
def test_argmax_forward(param, axis):
    x = np.round(np.random.default_rng(12).standard_normal((2, 4, 3, 5)))   # ties
    layer = make_layer('name: "m" type: "ArgMax" top: "y" argmax_param { %s }' % param)
    _, top = run(layer, [x])
    p = caffe_pb2.ArgMaxParameter()
    text_format.Parse(param, p)
    ref = argmax_reference(x, p.top_k, p.out_max_val, axis)
    if axis is None:
        assert top[0].shape == ref.shape + (1,)
        np.testing.assert_array_equal(top[0].data[..., 0], ref)
    else:
        np.testing.assert_array_equal(top[0].data, ref)


def test_argmax_2d_shape_and_errors():
    layer = make_layer('name: "m" type: "ArgMax" top: "y"')
    _, top = run(layer, [np.array([[0.0, 3.0, 3.0, 1.0]])])
    assert top[0].shape == (1, 1, 1) and top[0].data.item() == 2
    with pytest.raises(LayerError, match="top_k"):
        run(make_layer('name: "m" type: "ArgMax" top: "y" argmax_param { top_k: 5 }'),
            [np.zeros((1, 4))])
    assert not layer.allow_force_backward(0)


# -- EuclideanLoss --------------------------------------------------------------------
def test_euclidean_loss():
    rng = np.random.default_rng(13)
    a = rng.standard_normal((4, 3, 2))
    b = rng.standard_normal((4, 6))
    layer = make_layer('name: "l" type: "EuclideanLoss" top: "loss"')
    bottom, top = run(layer, [a, b], loss_weight=0.5)
    ref = sum((a.reshape(4, 6)[i, j] - b[i, j]) ** 2 for i in range(4) for j in range(6)) / 8
    np.testing.assert_allclose(top[0].data, ref, rtol=1e-13)
    da, db = backward(layer, bottom, top, [True, True])
    np.testing.assert_allclose(da, 0.5 * (a - b.reshape(a.shape)) / 4, rtol=1e-13)
    np.testing.assert_allclose(db, -0.5 * (a.reshape(b.shape) - b) / 4, rtol=1e-13)
    assert layer.allow_force_backward(1)
    assert check_gradient(make_layer('name: "l" type: "EuclideanLoss" top: "loss"'), [a, b]) > 0


# -- SigmoidCrossEntropyLoss ----------------------------------------------------------
def sce_reference(x, t, ignore, mode):
    n = x.shape[0]
    xf, tf = x.reshape(-1), t.reshape(-1)
    loss, count = 0.0, 0
    grad = np.zeros_like(xf)
    for i in range(xf.size):
        if ignore is not None and int(tf[i]) == ignore:
            continue
        p = 1 / (1 + math.exp(-xf[i]))
        loss -= tf[i] * math.log(p) + (1 - tf[i]) * math.log(1 - p)
        grad[i] = p - tf[i]
        count += 1
    norm = max(1, {"FULL": xf.size, "VALID": count, "BATCH_SIZE": n, "NONE": 1}[mode])
    return loss / norm, grad.reshape(x.shape) / norm


@pytest.mark.parametrize("param,ignore,mode", [
    ("", None, "BATCH_SIZE"),                           # this layer's own default
    ("loss_param { ignore_label: -1 normalization: VALID }", -1, "VALID"),
    ("loss_param { normalize: true }", None, "VALID"),
    ("loss_param { ignore_label: -1 normalization: FULL }", -1, "FULL"),
    ("loss_param { normalization: NONE }", None, "NONE"),
])
def test_sigmoid_cross_entropy(param, ignore, mode):
    rng = np.random.default_rng(14)
    x = rng.standard_normal((3, 4, 2)) * 3
    t = rng.random((3, 4, 2))                          # soft targets are allowed
    if ignore is not None:
        t[rng.random(t.shape) < 0.3] = ignore
    layer = make_layer('name: "l" type: "SigmoidCrossEntropyLoss" top: "loss" %s' % param)
    bottom, top = run(layer, [x, t], loss_weight=1.3)
    loss, grad = sce_reference(x, t, ignore, mode)
    np.testing.assert_allclose(top[0].data, loss, rtol=1e-12)
    np.testing.assert_allclose(backward(layer, bottom, top)[0], 1.3 * grad, rtol=1e-12, atol=1e-16)
    layer = make_layer('name: "l" type: "SigmoidCrossEntropyLoss" top: "loss" %s' % param)
    assert check_gradient(layer, [x, t], check_bottom=[0]) > 0


def test_sigmoid_cross_entropy_extreme_scores_are_finite():
    layer = make_layer('name: "l" type: "SigmoidCrossEntropyLoss" top: "loss"')
    bottom, top = run(layer, [np.array([[800.0, -800.0]]), np.array([[0.0, 1.0]])], loss_weight=1.0)
    np.testing.assert_allclose(top[0].data, 1600.0)
    np.testing.assert_allclose(backward(layer, bottom, top)[0], [[1.0, -1.0]])


# -- HingeLoss ------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_loss(norm):
    rng = np.random.default_rng(15)
    x = rng.standard_normal((6, 4)) * 2
    lab = rng.integers(0, 4, 6).astype(float)
    layer = make_layer('name: "l" type: "HingeLoss" top: "loss" hinge_loss_param { norm: %s }' % norm)
    bottom, top = run(layer, [x, lab], loss_weight=0.8)
    loss = 0.0
    grad = np.zeros_like(x)
    for i in range(6):
        for j in range(4):
            s = -1.0 if j == int(lab[i]) else 1.0
            m = max(0.0, 1 + s * x[i, j])
            loss += m if norm == "L1" else m * m
            grad[i, j] = s * ((m > 0) if norm == "L1" else 2 * m)
    np.testing.assert_allclose(top[0].data, loss / 6, rtol=1e-13)
    np.testing.assert_allclose(backward(layer, bottom, top)[0], 0.8 * grad / 6, rtol=1e-13)
    layer = make_layer('name: "l" type: "HingeLoss" top: "loss" hinge_loss_param { norm: %s }' % norm)
    assert check_gradient(layer, [x, lab], check_bottom=[0], kink=-1.0, kink_range=0.01) > 0


# -- InfogainLoss ---------------------------------------------------------------------
def infogain_reference(x, lab, H, ignore, axis=1):
    p3, lab2 = softmax_positions(x, lab, axis)
    outer, c, inner = p3.shape
    loss, count = 0.0, 0
    grad = np.zeros_like(p3)
    for o in range(outer):
        for i in range(inner):
            lv = int(lab2[o, i])
            if ignore is not None and lv == ignore:
                continue
            for k in range(c):
                loss -= H[lv, k] * math.log(max(p3[o, k, i], 1e-20))
                grad[o, k, i] = p3[o, k, i] * H[lv].sum() - H[lv, k]
            count += 1
    return loss / max(count, 1), grad.reshape(x.shape) / max(count, 1)


def test_infogain_loss_from_bottom_with_ignore_and_prob():
    rng = np.random.default_rng(16)
    x, lab = scores_labels(rng, 2, 3, 2, 2, ignore=5)
    H = rng.random((3, 3))
    layer = make_layer('name: "l" type: "InfogainLoss" top: "loss" top: "prob" '
                       'loss_param { ignore_label: 5 }')
    assert [layer.allow_force_backward(i) for i in range(3)] == [True, False, False]
    bottom, top = run(layer, [x, lab, H], loss_weight=0.9)
    loss, grad = infogain_reference(x, lab, H, 5)
    np.testing.assert_allclose(top[0].data, loss, rtol=1e-12)
    np.testing.assert_allclose(top[1].data, softmax_ref(x, 1), rtol=1e-12)
    dx = backward(layer, bottom, top, [True, False, False])[0]
    np.testing.assert_allclose(dx, 0.9 * grad, rtol=1e-12, atol=1e-16)
    with pytest.raises(LayerError, match="infogain inputs"):
        layer.backward(top, [True, False, True], bottom)
    layer = make_layer('name: "l" type: "InfogainLoss" top: "loss" loss_param { ignore_label: 5 }')
    assert check_gradient(layer, [x, lab, H], check_bottom=[0]) > 0


def test_infogain_loss_from_file(tmp_path, monkeypatch):
    rng = np.random.default_rng(17)
    x = rng.standard_normal((4, 3))
    lab = rng.integers(0, 3, 4).astype(float)
    H = rng.random((3, 3)).astype(np.float32)
    proto = caffe_pb2.BlobProto(num=1, channels=1, height=3, width=3)   # legacy 4-d shape
    proto.data.extend(H.ravel().tolist())
    (tmp_path / "H.binaryproto").write_bytes(proto.SerializeToString())
    monkeypatch.chdir(tmp_path)                  # the source is relative to the working directory
    layer = make_layer('name: "l" type: "InfogainLoss" top: "loss" '
                       'infogain_loss_param { source: "H.binaryproto" }')
    bottom, top = run(layer, [x, lab], loss_weight=1.0)
    loss, grad = infogain_reference(x, lab, H.astype(float), None)
    np.testing.assert_allclose(top[0].data, loss, rtol=1e-12)
    np.testing.assert_allclose(backward(layer, bottom, top)[0], grad, rtol=1e-12, atol=1e-16)


def test_infogain_loss_errors():
    x, lab = np.zeros((2, 3)), np.zeros(2)
    with pytest.raises(LayerError, match="source"):
        run(make_layer('name: "l" type: "InfogainLoss" top: "loss"'), [x, lab])
    with pytest.raises(LayerError, match="normalize"):
        run(make_layer('name: "l" type: "InfogainLoss" top: "loss" loss_param { normalize: true }'),
            [x, lab, np.eye(3)])
    with pytest.raises(LayerError, match="3x3"):
        run(make_layer('name: "l" type: "InfogainLoss" top: "loss"'), [x, lab, np.eye(2)])
    with pytest.raises(LayerError, match="cannot read"):
        run(make_layer('name: "l" type: "InfogainLoss" top: "loss" '
                       'infogain_loss_param { source: "/nonexistent/H.binaryproto" }'), [x, lab])


# -- MultinomialLogisticLoss ----------------------------------------------------------
def test_multinomial_logistic_loss():
    rng = np.random.default_rng(18)
    p = rng.random((4, 5)) + 0.05
    p[0, :] = 0                               # clamped at 1e-20
    lab = np.array([0.0, 2.0, 4.0, 1.0])
    layer = make_layer('name: "l" type: "MultinomialLogisticLoss" top: "loss"')
    bottom, top = run(layer, [p, lab.reshape(4, 1, 1, 1)], loss_weight=0.6)
    ref = -sum(math.log(max(p[i, int(lab[i])], 1e-20)) for i in range(4)) / 4
    np.testing.assert_allclose(top[0].data, ref, rtol=1e-13)
    grad = np.zeros_like(p)
    for i in range(4):
        grad[i, int(lab[i])] = -0.6 / 4 / max(p[i, int(lab[i])], 1e-20)
    np.testing.assert_allclose(backward(layer, bottom, top)[0], grad, rtol=1e-13)
    layer = make_layer('name: "l" type: "MultinomialLogisticLoss" top: "loss"')
    assert check_gradient(layer, [p[1:], lab[1:]], check_bottom=[0], step=1e-6) > 0
    with pytest.raises(LayerError, match="labels"):
        run(make_layer('name: "l" type: "MultinomialLogisticLoss" top: "loss"'), [p, np.zeros((4, 2))])


# -- ContrastiveLoss ------------------------------------------------------------------
@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss(legacy):
    rng = np.random.default_rng(19)
    a = rng.standard_normal((6, 3, 1, 1)) * 0.5
    b = rng.standard_normal((6, 3, 1, 1)) * 0.5
    sim = np.array([1, 0, 0, 1, 0, 0.5]).reshape(6, 1, 1, 1)     # 0.5 truncates to dissimilar
    param = 'contrastive_loss_param { margin: 1.5 legacy_version: %s }' % str(legacy).lower()
    layer = make_layer('name: "l" type: "ContrastiveLoss" top: "loss" ' + param)
    assert [layer.allow_force_backward(i) for i in range(3)] == [True, True, False]
    bottom, top = run(layer, [a, b, sim], loss_weight=0.7)
    loss = 0.0
    ga = np.zeros((6, 3))
    for n in range(6):
        d = a[n].ravel() - b[n].ravel()
        dsq = float(d @ d)
        if int(sim[n].item()):
            loss += dsq
            ga[n] = d
        elif legacy:
            loss += max(1.5 - dsq, 0)
            ga[n] = -d if 1.5 - dsq > 0 else 0
        else:
            dist = math.sqrt(dsq)
            loss += max(1.5 - dist, 0) ** 2
            ga[n] = -(1.5 - dist) / (dist + 1e-4) * d if 1.5 - dist > 0 else 0
    np.testing.assert_allclose(top[0].data, loss / 12, rtol=1e-13)
    da, db, dsim = backward(layer, bottom, top, [True, True, False])
    np.testing.assert_allclose(da.reshape(6, 3), 0.7 / 6 * ga, rtol=1e-12)
    np.testing.assert_allclose(db.reshape(6, 3), -0.7 / 6 * ga, rtol=1e-12)
    assert np.isnan(dsim).all()
    layer = make_layer('name: "l" type: "ContrastiveLoss" top: "loss" ' + param)
    # The non-legacy gradient uses d + 1e-4 in the denominator (Caffe), so it is exact only
    # up to that epsilon; the legacy one is exact.
    assert check_gradient(layer, [a, b, sim], check_bottom=[0, 1],
                          threshold=1e-5 if legacy else 1e-3) > 0


# -- parity with real Caffe -------------------------------------------------------------
def my_cases():
    # without the fixtures cases() raises at collection, as in test_parity_layers.py
    names = []
    for name in cases("layers"):
        meta = json.loads((PARITY / "layers" / name / "meta.json").read_text())
        if set(meta["layer_types"]) <= MY_TYPES:
            names.append(name)
    return names


def test_parity_cases_found():
    names = set(my_cases())
    for prefix in ("softmax_", "swl_", "accuracy_", "argmax_", "euclidean_loss", "sigmoid_ce_loss",
                   "hinge_loss_", "infogain_loss_", "multinomial_logistic_loss", "contrastive_loss"):
        assert any(n.startswith(prefix) for n in names), prefix
    assert len(names) == 27


@pytest.mark.parametrize("name", my_cases())
def test_parity(name):
    run_layer_case_direct(name)
