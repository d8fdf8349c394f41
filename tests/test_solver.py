"""Solvers against closed-form least squares (as Caffe's test_gradient_based_solver):
a tiny Input -> InnerProduct -> EuclideanLoss net, the expected updates computed
independently in float64 numpy; plus lr policies, snapshots, resume, signals,
test nets, HDF5 snapshots, log lines and the training curve."""
import io
import math
import os
import re
import signal
import sys

import numpy as np
import pytest
from google.protobuf import text_format

import protonet
from logcapture import captured_log
from protonet import log as plog
from protonet.io import read_binary, read_net_binary
from protonet.proto import caffe_pb2
from protonet.solver import (NONE, SNAPSHOT, STOP, AdamSolver, SGDSolver, SignalHandler,
                             SolverError, get_solver)

N, D = 8, 3
RULES = ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"]

NET = """
name: "lsq"
layer {{ name: "data" type: "Input" top: "data" top: "targets"
        input_param {{ shape {{ dim: {n} dim: {d} }} shape {{ dim: {n} dim: 1 }} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        param {{ lr_mult: {lr0} decay_mult: {dm0} }} param {{ lr_mult: {lr1} decay_mult: {dm1} }}
        inner_product_param {{ num_output: 1
          weight_filler {{ type: "gaussian" std: 1 }} bias_filler {{ type: "gaussian" std: 1 }} }} }}
layer {{ name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "targets" top: "loss" }}
{extra}
"""

# Settings per rule, as Caffe's own solver tests use them.
RULE_SETTINGS = {
    "SGD": dict(base_lr=0.05, momentum=0.9),
    "Nesterov": dict(base_lr=0.05, momentum=0.9),
    "AdaGrad": dict(base_lr=0.1, delta=1e-7),
    "RMSProp": dict(base_lr=0.01, rms_decay=0.95, delta=1e-7),
    "AdaDelta": dict(base_lr=1.0, momentum=0.95, delta=1e-6),
    "Adam": dict(base_lr=0.05, momentum=0.9, momentum2=0.999, delta=1e-8),
}

CONFIGS = {
    "plain": {},
    "l2": dict(weight_decay=0.1),
    "l1": dict(weight_decay=0.1, regularization_type="L1"),
    "clip": dict(clip_gradients=0.05),
    "iter_size": dict(iter_size=3),
    "mults": dict(weight_decay=0.05, _mults=((1.5, 0.5), (2.0, 0.0))),
}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def net_text(mults=((1, 1), (1, 1)), extra=""):
    (lr0, dm0), (lr1, dm1) = mults
    return NET.format(n=N, d=D, lr0=lr0, dm0=dm0, lr1=lr1, dm1=dm1, extra=extra)


def solver_param(rule="SGD", mults=((1, 1), (1, 1)), extra_net="", **fields):
    p = caffe_pb2.SolverParameter()
    text_format.Parse(net_text(mults, extra_net), p.train_net_param)
    p.type = rule
    p.lr_policy = "fixed"
    p.max_iter = 10
    p.random_seed = 1701
    p.solver_mode = p.CPU
    p.snapshot_after_train = False
    for k, v in {**RULE_SETTINGS[rule], **fields}.items():
        if isinstance(v, (list, tuple)):
            getattr(p, k).extend(v)
        elif isinstance(v, dict):
            target = getattr(p, k)
            text_format.Parse(v["text"], target.add() if hasattr(target, "add") else target)
        else:
            setattr(p, k, v)
    return p


def problem(seed=0):
    r = np.random.RandomState(seed)
    X = r.randn(N, D).astype(np.float32)
    y = (X @ np.array([[1.0], [-2.0], [0.5]]) + 0.3 + 0.1 * r.randn(N, 1)).astype(np.float32)
    return X, y


def make_solver(param, seed=0):
    solver = get_solver(param)
    solver.curve_path = None
    solver.progress = False
    X, y = problem(seed)
    solver.net.blobs["data"].data[...] = X
    solver.net.blobs["targets"].data[...] = y
    return solver


