"""Training trajectories of tests/caffe_reference/parity/train: protonet lands where Caffe 1.0 did.

Each case runs in a writable copy of its folder (the working directory, as the
case's relative paths need):

* from ``init.caffemodel`` for ``meta["iterations"]`` steps: the per-iteration
  loss (mean over iter_size and of the last pass) and lr match
  ``trajectory.npz``, the log lines read by Caffe's parse_log regexes match
  what Caffe printed, the weights match ``final.caffemodel``, and our
  ``snap_iter_N.solverstate`` matches Caffe's (iter, learned_net,
  current_step, history);
* through ``protonet train --snapshot snap_iter_N.solverstate`` (Caffe's own
  snapshot, which names Caffe's ``snap_iter_N.caffemodel``), it lands on
  ``final.caffemodel`` too.
"""
import json
import os
import re
import shutil

import numpy as np
import pytest

from logcapture import captured_log
from parity import PARITY, cases, cwd
from protonet import backend
from protonet.cli import main
from protonet.io import blobproto_to_array, read_binary, read_net_binary
from protonet.proto import caffe_pb2
from protonet.solver import get_solver

CASES = cases("train")

# Caffe's tools/extra/parse_log.py
RE_ITERATION = re.compile(r"Iteration (\d+)")
RE_LR = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")
RE_TRAIN_LOSS = re.compile(r"Iteration (\d+) \(.*\), loss = ([\.\deE+-]+)")
RE_TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")


def _writable_copy(name, tmp_path):
    dst = tmp_path / name
    shutil.copytree(PARITY / "train" / name, dst)
    for root, dirs, files in os.walk(dst):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    return dst


def _meta(name):
    with open(PARITY / "train" / name / "meta.json") as f:
        return json.load(f)


def _weights(path):
    net = read_net_binary(str(path))
    return {(layer.name, i): blobproto_to_array(b) for layer in net.layer for i, b in enumerate(layer.blobs)}


def _assert_weights(actual_path, expected_path, tol, what):
    actual, expected = _weights(actual_path), _weights(expected_path)
    assert set(actual) == set(expected)
    for key, want in expected.items():
        np.testing.assert_allclose(actual[key], want, rtol=tol[0], atol=tol[1],
                                   err_msg="%s: param %s/%d" % (what, key[0], key[1]))


@pytest.mark.parametrize("name", CASES)
def test_train_from_init(name, tmp_path, monkeypatch):
    """`protonet train --solver solver.prototxt --weights init.caffemodel`, as a user runs it."""
    check_train_from_init(name, tmp_path, monkeypatch)


def check_train_from_init(name, tmp_path, monkeypatch, extra_args=()):
    """Train case ``name`` through the CLI (plus ``extra_args``, e.g. --gpu) and check it all."""
    meta = _meta(name)
    folder = _writable_copy(name, tmp_path)
    z = np.load(folder / "trajectory.npz")
    n, snap = meta["iterations"], meta["snapshot_iter"]
    tol = meta["tolerance"]
    loss_mean, loss_last, made = [], [], []

    def recording_get_solver(*args, **kwargs):
        # the CLI's solver, with a callback that records the exact per-iteration losses
        solver = get_solver(*args, **kwargs)

        def record():
            loss_mean.append(solver.last_loss)
            loss_last.append(float(backend.to_host(solver.net.blobs["loss"].data)))
        solver.add_callback(None, record)
        made.append(solver)
        return solver
    monkeypatch.setattr("protonet.solver.get_solver", recording_get_solver)
    with captured_log() as stream, cwd(folder):
        status = main(["train", "--solver", "solver.prototxt", "--weights", "init.caffemodel",
                       "--no-curve"] + list(extra_args))
    assert status == 0
    solver, = made
    assert solver.iter == n

    np.testing.assert_allclose(loss_mean, z["loss_mean"], rtol=tol["loss_mean"][0],
                               atol=tol["loss_mean"][1], err_msg="loss_mean")
    np.testing.assert_allclose(loss_last, z["loss"], rtol=tol["loss"][0], atol=tol["loss"][1],
                               err_msg="loss")
    np.testing.assert_allclose(solver.curve.lr, z["lr"], rtol=tol["lr"][0], atol=tol["lr"][1],
                               err_msg="lr")

    # The log, read the way Caffe's parse_log.py reads it, matches Caffe's printed values.
    printed_loss, printed_lr, outputs = {}, {}, {}
    iteration = -1
    for line in stream.getvalue().splitlines():
        m = RE_ITERATION.search(line)
        if m:
            iteration = int(m.group(1))
        m = RE_TRAIN_LOSS.search(line)
        if m:
            printed_loss[int(m.group(1))] = float(m.group(2))
        m = RE_LR.search(line)
        if m:
            printed_lr[iteration] = float(m.group(1))
        m = RE_TRAIN_OUTPUT.search(line)
        if m:
            outputs[iteration] = float(m.group(3))
    iters = list(range(n))
    # 6 significant digits printed on both sides: allow the rounding on top of the tolerance.
    np.testing.assert_allclose([printed_loss[i] for i in iters], z["loss_log"],
                               rtol=tol["loss_mean"][0] + 1e-5, err_msg="printed loss")
    np.testing.assert_allclose([printed_lr[i] for i in iters], z["lr_log"], rtol=1e-5,
                               err_msg="printed lr")
    np.testing.assert_allclose([outputs[i] for i in iters], z["loss"], rtol=tol["loss"][0] + 1e-5,
                               err_msg="printed train output")

    _assert_weights(folder / ("snap_iter_%d.caffemodel" % n), folder / "final.caffemodel",
                    tol["final_weights"], "final weights")

    # Our snapshot at snapshot_iter against Caffe's.
    ours = read_binary(str(folder / ("snap_iter_%d.solverstate" % snap)), caffe_pb2.SolverState())
    caffe = read_binary(str(PARITY / "train" / name / ("snap_iter_%d.solverstate" % snap)),
                        caffe_pb2.SolverState())
    assert ours.iter == caffe.iter == snap
    assert ours.learned_net == caffe.learned_net == "snap_iter_%d.caffemodel" % snap
    assert ours.current_step == caffe.current_step
    assert len(ours.history) == len(caffe.history)
    for i, (a, b) in enumerate(zip(ours.history, caffe.history)):
        want = blobproto_to_array(b)
        scale = float(np.abs(want).max()) if want.size else 0.0
        np.testing.assert_allclose(blobproto_to_array(a), want, rtol=1e-3, atol=1e-3 * scale,
                                   err_msg="solverstate history %d" % i)
    return solver


@pytest.mark.parametrize("name", CASES)
def test_resume_from_caffe_snapshot(name, tmp_path):
    meta = _meta(name)
    folder = _writable_copy(name, tmp_path)
    n, snap = meta["iterations"], meta["snapshot_iter"]
    with cwd(folder):
        status = main(["train", "--solver", "solver.prototxt", "--snapshot",
                       "snap_iter_%d.solverstate" % snap, "--no-curve"])
    assert status == 0
    _assert_weights(folder / ("snap_iter_%d.caffemodel" % n), folder / "final.caffemodel",
                    meta["tolerance"]["final_weights"], "final weights after resuming")
