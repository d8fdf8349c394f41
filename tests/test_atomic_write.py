"""Interrupting training never corrupts a snapshot.

A snapshot is killed midway (a full disk while writing, Ctrl-C during fsync or
just before the rename) while writing the weights or the solver state, in both
formats, either on a rerun that overwrites the same names or at a later
iteration. Afterwards no temporary file is left and every file is whole: the
earlier snapshot's files byte for byte as they were (the new weights replace the
old only once the new state is written in full too; just a fault between the two
renames leaves new weights beside the old state), and a fresh solver resumes
from the earlier solver state.
"""
import errno
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from protonet.io import read_net_binary
from protonet.proto import caffe_pb2
from test_solver import make_solver, solver_param

HDF5 = caffe_pb2.SolverParameter.HDF5
BINARY = caffe_pb2.SolverParameter.BINARYPROTO


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def param(fmt):
    return solver_param("SGD", snapshot_prefix="run", snapshot_format=fmt)


def files():
    return {p.name: p.read_bytes() for p in Path(".").iterdir()}


def weights_in(model):
    """The InnerProduct's weight and bias as the snapshot file holds them."""
    if model.endswith(".h5"):
        with h5py.File(model, "r") as f:
            return [np.asarray(f["data"]["ip"][str(i)]) for i in range(2)]
    ip = [layer for layer in read_net_binary(model).layer if layer.name == "ip"][0]
    return [np.asarray(b.data, np.float32).reshape(tuple(b.shape.dim)) for b in ip.blobs]


def nth_call_fails(monkeypatch, owner, name, n, fail):
    """Make the ``n``-th call (0-based) of ``owner.name`` run ``fail(real, *args)`` instead."""
    real = getattr(owner, name)
    calls = []

    def patched(*args, **kwargs):
        calls.append(name)
        if len(calls) == n + 1:
            return fail(real, *args, **kwargs)
        return real(*args, **kwargs)
    monkeypatch.setattr(owner, name, patched)


def interrupt(real, *args, **kwargs):
    raise KeyboardInterrupt


class HalfWritten:
    """A file whose write stores half the bytes, then finds the disk full."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.f.write(data[:len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.f, name)


def disk_full(real, *args, **kwargs):
    return HalfWritten(real(*args, **kwargs))


def half_dataset(real, group, name, *args, **kwargs):
    real(group, name, *args, **kwargs)      # one dataset is in the temporary file already
    raise KeyboardInterrupt


FAULTS = {  # (format, fault): (what is patched, how it fails, the exception it makes)
    (BINARY, "disk full while writing"): (os, "fdopen", disk_full, OSError),
    (BINARY, "Ctrl-C in fsync"): (os, "fsync", interrupt, KeyboardInterrupt),
    (BINARY, "Ctrl-C before the rename"): (os, "replace", interrupt, KeyboardInterrupt),
    (HDF5, "Ctrl-C between datasets"): (h5py.Group, "create_dataset", half_dataset, KeyboardInterrupt),
    (HDF5, "Ctrl-C before the rename"): (os, "replace", interrupt, KeyboardInterrupt),
}


def fail_during(monkeypatch, fmt, fault, target):
    """Arm ``fault`` for the snapshot's ``target`` file: 0 the weights, 1 the solver state."""
    owner, name, fail, exc = FAULTS[fmt, fault]
    if name == "create_dataset":
        n = 2 * target                # the weights file holds two datasets (ip's weight, bias)
    else:
        n = target                    # one open/fsync/rename per file
    nth_call_fails(monkeypatch, owner, name, n, fail)
    return exc


@pytest.mark.parametrize("target", [0, 1], ids=["weights", "state"])
@pytest.mark.parametrize("scenario", ["rerun", "later"])
@pytest.mark.parametrize("fmt,fault", list(FAULTS), ids=["-".join((
    "hdf5" if f == HDF5 else "binary", k.replace(" ", "_"))) for f, k in FAULTS])
def test_interrupted_snapshot_leaves_the_previous_one_intact(fmt, fault, scenario, target,
                                                             monkeypatch):
    first = make_solver(param(fmt))
    first.step(3)
    model, state = first.snapshot()
    before = files()
    assert sorted(before) == sorted([model, state])
    saved = [b.data.copy() for b in first.net.learnable_params]
    history = [h.copy() for h in first.history]

    if scenario == "rerun":           # a second run with the same prefix: the same file names
        solver = make_solver(param(fmt), seed=1)
        solver.step(3)
    else:                             # the first run, two iterations on
        solver = first
        solver.step(2)
    assert not np.array_equal(solver.net.learnable_params[0].data, saved[0])
    with monkeypatch.context() as m:
        with pytest.raises(fail_during(m, fmt, fault, target)):
            solver.snapshot()

    after = files()
    # Every file is whole: the earlier snapshot's, or the new weights when the fault hit the
    # state's rename (both files are written in full before either is put in place, so that
    # rename is the only point between them). No temporary file is left.
    finished = []
    if target == 1 and fault == "Ctrl-C before the rename":
        finished = [model if scenario == "rerun" else model.replace("_iter_3", "_iter_5")]
        for got, want in zip(weights_in(finished[0]), solver.net.learnable_params):
            np.testing.assert_array_equal(got, want.data)
    assert sorted(after) == sorted(set(before) | set(finished))
    for name, data in before.items():
        if name not in finished:
            assert after[name] == data, "%s changed" % name

    fresh = make_solver(param(fmt), seed=2)
    fresh.restore(state)
    assert fresh.iter == 3
    for got, want in zip(fresh.history, history):
        np.testing.assert_array_equal(got, want)
    if model not in finished:
        for got, want in zip(fresh.net.learnable_params, saved):
            np.testing.assert_array_equal(got.data, want)


@pytest.mark.parametrize("fmt", [BINARY, HDF5], ids=["binary", "hdf5"])
def test_snapshot_after_an_interrupted_one_succeeds(fmt, monkeypatch):
    # the failed attempt leaves nothing in the way of the next
    solver = make_solver(param(fmt))
    solver.step(3)
    with monkeypatch.context() as m:
        nth_call_fails(m, os, "replace", 0, interrupt)
        with pytest.raises(KeyboardInterrupt):
            solver.snapshot()
    assert files() == {}
    model, state = solver.snapshot()
    assert sorted(files()) == sorted([model, state])
    for got, want in zip(weights_in(model), solver.net.learnable_params):
        np.testing.assert_array_equal(got, want.data)