def params_of(solver):
    return [np.array(b.data, dtype=np.float64) for b in solver.net.learnable_params]


def lr_at(p, it, current_step=None):
    base, gamma, power = p.base_lr, p.gamma, p.power
    policy = p.lr_policy
    if policy == "fixed":
        return base
    if policy == "step":
        return base * gamma ** (it // p.stepsize)
    if policy == "exp":
        return base * gamma ** it
    if policy == "inv":
        return base * (1 + gamma * it) ** (-power)
    if policy == "multistep":
        return base * gamma ** sum(1 for s in p.stepvalue if it >= s)
    if policy == "poly":
        return base * (1 - it / p.max_iter) ** power
    if policy == "sigmoid":
        return base / (1 + math.exp(-gamma * (it - p.stepsize)))
    raise ValueError(policy)


def reference(p, X, y, params, iters, mults=((1, 1), (1, 1))):
    """Caffe's update, written out in float64: returns params and losses per iteration."""
    X, y = X.astype(np.float64), y.astype(np.float64)
    params = [q.copy() for q in params]
    hist = [np.zeros_like(q) for q in params]
    hist2 = [np.zeros_like(q) for q in params]
    losses = []
    for it in range(iters):
        w, b = params
        r = X @ w.T + b - y
        losses.append(float((r ** 2).sum() / N / 2))
        grads = [r.T @ X / N, r.sum(axis=0) / N]
        rate = lr_at(p, it)
        if p.clip_gradients >= 0:
            norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
            if norm > p.clip_gradients:
                grads = [g * (p.clip_gradients / norm) for g in grads]
        for i, (q, g) in enumerate(zip(params, grads)):
            decay = p.weight_decay * mults[i][1]
            if p.regularization_type == "L1":
                g = g + decay * np.sign(q)
            else:
                g = g + decay * q
            lr = rate * mults[i][0]
            if p.type == "SGD":
                hist[i] = p.momentum * hist[i] + lr * g
                step = hist[i]
            elif p.type == "Nesterov":
                old = hist[i]
                hist[i] = p.momentum * hist[i] + lr * g
                step = (1 + p.momentum) * hist[i] - p.momentum * old
            elif p.type == "AdaGrad":
                hist[i] = hist[i] + g * g
                step = lr * g / (np.sqrt(hist[i]) + p.delta)
            elif p.type == "RMSProp":
                hist[i] = p.rms_decay * hist[i] + (1 - p.rms_decay) * g * g
                step = lr * g / (np.sqrt(hist[i]) + p.delta)
            elif p.type == "AdaDelta":
                hist[i] = p.momentum * hist[i] + (1 - p.momentum) * g * g
                upd = g * np.sqrt((hist2[i] + p.delta) / (hist[i] + p.delta))
                hist2[i] = p.momentum * hist2[i] + (1 - p.momentum) * upd * upd
                step = lr * upd
            elif p.type == "Adam":
                t = it + 1
                hist[i] = p.momentum * hist[i] + (1 - p.momentum) * g
                hist2[i] = p.momentum2 * hist2[i] + (1 - p.momentum2) * g * g
                corr = math.sqrt(1 - p.momentum2 ** t) / (1 - p.momentum ** t)
                step = lr * corr * hist[i] / (np.sqrt(hist2[i]) + p.delta)
            q -= step
    return params, losses


# ------------------------------------------------------------------ update rules
@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("rule", RULES)
def test_update_rule_matches_closed_form(rule, config):
    fields = dict(CONFIGS[config])
    mults = fields.pop("_mults", ((1, 1), (1, 1)))
    p = solver_param(rule, mults=mults, **fields)
    solver = make_solver(p)
    assert type(solver).type == rule
    X, y = problem()
    start = params_of(solver)
    losses = []
    solver.add_callback(None, lambda: losses.append(solver.last_loss))
    iters = 6
    solver.step(iters)
    want, want_losses = reference(solver.param, X, y, start, iters, mults)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    for got, expected in zip(params_of(solver), want):
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)
    assert solver.iter == iters
    assert len(solver.history) == len(solver.net.learnable_params) * (2 if rule in ("AdaDelta", "Adam") else 1)


