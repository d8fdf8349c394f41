"""RNN, LSTM and LSTMUnit: loop-by-loop references, gradients, Caffe quirks, parity."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from parity import run_layer_case_direct
from gradcheck import build, check_gradient, make_layer
from protonet.blob import Blob
from protonet.layer import LayerError

PARITY = Path(__file__).resolve().parent / "caffe_reference" / "parity" / "layers"

FILLERS = ('weight_filler { type: "uniform" min: -0.6 max: 0.6 } '
           'bias_filler { type: "uniform" min: -0.3 max: 0.3 }')


def recurrent_layer(kind, num_output, extra=""):
    tops = ["y"]
    if "expose_hidden" in extra:
        tops += ["h_T", "c_T"][:1 if kind == "RNN" else 2]
    return make_layer('name: "r" type: "%s" %s recurrent_param { num_output: %d %s %s }'
                      % (kind, " ".join('top: "%s"' % t for t in tops), num_output, FILLERS, extra))


def lstm_unit():
    return make_layer('name: "u" type: "LSTMUnit" top: "c" top: "h"')


def sig(v):
    return 1.0 / (1.0 + math.exp(-v))


def cont_matrix(T, N):
    # Every stream starts a sequence at t = 0; stream 0 restarts at t = 2.
    cont = np.ones((T, N))
    cont[0] = 0
    cont[2, 0] = 0
    return cont


# -- scalar references: loops over time, streams and units ---------------------------
def rnn_reference(x, cont, W_xh, b_h, W_hh, W_ho, b_o, h0, xs=None, W_s=None):
    T, N = cont.shape
    H = b_h.size
    x = x.reshape(T, N, -1)
    o = np.zeros((T, N, H))
    h_prev = h0.copy()
    for t in range(T):
        h_new = np.zeros((N, H))
        for n in range(N):
            for j in range(H):
                s = b_h[j]
                s += sum(W_xh[j, d] * x[t, n, d] for d in range(x.shape[2]))
                s += sum(W_hh[j, k] * cont[t, n] * h_prev[n, k] for k in range(H))
                if xs is not None:
                    s += sum(W_s[j, d] * xs[n, d] for d in range(xs.shape[1]))
                h_new[n, j] = math.tanh(s)
        for n in range(N):
            for j in range(H):
                o[t, n, j] = math.tanh(b_o[j] + sum(W_ho[j, k] * h_new[n, k] for k in range(H)))
        h_prev = h_new
    return o, h_prev


def lstm_step_reference(c_prev, gates, cont):
    N, H = c_prev.shape
    c = np.zeros((N, H))
    h = np.zeros((N, H))
    for n in range(N):
        for j in range(H):
            i = sig(gates[n, j])
            f = sig(gates[n, H + j])
            o = sig(gates[n, 2 * H + j])
            g = math.tanh(gates[n, 3 * H + j])
            c[n, j] = cont[n] * f * c_prev[n, j] + i * g
            h[n, j] = o * math.tanh(c[n, j])
    return c, h


def lstm_reference(x, cont, W_xc, b_c, W_hc, h0, c0, xs=None, W_s=None):
    T, N = cont.shape
    G = b_c.size
    x = x.reshape(T, N, -1)
    out = []
    h_prev, c_prev = h0.copy(), c0.copy()
    for t in range(T):
        gates = np.zeros((N, G))
        for n in range(N):
            for r in range(G):
                s = b_c[r] + sum(W_xc[r, d] * x[t, n, d] for d in range(x.shape[2]))
                s += sum(W_hc[r, k] * cont[t, n] * h_prev[n, k] for k in range(h0.shape[1]))
                if xs is not None:
                    s += sum(W_s[r, d] * xs[n, d] for d in range(xs.shape[1]))
                gates[n, r] = s
        c_prev, h_prev = lstm_step_reference(c_prev, gates, cont[t])
        out.append(h_prev)
    return np.stack(out), h_prev, c_prev


# -- forward -------------------------------------------------------------------------
def test_rnn_forward_matches_loops():
    r = np.random.default_rng(0)
    T, N, H = 4, 3, 3
    x = r.standard_normal((T, N, 2, 2))      # D = 4: trailing axes are flattened
    cont = cont_matrix(T, N)
    layer = recurrent_layer("RNN", H)
    bottom, top = build(layer, [x, cont])
    assert [b.shape for b in layer.blobs] == [(H, 4), (H,), (H, H), (H, H), (H,)]
    layer.forward(bottom, top)
    p = [b.data for b in layer.blobs]
    expected, _ = rnn_reference(x, cont, *p, h0=np.zeros((N, H)))
    assert top[0].shape == (T, N, H)
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-12, atol=1e-12)


def test_rnn_forward_static_and_exposed_hidden():
    r = np.random.default_rng(1)
    T, N, H = 3, 2, 4
    x = r.standard_normal((T, N, 3))
    xs = r.standard_normal((N, 5))
    h0 = r.standard_normal((1, N, H))
    cont = np.ones((T, N))
    cont[1, 1] = 0                            # stream 0 continues from h0
    layer = recurrent_layer("RNN", H, "expose_hidden: true")
    bottom, top = build(layer, [x, cont, xs, h0], num_top=2)
    assert [b.shape for b in layer.blobs] == [(H, 3), (H,), (H, 5), (H, H), (H, H), (H,)]
    layer.forward(bottom, top)
    W_xh, b_h, W_s, W_hh, W_ho, b_o = [b.data for b in layer.blobs]
    o, hT = rnn_reference(x, cont, W_xh, b_h, W_hh, W_ho, b_o, h0[0], xs, W_s)
    np.testing.assert_allclose(top[0].data, o, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(top[1].data[0], hT, rtol=1e-12, atol=1e-12)


def test_lstm_forward_matches_loops():
    r = np.random.default_rng(2)
    T, N, H = 4, 3, 2
    x = r.standard_normal((T, N, 3))
    cont = cont_matrix(T, N)
    layer = recurrent_layer("LSTM", H)
    bottom, top = build(layer, [x, cont])
    assert [b.shape for b in layer.blobs] == [(4 * H, 3), (4 * H,), (4 * H, H)]
    layer.forward(bottom, top)
    W_xc, b_c, W_hc = [b.data for b in layer.blobs]
    z = np.zeros((N, H))
    h, _, _ = lstm_reference(x, cont, W_xc, b_c, W_hc, z, z)
    np.testing.assert_allclose(top[0].data, h, rtol=1e-12, atol=1e-12)


def test_lstm_forward_static_and_exposed_hidden():
    r = np.random.default_rng(3)
    T, N, H = 3, 2, 3
    x = r.standard_normal((T, N, 2))
    xs = r.standard_normal((N, 2, 2))
    h0 = r.standard_normal((1, N, H))
    c0 = r.standard_normal((1, N, H))
    cont = np.ones((T, N))
    cont[0, 1] = 0
    layer = recurrent_layer("LSTM", H, "expose_hidden: true")
    bottom, top = build(layer, [x, cont, xs, h0, c0], num_top=3)
    assert [b.shape for b in layer.blobs] == [(4 * H, 2), (4 * H,), (4 * H, 4), (4 * H, H)]
    layer.forward(bottom, top)
    W_xc, b_c, W_s, W_hc = [b.data for b in layer.blobs]
    h, hT, cT = lstm_reference(x, cont, W_xc, b_c, W_hc, h0[0], c0[0], xs.reshape(N, 4), W_s)
    np.testing.assert_allclose(top[0].data, h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(top[1].data[0], hT, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(top[2].data[0], cT, rtol=1e-12, atol=1e-12)


def test_lstm_unit_forward_matches_loops():
    r = np.random.default_rng(4)
    N, H = 3, 2
    c_prev = r.standard_normal((1, N, H))
    gates = r.standard_normal((1, N, 4 * H)) * 2
    cont = np.array([[0.0, 1.0, 0.5]])
    layer = lstm_unit()
    bottom, top = build(layer, [c_prev, gates, cont], num_top=2)
    layer.forward(bottom, top)
    c, h = lstm_step_reference(c_prev[0], gates[0], cont[0])
    np.testing.assert_allclose(top[0].data[0], c, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(top[1].data[0], h, rtol=1e-12, atol=1e-12)


# -- hidden state carried between forwards (no expose_hidden) -------------------------
@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_state_carries_over_between_forwards(kind):
    r = np.random.default_rng(5)
    T, N, H = 3, 3, 2
    x1, x2 = r.standard_normal((T, N, 2)), r.standard_normal((T, N, 2))
    cont = np.ones((T, N))
    cont[0, 2] = 0
    layer = recurrent_layer(kind, H)
    bottom, top = build(layer, [x1, cont])
    layer.forward(bottom, top)
    # The same net with the state exposed: h_T of the first call is h_0 of the second.
    nstates = 1 if kind == "RNN" else 2
    twin = recurrent_layer(kind, H, "expose_hidden: true")
    zeros = [np.zeros((1, N, H))] * nstates
    tb, tt = build(twin, [x1, cont] + zeros, num_top=1 + nstates)
    for a, b in zip(twin.blobs, layer.blobs):
        a.data[...] = b.data
    twin.forward(tb, tt)
    np.testing.assert_allclose(top[0].data, tt[0].data, rtol=0, atol=1e-14)
    bottom[0].data[...] = x2
    layer.forward(bottom, top)
    tb[0].data[...] = x2
    for j in range(nstates):
        tb[2 + j].data[...] = tt[1 + j].data
    twin.forward(tb, tt)
    np.testing.assert_allclose(top[0].data, tt[0].data, rtol=0, atol=1e-14)
    assert not np.allclose(top[0].data[0, :2], layer_output_from_zero(kind, layer, x2, cont)[0, :2])
    # A smaller batch keeps the first streams' state (Caffe's blob keeps its buffer prefix).
    carried = [c.copy() for c in layer._carry]
    small = [Blob((T, 2, 2), np.float64, np), Blob((T, 2), np.float64, np)]
    small[0].data[...] = x2[:, :2]
    small[1].data[...] = cont[:, :2]
    layer.reshape(small, top)
    for a, b in zip(layer._carry, carried):
        np.testing.assert_array_equal(a, b[:, :2])
    # A larger one starts from zeros.
    big = [Blob((T, 4, 2), np.float64, np), Blob((T, 4), np.float64, np)]
    layer.reshape(big, top)
    assert all(not c.any() for c in layer._carry)


def layer_output_from_zero(kind, layer, x, cont):
    fresh = recurrent_layer(kind, layer.H)
    b, t = build(fresh, [x, cont])
    for a, src in zip(fresh.blobs, layer.blobs):
        a.data[...] = src.data
    fresh.forward(b, t)
    return t[0].data.copy()


# -- gradients -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_recurrent_gradient(kind):
    r = np.random.default_rng(6)
    T, N = 3, 2
    x = r.standard_normal((T, N, 3))
    layer = recurrent_layer(kind, 3)
    assert check_gradient(layer, [x, cont_matrix(T, N)], check_bottom=[0]) > 0


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_recurrent_gradient_static_input(kind):
    r = np.random.default_rng(7)
    T, N = 3, 2
    x = r.standard_normal((T, N, 2))
    xs = r.standard_normal((N, 3))
    cont = cont_matrix(T, N)
    cont[1, 1] = 0.6                           # non-binary indicators scale the state
    layer = recurrent_layer(kind, 2)
    assert check_gradient(layer, [x, cont, xs], check_bottom=[0, 2]) > 0


def test_lstm_unit_gradient():
    r = np.random.default_rng(8)
    N, H = 4, 3
    c_prev = r.standard_normal((1, N, H))
    gates = r.standard_normal((1, N, 4 * H)) * 1.5
    cont = np.array([[1.0, 0.0, 1.0, 0.3]])
    layer = lstm_unit()
    assert check_gradient(layer, [c_prev, gates, cont], check_bottom=[0, 1]) > 0


# -- Caffe quirks ---------------------------------------------------------------------
@pytest.mark.parametrize("kind,nstates", [("RNN", 1), ("LSTM", 2)])
def test_exposed_hidden_takes_and_gives_no_gradient(kind, nstates):
    # Caffe shares only the data of h_0/c_0 and h_T/c_T with its unrolled net:
    # the initial states get no gradient and the final states' diffs are ignored.
    r = np.random.default_rng(9)
    T, N, H = 3, 2, 2
    ins = [r.standard_normal((T, N, 2)), np.ones((T, N))]
    ins += [r.standard_normal((1, N, H)) for _ in range(nstates)]
    layer = recurrent_layer(kind, H, "expose_hidden: true")
    bottom, top = build(layer, ins, num_top=1 + nstates)
    layer.forward(bottom, top)
    diffs = []
    for scale in (0.0, 1.0):
        top[0].diff[...] = 1.0
        for t in top[1:]:
            t.diff[...] = scale
        for b in bottom:
            b.diff[...] = 7.0
        for p in layer.blobs:
            p.diff[...] = 0
        layer.backward(top, [True, False] + [True] * nstates, bottom)
        diffs.append([bottom[0].diff.copy()] + [p.diff.copy() for p in layer.blobs])
        for b in bottom[2:]:
            assert not b.diff.any()
        assert (bottom[1].diff == 7.0).all()
    for a, b in zip(*diffs):
        np.testing.assert_array_equal(a, b)


def test_no_gradient_to_cont():
    assert not recurrent_layer("RNN", 2).allow_force_backward(1)
    assert recurrent_layer("LSTM", 2).allow_force_backward(0)
    unit = lstm_unit()
    assert not unit.allow_force_backward(2)
    assert unit.allow_force_backward(0) and unit.allow_force_backward(1)
    bottom, top = build(unit, [np.zeros((1, 2, 1)), np.zeros((1, 2, 4)), np.ones((1, 2))], num_top=2)
    unit.forward(bottom, top)
    with pytest.raises(LayerError, match="sequence indicators"):
        unit.backward(top, [True, True, True], bottom)


def test_arity_follows_expose_hidden():
    plain = recurrent_layer("LSTM", 2)
    assert (plain.min_bottom, plain.max_bottom, plain.exact_num_top) == (2, 3, 1)
    exposed = recurrent_layer("LSTM", 2, "expose_hidden: true")
    assert (exposed.min_bottom, exposed.max_bottom, exposed.exact_num_top) == (4, 5, 3)
    rnn = recurrent_layer("RNN", 2, "expose_hidden: true")
    assert (rnn.min_bottom, rnn.max_bottom, rnn.exact_num_top) == (3, 4, 2)


def test_configuration_errors():
    x = np.zeros((3, 2, 4))
    with pytest.raises(LayerError, match="num_output"):
        build(make_layer('name: "r" type: "RNN" top: "y"'), [x, np.ones((3, 2))])
    with pytest.raises(LayerError, match="cont"):
        build(recurrent_layer("RNN", 2), [x, np.ones((2, 3))])
    layer = recurrent_layer("LSTM", 2)
    bottom, top = build(layer, [x, np.ones((3, 2))])
    changed = [Blob((4, 2, 4), np.float64, np), Blob((4, 2), np.float64, np)]
    with pytest.raises(LayerError, match="T = 3"):
        layer.reshape(changed, top)
    with pytest.raises(LayerError, match="initial state"):
        build(recurrent_layer("RNN", 2, "expose_hidden: true"),
              [x, np.ones((3, 2)), np.zeros((1, 2, 3))], num_top=2)
    with pytest.raises(LayerError, match="gates"):
        build(lstm_unit(),
              [np.zeros((1, 2, 3)), np.zeros((1, 2, 8)), np.ones((1, 2))], num_top=2)


# -- parity with real Caffe (direct harness, float32) --------------------------------
def recurrent_cases():
    names = json.loads((PARITY.parent / "cases.json").read_text())["layers"]
    mine = {"RNN", "LSTM", "LSTMUnit"}
    return [n for n in names
            if mine & set(json.loads((PARITY / n / "meta.json").read_text())["layer_types"])]


def test_parity_cases_found():
    assert set(recurrent_cases()) >= {"rnn", "lstm", "lstm_unit"}


@pytest.mark.parametrize("name", recurrent_cases())
def test_parity(name):
    assert run_layer_case_direct(name) > 0


def test_debug_info_logs_each_step(caplog):
    layer = recurrent_layer("LSTM", 2, "debug_info: true")
    bottom, top = build(layer, [np.ones((3, 2, 2)), cont_matrix(3, 2)])
    with caplog.at_level("INFO", logger="protonet.layers.recurrent"):
        layer.forward(bottom, top)
        top[0].diff[...] = 1
        layer.backward(top, [True, False], bottom)
    steps = [r.getMessage() for r in caplog.records]
    assert sum("[Forward]" in m for m in steps) == 3 and sum("[Backward]" in m for m in steps) == 3
