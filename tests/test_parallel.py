"""The data-parallel hooks of the solver loop (protonet.parallel): where the loop calls a
strategy, and what a rank other than the root leaves out. Strategies here are
single-process stand-ins that record the calls or act as one rank of several."""
import os

import numpy as np
import pytest

from logcapture import captured_log
from protonet.parallel import Solo
from protonet.signals import NONE, SNAPSHOT, STOP
from test_solver import make_solver, params_of, solver_param


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


class Recording(Solo):
    layer_wise = True

    def __init__(self):
        self.events = []

    def broadcast_params(self, net):
        self.events.append("broadcast")

    def on_layer_backward(self, net, layer_index):
        self.events.append("layer %s" % net.layer_names[layer_index])

    def reduce_gradients(self, net):
        self.events.append("reduce")

    def agree_on_action(self, action):
        self.events.append("agree %s" % action)
        return action


def test_solo_is_the_default_and_one_process():
    solver = make_solver(solver_param("SGD"))
    solo = solver.parallel
    assert type(solo) is Solo
    assert (solo.rank, solo.count, solo.is_root, solo.layer_wise) == (0, 1, True, False)
    assert [solo.agree_on_action(a) for a in (NONE, STOP, SNAPSHOT)] == [NONE, STOP, SNAPSHOT]
    assert solver.net.after_backward_hooks == []      # no per-layer hook without layer_wise


def test_hooks_in_loop_order():
    solver = make_solver(solver_param("SGD", max_iter=2))
    strategy = Recording()
    solver.parallel = strategy
    assert strategy.events == ["broadcast"]           # a strategy set later gets the root's weights
    solver.add_callback(lambda: strategy.events.append("on_start"),
                        lambda: strategy.events.append("on_gradients_ready"))
    solver.solve()
    one_iteration = ["on_start", "layer loss", "layer ip", "layer data", "reduce",
                     "on_gradients_ready", "agree none"]
    assert strategy.events == ["broadcast", "broadcast"] + one_iteration * 2
    solver.parallel = Solo()                           # replacing it removes its layer hook
    assert solver.net.after_backward_hooks == []


def test_reduced_gradients_are_what_the_update_applies():
    class HalveAndDouble(Solo):
        """As if a second rank had the same gradient: sum (x2), then scale by 1/count."""
        count = 2

        def reduce_gradients(self, net):
            for blob in net.learnable_params:
                blob.diff[...] *= 2
                blob.diff[...] *= 0.5

    class Zero(Solo):
        def reduce_gradients(self, net):
            for blob in net.learnable_params:
                blob.diff[...] = 0

    trained = []
    for strategy in (Solo(), HalveAndDouble(), Zero()):
        solver = make_solver(solver_param("SGD", max_iter=3))
        solver.parallel = strategy
        start = params_of(solver)
        solver.solve()
        trained.append((start, params_of(solver)))
    for a, b in zip(trained[0][1], trained[1][1]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(*trained[2]):
        np.testing.assert_array_equal(a, b)                 # zero gradients: no step
    assert not all(np.array_equal(a, b) for a, b in zip(*trained[0]))


def test_agreed_action_rules_over_the_local_request():
    class StopAtThree(Solo):
        def __init__(self, solver):
            self.solver = solver

        def agree_on_action(self, action):
            return STOP if self.solver.iter == 3 else action

    solver = make_solver(solver_param("SGD", max_iter=10))
    solver.parallel = StopAtThree(solver)
    solver.solve()
    assert solver.iter == 3 and solver.requested_early_exit


def test_a_rank_other_than_the_root_trains_silently():
    class Second(Solo):
        rank, count, is_root = 1, 2, False

    def run(strategy):
        p = solver_param("SGD", max_iter=4, display=1, snapshot=2,
                         snapshot_prefix="r%d" % strategy.rank, snapshot_after_train=True)
        p.test_interval = 2
        p.test_iter.append(1)
        p.net_param.CopyFrom(p.train_net_param)
        p.ClearField("train_net_param")
        solver = make_solver(p)
        solver.parallel = strategy
        solver.draw_curve_beside_snapshots()
        solver.write_events_beside_snapshots("tb%d" % strategy.rank)
        with captured_log() as stream:
            solver.solve()
        return solver, stream.getvalue()

    root, root_log = run(Solo())
    other, other_log = run(Second())
    for a, b in zip(params_of(root), params_of(other)):
        np.testing.assert_array_equal(a, b)                 # the same training...
    assert "Iteration 2 (" in root_log and "Testing net (#0)" in root_log
    assert os.path.exists("r0_iter_4.caffemodel") and os.path.exists("r0_curve.png")
    assert os.path.exists("r0_curve.json") and os.listdir("tb0")     # TensorBoard events
    # ...without iteration lines, tests, snapshots or a curve
    assert "Iteration 2 (" not in other_log and "Testing net" not in other_log
    assert "lr = " not in other_log and "Snapshotting" not in other_log
    assert not [f for f in os.listdir(".") if f.startswith("r1")]
    assert not os.path.exists("tb1")
    assert other.curve.iters == [] and other.test_results == [[]]
    assert "Optimization Done." in other_log