def test_clip_gradients_actually_clips():
    p = solver_param("SGD", clip_gradients=0.01)
    solver = make_solver(p)
    solver.net.clear_param_diffs()
    solver.net.forward_backward()
    norm = math.sqrt(sum(float((np.asarray(b.diff, np.float64) ** 2).sum())
                         for b in solver.net.learnable_params))
    assert norm > 0.01
    solver.clip_gradients()
    clipped = math.sqrt(sum(float((np.asarray(b.diff, np.float64) ** 2).sum())
                            for b in solver.net.learnable_params))
    assert clipped == pytest.approx(0.01, rel=1e-5)


def test_solver_settings_checked():
    with pytest.raises(SolverError, match="Momentum cannot be used with AdaGrad"):
        get_solver(solver_param("AdaGrad", momentum=0.9))
    with pytest.raises(SolverError, match="rms_decay"):
        get_solver(solver_param("RMSProp", rms_decay=1.0))
    with pytest.raises(SolverError, match="unknown lr_policy 'cosine'"):
        get_solver(solver_param("SGD", lr_policy="cosine"))
    with pytest.raises(SolverError, match="unknown solver type 'Lion'.*Adam"):
        get_solver(solver_param("SGD", type="Lion"))
    with pytest.raises(SolverError, match="stepsize"):
        get_solver(solver_param("SGD", lr_policy="step"))
    with pytest.raises(SolverError, match="snapshot_prefix"):
        get_solver(solver_param("SGD", snapshot=5))


def test_legacy_solver_type():
    p = solver_param("SGD")
    p.ClearField("type")
    p.solver_type = caffe_pb2.SolverParameter.ADAM
    solver = get_solver(p)
    assert isinstance(solver, AdamSolver)


# ------------------------------------------------------------------ lr policies
POLICIES = {
    "fixed": {},
    "step": dict(gamma=0.5, stepsize=3),
    "exp": dict(gamma=0.9),
    "inv": dict(gamma=0.1, power=0.75),
    "multistep": dict(gamma=0.3, stepvalue=[2, 5, 6]),
    "poly": dict(power=2.0, max_iter=10),
    "sigmoid": dict(gamma=0.5, stepsize=4),
}


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_lr_policy(policy):
    p = solver_param("SGD", lr_policy=policy, **POLICIES[policy])
    solver = make_solver(p)
    solver.step(10)
    want = [lr_at(solver.param, it) for it in range(10)]
    np.testing.assert_allclose(solver.curve.lr, want, rtol=2e-6)
    if policy == "step":
        assert solver.current_step == 9 // 3
    if policy == "multistep":
        assert solver.current_step == 3


def test_lr_policy_sgd_reference_with_policy():
    """The whole update with a decaying lr still matches the closed form."""
    p = solver_param("SGD", lr_policy="inv", gamma=0.2, power=0.5)
    solver = make_solver(p)
    X, y = problem()
    start = params_of(solver)
    solver.step(6)
    want, _ = reference(solver.param, X, y, start, 6)
    for got, expected in zip(params_of(solver), want):
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)


# ------------------------------------------------------------------ snapshots and resume
@pytest.mark.parametrize("rule", RULES)
def test_resume_is_bit_exact(rule):
    fields = dict(lr_policy="multistep", gamma=0.5, stepvalue=[3, 7], snapshot_prefix="run",
                  weight_decay=0.01)
    straight = make_solver(solver_param(rule, **fields))
    straight.step(10)

    first = make_solver(solver_param(rule, **fields))
    first.step(5)
    model, state = first.snapshot()
    assert (model, state) == ("run_iter_5.caffemodel", "run_iter_5.solverstate")

    resumed = make_solver(solver_param(rule, **fields), seed=0)
    for b in resumed.net.learnable_params:       # prove the weights come from the snapshot
        b.data[...] = 0
    resumed.restore(state)
    assert resumed.iter == 5 and resumed.current_step == first.current_step == 1
    resumed.step(5)
    for a, b in zip(straight.net.learnable_params, resumed.net.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)
    for a, b in zip(straight.history, resumed.history):
        np.testing.assert_array_equal(a, b)


def test_snapshot_files_parse_and_load_in_opencv():
    import cv2
    p = solver_param("SGD", snapshot=4, snapshot_prefix="snaps/lsq", max_iter=4)
    os.mkdir("snaps")
    solver = make_solver(p)
    solver.solve()
    model, state = "snaps/lsq_iter_4.caffemodel", "snaps/lsq_iter_4.solverstate"
    net_param = read_net_binary(model)
    assert [l.name for l in net_param.layer] == ["data", "ip", "loss"]
    ss = read_binary(state, caffe_pb2.SolverState())
    assert ss.iter == 4 and ss.learned_net == model and ss.current_step == 0
    assert [tuple(h.shape.dim) for h in ss.history] == [(1, D), (1,)]
    np.testing.assert_array_equal(np.asarray(ss.history[0].data, np.float32).reshape(1, D),
                                  solver.history[0])

    deploy = """name: "lsq"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: %d dim: %d dim: 1 dim: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 1 } }
""" % (N, D)
    with open("deploy.prototxt", "w") as f:
        f.write(deploy)
    cvnet = cv2.dnn.readNetFromCaffe("deploy.prototxt", model)
    X, _ = problem()
    cvnet.setInput(X.reshape(N, D, 1, 1))
    out = cvnet.forward().reshape(N, 1)
    w, b = (np.asarray(t.data) for t in solver.net.learnable_params)
    np.testing.assert_allclose(out, X @ w.T + b, rtol=1e-5, atol=1e-6)


def test_snapshot_after_train_and_prefix_naming():
    p = solver_param("SGD", snapshot=4, snapshot_prefix="lsq", max_iter=6, snapshot_after_train=True)
    solver = make_solver(p)
    solver.solve()
    assert sorted(f for f in os.listdir(".") if f.startswith("lsq_iter")) == [
        "lsq_iter_4.caffemodel", "lsq_iter_4.solverstate",
        "lsq_iter_6.caffemodel", "lsq_iter_6.solverstate"]


def test_hdf5_snapshot_roundtrip():
    import h5py
    fields = dict(snapshot_prefix="h5", snapshot_format=caffe_pb2.SolverParameter.HDF5)
    straight = make_solver(solver_param("Adam", **fields))
    straight.step(6)
    first = make_solver(solver_param("Adam", **fields))
    first.step(3)
    model, state = first.snapshot()
    assert (model, state) == ("h5_iter_3.caffemodel.h5", "h5_iter_3.solverstate.h5")
    with h5py.File(model, "r") as f:
        assert sorted(f["data"]) == ["data", "ip", "loss"]
        assert f["data"]["ip"]["0"].shape == (1, D) and f["data"]["ip"]["1"].shape == (1,)
    with h5py.File(state, "r") as f:
        assert int(f["iter"][0]) == 3 and int(f["current_step"][0]) == 0
        assert f["learned_net"][()].rstrip(b"\0") == model.encode()
        assert sorted(f["history"]) == ["0", "1", "2", "3"]
    resumed = make_solver(solver_param("Adam", **fields))
    resumed.restore(state)
    resumed.step(3)
    for a, b in zip(straight.net.learnable_params, resumed.net.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)


def test_restore_rejects_wrong_history():
    first = make_solver(solver_param("SGD", snapshot_prefix="s"))
    first.step(1)
    _, state = first.snapshot()
    other = make_solver(solver_param("Adam", snapshot_prefix="s"))
    with pytest.raises(SolverError, match="Incorrect length of history blobs"):
        other.restore(state)


# ------------------------------------------------------------------ signals
def _kill_at(solver, iteration, sig):
    def cb():
        if solver.iter == iteration:
            os.kill(os.getpid(), sig)
    solver.add_callback(None, cb)


def test_sigint_stops_with_a_loadable_snapshot():
    fields = dict(snapshot_prefix="int", max_iter=10, snapshot_after_train=True)
    solver = make_solver(solver_param("SGD", **fields))
    with SignalHandler(STOP, SNAPSHOT) as handler:
        solver.action_request_function = handler
        _kill_at(solver, 3, signal.SIGINT)
        solver.solve()
    assert solver.iter == 4 and solver.requested_early_exit
    assert os.path.exists("int_iter_4.caffemodel") and os.path.exists("int_iter_4.solverstate")
    assert not [f for f in os.listdir(".") if f.startswith(".")]   # no temporary leftovers
    net_param = caffe_pb2.NetParameter()
    text_format.Parse(net_text(), net_param)
    net_param.state.phase = caffe_pb2.TEST
    net = protonet.Net(net_param)
    net.copy_from("int_iter_4.caffemodel")
    for a, b in zip(net.params["ip"], solver.net.params["ip"]):
        np.testing.assert_array_equal(a.data, b.data)
    # resume from it and finish: same weights as an uninterrupted run
    resumed = make_solver(solver_param("SGD", **fields))
    resumed.solve(resume_file="int_iter_4.solverstate")
    straight = make_solver(solver_param("SGD", **dict(fields, snapshot_after_train=False)))
    straight.solve()
    for a, b in zip(straight.net.learnable_params, resumed.net.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)


def test_sighup_snapshots_and_continues():
    solver = make_solver(solver_param("SGD", snapshot_prefix="hup", max_iter=6))
    with SignalHandler(STOP, SNAPSHOT) as handler:
        solver.action_request_function = handler
        _kill_at(solver, 2, signal.SIGHUP)
        solver.solve()
    assert solver.iter == 6 and not solver.requested_early_exit
    assert os.path.exists("hup_iter_3.caffemodel") and os.path.exists("hup_iter_3.solverstate")


def test_signal_effect_none_and_second_sigint():
    handler = SignalHandler(NONE, NONE)
    handler._handle(signal.SIGINT, None)
    assert handler() == NONE
    handler = SignalHandler(STOP, SNAPSHOT)
    handler._handle(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt):
        handler._handle(signal.SIGINT, None)
    assert handler() == STOP and handler() == NONE
    with pytest.raises(ValueError, match="invalid signal effect"):
        SignalHandler("halt")


# ------------------------------------------------------------------ nets, tests, logs
def test_test_nets_share_params_and_average_outputs():
    extra = 'layer { name: "val_only" type: "Power" bottom: "ip" top: "val_out" include { stage: "val" } }'
    p = solver_param("SGD", extra_net=extra, test_iter=[3], test_interval=2, max_iter=4,
                     test_state={"text": 'stage: "val"'})
    p.ClearField("train_net_param")
    text_format.Parse(net_text(extra=extra), p.net_param)
    solver = make_solver(p)
    assert len(solver.test_nets) == 1
    test_net = solver.test_nets[0]
    assert "val_only" in test_net.layer_names and "val_only" not in solver.net.layer_names
    assert test_net.phase == caffe_pb2.TEST and solver.net.phase == caffe_pb2.TRAIN
    # as Caffe, a test net keeps its own weights until it first tests, then shares the train net's
    for a, b in zip(test_net.params["ip"], solver.net.params["ip"]):
        assert not np.shares_memory(a.data, b.data)
    X, y = problem(1)
    test_net.blobs["data"].data[...] = X
    test_net.blobs["targets"].data[...] = y
    w0, b0 = params_of(solver)
    solver.solve()
    iters, values, weight = solver.curve.tests[(0, "loss")]
    assert iters == [0, 2, 4] and weight == 1.0
    expected0 = ((X @ w0.T + b0 - y) ** 2).sum() / N / 2
    assert values[0] == pytest.approx(expected0, rel=1e-5)
    names = [r[0] for r in solver.test_results[0]]
    assert names == ["loss"] + ["val_out"] * N     # one line per value, as Caffe prints them
    for a, b in zip(test_net.params["ip"], solver.net.params["ip"]):
        assert np.shares_memory(a.data, b.data)


def test_train_state_merges_over_the_net_state():
    extra = 'layer { name: "tr" type: "Power" bottom: "ip" top: "tr_out" include { stage: "extra" min_level: 2 } }'
    p = solver_param("SGD", extra_net=extra, train_state={"text": 'stage: "extra" level: 2'})
    solver = make_solver(p)
    assert "tr" in solver.net.layer_names
    p = solver_param("SGD", extra_net=extra, train_state={"text": 'stage: "extra"'})
    assert "tr" not in make_solver(p).net.layer_names


def test_net_resolution_errors_name_the_field(tmp_path):
    p = solver_param("SGD")
    p.ClearField("train_net_param")
    p.net = "missing.prototxt"
    with pytest.raises(SolverError, match=r"net: net file 'missing.prototxt' not found"):
        get_solver(p)
    p.ClearField("net")
    with pytest.raises(SolverError, match="must specify a train net"):
        get_solver(p)
    p = solver_param("SGD")
    p.train_net = "x.prototxt"
    with pytest.raises(SolverError, match="more than one"):
        get_solver(p)
    with pytest.raises(SolverError, match="solver file 'nope.prototxt' not found"):
        get_solver("nope.prototxt")


def test_net_file_relative_to_working_directory():
    os.mkdir("nets")
    with open("nets/lsq.prototxt", "w") as f:
        f.write(net_text())
    with open("solver.prototxt", "w") as f:
        f.write('net: "nets/lsq.prototxt"\ntype: "Nesterov"\nbase_lr: 0.01\nmomentum: 0.9\n'
                'lr_policy: "fixed"\nmax_iter: 2\nsnapshot_after_train: false\nsolver_mode: CPU\n')
    solver = SGDSolver("solver.prototxt")   # pycaffe style: the class decides the rule
    assert type(solver) is SGDSolver and solver.net.name == "lsq"
    assert type(get_solver("solver.prototxt")).type == "Nesterov"


GLOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] ")


def _logged(fn):
    with captured_log() as stream:
        fn()
    return stream.getvalue()


def test_log_lines_in_caffe_format():
    p = solver_param("SGD", display=2, max_iter=4, average_loss=3, test_iter=[1], test_interval=4,
                     snapshot_prefix="lg", snapshot_after_train=True)
    p.ClearField("train_net_param")
    text_format.Parse(net_text(), p.net_param)
    solver = make_solver(p)
    losses = []
    solver.add_callback(None, lambda: losses.append(solver.last_loss))
    text = _logged(solver.solve)
    lines = [l for l in text.splitlines() if GLOG.match(l)]
    body = [GLOG.sub("", l) for l in lines]
    assert "Solving lsq" in body and "Learning Rate Policy: fixed" in body
    it2 = [b for b in body if b.startswith("Iteration 2 (")]
    assert len(it2) == 1
    m = re.match(r"Iteration 2 \([\d.e+-]+ iter/s, [\d.e+-]+s/2 iters\), loss = ([\d.e+-]+)$", it2[0])
    assert m and float(m.group(1)) == pytest.approx(np.mean(losses[:3]), rel=1e-5)   # average_loss 3
    assert re.search(r"^    Train net output #0: loss = [\d.e+-]+ \(\* 1 = [\d.e+-]+ loss\)$", "\n".join(body), re.M)
    assert "Iteration 2, lr = 0.05" in body
    assert "Iteration 4, Testing net (#0)" in body
    assert any(re.match(r"    Test net output #0: loss = [\d.e+-]+ \(\* 1 = [\d.e+-]+ loss\)$", b) for b in body)
    assert "Snapshotting to binary proto file lg_iter_4.caffemodel" in body
    assert "Snapshotting solver state to binary proto file lg_iter_4.solverstate" in body
    assert body[-1] == "Optimization Done."


def test_debug_info_logs_layer_norms():
    solver = make_solver(solver_param("SGD", display=1, debug_info=True, max_iter=1))
    text = _logged(lambda: solver.step(1))
    assert "[Forward] Layer ip, top blob ip data:" in text
    assert "[Forward] Layer ip, param blob 0 data:" in text
    assert "[Backward] Layer ip, bottom blob data diff:" not in text   # data needs no gradient
    assert "[Backward] Layer ip, param blob 1 diff:" in text


def test_progress_bar_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    pipe = io.StringIO()
    bar = plog.ProgressBar(10, stream=pipe)
    bar.update(5, loss=0.5, lr=0.01)
    bar.close()
    assert pipe.getvalue() == ""
    tty = Tty()
    bar = plog.ProgressBar(10, stream=tty, enabled=True)
    bar.update(10, loss=0.5, lr=0.01)
    bar.close()
    assert "10/10" in tty.getvalue() and "loss 0.5" in tty.getvalue() and "lr 0.01" in tty.getvalue()
    assert plog.ProgressBar.active is None


def test_training_curve_png():
    p = solver_param("SGD", max_iter=4, test_iter=[1], test_interval=2, snapshot_prefix="cv")
    p.ClearField("train_net_param")
    text_format.Parse(net_text(), p.net_param)
    solver = get_solver(p)
    solver.progress = False
    assert solver.curve_path is None           # a library solver writes no picture, as Caffe's
    solver.draw_curve_beside_snapshots()
    assert solver.curve_path == "cv_curve.png"
    solver.solve()
    with open("cv_curve.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_without_h5py_hdf5_snapshots_are_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)      # import h5py -> ImportError
    with pytest.raises(SolverError, match="needs h5py"):
        get_solver(solver_param("SGD", snapshot_format=caffe_pb2.SolverParameter.HDF5))


def test_without_matplotlib_the_curve_is_skipped_with_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    solver = make_solver(solver_param("SGD", max_iter=2, snapshot_prefix="nm"))
    solver.curve_path = "nm_curve.png"
    text = _logged(lambda: (solver.step(2), solver.snapshot(), solver.snapshot()))
    assert text.count("matplotlib is not installed") == 1
    assert not os.path.exists("nm_curve.png")


# -- arrays kept across iterations, signals, out-of-range lr: as Caffe ---------------------
HELD_PLUGIN = '''
import caffe
import numpy as np


class Held(caffe.Layer):
    """y = w * x with one weight; keeps its diff array from setup, as Caffe's memory allows."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = 1.0
        self.held = self.blobs[0].diff

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self.held[...] += (top[0].diff * bottom[0].data).sum()
'''


def test_a_plugin_that_keeps_its_diff_array_trains_as_in_caffe(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "held_plugin.py").write_text(HELD_PLUGIN)
    p = caffe_pb2.SolverParameter()
    text_format.Parse('''
      layer { name: "x" type: "DummyData" top: "x" top: "t"
        dummy_data_param { shape { dim: 1 } shape { dim: 1 }
          data_filler { type: "constant" value: 2 } data_filler { type: "constant" value: 0 } } }
      layer { name: "w" type: "Python" bottom: "x" top: "y"
        python_param { module: "held_plugin" layer: "Held" } }
      layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }''',
                      p.train_net_param)
    p.base_lr, p.lr_policy, p.max_iter, p.solver_mode = 0.01, "fixed", 3, p.CPU
    solver = get_solver(p)
    solver.progress = False
    # loss = (2w)^2 / 2, dL/dw = 4w; plain SGD: w <- w - 0.01 * 4w = 0.96 w, each iteration
    for k in range(1, 4):
        solver.step(1)
        np.testing.assert_allclose(solver.net.params["w"][0].data, [0.96 ** k], rtol=1e-6)


@pytest.mark.parametrize("deferred_products", [False, True])
def test_callbacks_may_keep_diff_arrays(monkeypatch, deferred_products):
    if deferred_products:          # big InnerProduct gradients are promised, not written
        monkeypatch.setattr("protonet.layer.DEFER_PRODUCT_MIN", 1)
    solver = make_solver(solver_param("SGD"))
    reference = make_solver(solver_param("SGD"))
    held = [b.diff for b in solver.net.learnable_params]
    seen = []

    def on_start():
        seen.append(("start", [h.copy() for h in held]))

    def on_gradients_ready():
        seen.append(("ready", [h.copy() for h in held]))
        if solver.iter == 1:
            for h in held:
                h[...] = 0                     # a write through a kept array counts
    solver.add_callback(on_start, on_gradients_ready)
    reference.step(1)
    grads = [np.array(b.diff) for b in reference.net.learnable_params]    # the update value
    solver.step(2)
    kinds = [k for k, _ in seen]
    assert kinds == ["start", "ready", "start", "ready"]
    for h in seen[0][1] + seen[2][1]:
        assert not h.any()                     # cleared at the start, as Caffe's ClearParamDiffs
    assert all(h.any() for h in seen[1][1])    # the gradients are in the kept arrays
    # iteration 2's gradients were zeroed through the kept arrays: with momentum, the second
    # step repeats the first update value (history 0.9 * v1 + 0): w2 = w1 - 0.9 * v1
    for got, ref, v in zip(params_of(solver), params_of(reference), grads):
        np.testing.assert_allclose(got, ref - 0.9 * v, rtol=1e-5, atol=1e-7)


def test_lr_policies_out_of_range_give_caffes_values_not_exceptions():
    # sigmoid long before its step: Caffe's float exp overflows and the rate is 0
    s = make_solver(solver_param("SGD", lr_policy="sigmoid", gamma=0.1, stepsize=10000))
    assert s.get_learning_rate() == 0.0
    s.iter = 10000
    assert s.get_learning_rate() == pytest.approx(0.05 / 2)
    # exp with gamma > 1 overflows to inf, as pow does
    s = make_solver(solver_param("SGD", lr_policy="exp", gamma=10.0))
    s.iter = 400
    assert s.get_learning_rate() == np.inf
    # poly past max_iter: pow(negative, 0.5) is NaN, with a warning
    s = make_solver(solver_param("SGD", lr_policy="poly", power=0.5, max_iter=5))
    s.iter = 4
    assert s.get_learning_rate() == pytest.approx(0.05 * np.sqrt(0.2))
    s.iter = 6
    with captured_log() as stream:
        assert np.isnan(s.get_learning_rate())
        s.get_learning_rate()
    assert stream.getvalue().count("lr_policy poly past max_iter (6 > 5)") == 1


def test_sighup_is_read_before_sigint_as_in_caffe():
    handler = SignalHandler(STOP, SNAPSHOT)
    handler._handle(signal.SIGHUP, None)
    handler._handle(signal.SIGINT, None)
    assert [handler(), handler(), handler()] == [SNAPSHOT, STOP, NONE]


@pytest.fixture
def python_sigint_handler():
    """Python's own SIGINT handler for the test, whatever the runner inherited (a shell's
    background job starts with SIGINT ignored, and Python then installs none)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_in_a_script_lands_between_updates(python_sigint_handler):
    # without the command line's handler, Python raises KeyboardInterrupt wherever Ctrl-C
    # lands; inside an update that would leave some parameters stepped and others not
    solver = make_solver(solver_param("SGD"))
    reference = make_solver(solver_param("SGD"))
    real = solver.apply_update

    def update_hit_by_ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)
        real()
    solver.apply_update = update_hit_by_ctrl_c
    with pytest.raises(KeyboardInterrupt):
        solver.step(5)
    reference.step(1)
    assert solver.iter == 1
    for got, want in zip(params_of(solver), params_of(reference)):
        np.testing.assert_array_equal(got, want)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
