"""Data-parallel training on real processes: ``mpiexec -n 2`` (MPICH from the ``mpi`` extra).

Each case builds a tiny net fed from an LMDB in a temporary folder, trains it
on 2 ranks of batch B under mpiexec and compares every weight with one
process trained here at batch 2B (the effective batch of 2 ranks). A Python
layer in the net doubles its input and, when ``PARALLEL_TEST_SIGNAL`` says
so, sends a signal to its own process at a given forward pass of a given
rank: that is how a rank is interrupted, killed or hung at a known
iteration.
"""
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import protonet
from protonet.data import array_to_datum, write_lmdb
from protonet.io import blobproto_to_array
from protonet.proto import caffe_pb2
from protonet.python_layer import add_search_path

B = 4                # per-rank batch
RECORDS = 24         # three iterations of the single process's batch of 2B: one epoch

LAYER_MODULE = '''
import os
import signal
import time

import caffe


class Double(caffe.Layer):
    """y = 2x; sends PARALLEL_TEST_SIGNAL ("NAME:rank:pass") to itself at that forward pass;
    sleeps PARALLEL_TEST_SLOW_TEST seconds per TEST-phase forward."""

    def setup(self, bottom, top):
        self.passes = 0
        self.signal = None
        spec = os.environ.get("PARALLEL_TEST_SIGNAL", "")
        if spec and self.phase == caffe.TRAIN:
            name, rank, at = spec.split(":")
            if int(rank) == caffe.solver_rank() and caffe.solver_count() > 1:
                self.signal = (getattr(signal, name), int(at))

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        self.passes += 1
        if self.phase == caffe.TEST and os.environ.get("PARALLEL_TEST_SLOW_TEST"):
            time.sleep(float(os.environ["PARALLEL_TEST_SLOW_TEST"]))
        if self.signal is not None and self.passes == self.signal[1]:
            os.kill(os.getpid(), self.signal[0])
        top[0].data[...] = 2 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = 2 * top[0].diff
'''

# ip1 and ip1b share their weights ("w1"); the Python layer sits between them and the loss
NET = '''name: "tiny"
layer { name: "d" type: "Data" top: "data" top: "label"
        data_param { source: "db" batch_size: %(batch)d backend: LMDB } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "h" param { name: "w1" }
        inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.3 }
                              bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
layer { name: "ip1b" type: "InnerProduct" bottom: "data" top: "h2" param { name: "w1" }
        inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "sum" type: "Eltwise" bottom: "h" bottom: "h2" top: "s" }
layer { name: "double" type: "Python" bottom: "s" top: "s2"
        python_param { module: "parallel_test_layers" layer: "Double" } }
layer { name: "ip2" type: "InnerProduct" bottom: "s2" top: "o"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "o" bottom: "label" top: "loss" }
'''

SOLVERS = {
    "SGD": 'type: "SGD"\nbase_lr: 0.1\nmomentum: 0.9\nweight_decay: 0.001\nlayer_wise_reduce: false\n',
    "Adam-iter_size-2": 'type: "Adam"\nbase_lr: 0.01\nmomentum: 0.9\nmomentum2: 0.999\n'
                        'iter_size: 2\n',
}


def write_case(folder, rule, batch, max_iter, prefix="snap/s"):
    """The LMDB, the Python layer, the net and a solver at this batch; returns the solver path."""
    folder.mkdir(exist_ok=True)
    (folder / "parallel_test_layers.py").write_text(LAYER_MODULE)
    if not (folder / "db").exists():
        rng = np.random.default_rng(0)
        write_lmdb(str(folder / "db"), [array_to_datum(rng.random((1, 2, 2)).astype(np.float32),
                                                       int(i % 3)) for i in range(RECORDS)])
    (folder / ("net%d.prototxt" % batch)).write_text(NET % {"batch": batch})
    (folder / os.path.dirname(prefix)).mkdir(exist_ok=True)
    path = folder / ("solver%d.prototxt" % batch)
    path.write_text('net: "net%d.prototxt"\n%slr_policy: "fixed"\nmax_iter: %d\ndisplay: 1\n'
                    'snapshot_prefix: "%s"\nrandom_seed: 5\n' % (batch, SOLVERS[rule], max_iter, prefix))
    return path.name


def mpiexec():
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside if os.path.exists(beside) else shutil.which("mpiexec") or "mpiexec"


def run_ranks(folder, args, n=2, env=None, timeout=120):
    """``mpiexec -n n python -m protonet <args>`` in ``folder``: (return code, output, seconds)."""
    env = dict(env or {})
    paths = [os.path.dirname(os.path.dirname(os.path.abspath(protonet.__file__)))]
    paths += [p for p in (env.pop("PYTHONPATH", ""), os.environ.get("PYTHONPATH", "")) if p]
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), **env)
    start = time.monotonic()
    proc = subprocess.run([mpiexec(), "-n", str(n), sys.executable] + args, cwd=str(folder),
                          env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    return proc.returncode, proc.stdout, time.monotonic() - start


def train_ranks(folder, solver, *extra, **kwargs):
    return run_ranks(folder, ["-m", "protonet", "train", "--solver", solver, "--no-curve",
                              "--python-path", "."] + list(extra), **kwargs)


def train_here(folder, solver, monkeypatch, snapshot=None):
    """One process, in this one: the weights after solve(), by (layer, index)."""
    monkeypatch.chdir(folder)
    add_search_path(str(folder))
    s = protonet.get_solver(solver)
    s.progress = False
    s.solve(snapshot)
    return {(name, i): np.array(b.data) for name, blobs in s.net.params.items()
            for i, b in enumerate(blobs)}


def caffemodel(path):
    net = caffe_pb2.NetParameter()
    net.ParseFromString(path.read_bytes())
    return {(layer.name, i): blobproto_to_array(b).reshape(-1)
            for layer in net.layer for i, b in enumerate(layer.blobs)}


def assert_same_weights(got, want, rtol=1e-5):
    want = {k: np.asarray(v).reshape(-1) for k, v in want.items()}
    assert set(got) == set(want)
    for key, values in got.items():
        scale = np.abs(want[key]).max()
        assert np.abs(values - want[key]).max() <= rtol * scale, key


def check_ok(code, out):
    assert code == 0, out[-3000:]


@pytest.mark.parametrize("rule", sorted(SOLVERS))
def test_two_ranks_train_as_one_at_double_batch(tmp_path, monkeypatch, rule):
    single = train_here(tmp_path, write_case(tmp_path, rule, 2 * B, 4, "one/s"), monkeypatch)
    code, out, _ = train_ranks(tmp_path, write_case(tmp_path, rule, B, 4, "two/s"))
    check_ok(code, out)
    assert_same_weights(caffemodel(tmp_path / "two" / "s_iter_4.caffemodel"), single)
    # the weights moved: a run that averaged nothing would not pass the check above by luck
    assert not np.allclose(caffemodel(tmp_path / "two" / "s_iter_4.caffemodel")[("ip2", 0)], 0)
    # only rank 0 writes iteration lines, and each rank says who it is
    assert len(re.findall(r"\] Iteration 2 \(", out)) == 1
    assert re.search(r"MPI: rank 1 of 2: pid \d+", out)


def test_sigint_to_rank_0_stops_both_with_one_snapshot_that_resumes_anywhere(tmp_path, monkeypatch):
    solver = write_case(tmp_path, "SGD", B, 6, "two/s")
    # Ctrl-C reaches rank 0 during its third forward pass (iteration 2)
    code, out, _ = train_ranks(tmp_path, solver, env={"PARALLEL_TEST_SIGNAL": "SIGINT:0:3"})
    check_ok(code, out)
    files = sorted(os.listdir(tmp_path / "two"))
    events = [f for f in files if f.startswith("events.out.tfevents.")]
    assert len(events) == 1 and events[0].endswith(".protonet-s.0001")    # rank 0's TensorBoard
    assert [f for f in files if f not in events] == ["s_iter_3.caffemodel", "s_iter_3.solverstate"]
    assert "Optimization stopped early." in out
    # the uninterrupted run: one process at the double batch, to max_iter 6
    reference = train_here(tmp_path, write_case(tmp_path, "SGD", 2 * B, 6, "one/s"), monkeypatch)
    # resumed on 2 ranks...
    code, out, _ = train_ranks(tmp_path, solver, "--snapshot", "two/s_iter_3.solverstate")
    check_ok(code, out)
    assert_same_weights(caffemodel(tmp_path / "two" / "s_iter_6.caffemodel"), reference)
    # ...and on 1 (its batch is the 2 ranks' together)
    resumed = train_here(tmp_path, write_case(tmp_path, "SGD", 2 * B, 6, "one/s"), monkeypatch,
                         snapshot="two/s_iter_3.solverstate")
    assert_same_weights({k: v.reshape(-1) for k, v in resumed.items()}, reference)


def test_a_killed_rank_ends_the_job_and_is_named(tmp_path):
    solver = write_case(tmp_path, "SGD", B, 50, "two/s")
    code, out, seconds = train_ranks(tmp_path, solver, env={"PARALLEL_TEST_SIGNAL": "SIGKILL:1:2"})
    assert code != 0 and seconds < 60
    # the launcher's own report may name any rank's PID (it kills them all at once); the
    # rank's parent process names the rank that was killed
    pid = re.search(r"MPI: rank 1 of 2: pid (\d+)", out).group(1)
    assert re.search(r"rank 1 of 2 \(pid %s\) was killed by signal 9 \(SIGKILL\); the MPI "
                     r"launcher ends the other ranks" % pid, out), out[-2000:]
    assert "rank 0 of 2 (pid" not in out
    assert not (tmp_path / "two" / "s_iter_50.caffemodel").exists()


def test_a_hung_rank_times_out_and_is_named(tmp_path):
    solver = write_case(tmp_path, "SGD", B, 50, "two/s")
    code, out, seconds = train_ranks(tmp_path, solver, env={"PARALLEL_TEST_SIGNAL": "SIGSTOP:1:2",
                                                            "PROTONET_COMM_TIMEOUT": "2"})
    assert code != 0 and seconds < 60, out[-2000:]
    assert re.search(r"MPI: gradient reduction did not complete on rank 0 of 2: lost rank 1 "
                     r"\(no sign of life for 2 s: it died or hung", out), out[-2000:]


def test_a_long_test_phase_on_rank_0_is_not_a_lost_rank(tmp_path):
    # the other rank waits for rank 0's tests far longer than the timeout: rank 0's heartbeats
    # (from its own thread) show it is alive
    solver = write_case(tmp_path, "SGD", B, 2, "two/s")
    with open(tmp_path / solver, "a") as f:
        f.write("test_iter: 4\ntest_interval: 1\ntest_initialization: false\n")
    code, out, _ = train_ranks(tmp_path, solver, env={"PARALLEL_TEST_SLOW_TEST": "0.5",
                                                      "PROTONET_COMM_TIMEOUT": "1"})
    check_ok(code, out)
    assert "Testing net (#0)" in out and "lost" not in out
    assert (tmp_path / "two" / "s_iter_2.caffemodel").exists()


PYCAFFE_SCRIPT = '''
"""python/train.py's solve(), on the CPU under mpirun: the ranks come from MPI."""
import sys

from mpi4py import MPI

import caffe

caffe.set_mode_cpu()
uid = caffe.NCCL.new_uid()
caffe.set_solver_count(MPI.COMM_WORLD.Get_size())
caffe.set_solver_rank(MPI.COMM_WORLD.Get_rank())
caffe.set_multiprocess(True)
solver = caffe.SGDSolver(sys.argv[1])
nccl = caffe.NCCL(solver, uid)
nccl.bcast()
solver.add_callback(nccl)
if solver.param.layer_wise_reduce:
    solver.net.after_backward(nccl)
solver.step(solver.param.max_iter)
if caffe.solver_rank() == 0:
    solver.net.save("pycaffe.caffemodel")
'''


def test_pycaffe_train_script_under_mpirun(tmp_path, monkeypatch):
    (tmp_path / "train.py").write_text(PYCAFFE_SCRIPT)
    solver = write_case(tmp_path, "SGD", B, 3, "two/s")
    (tmp_path / solver).write_text((tmp_path / solver).read_text().replace(
        "layer_wise_reduce: false", "layer_wise_reduce: true"))
    code, out, _ = run_ranks(tmp_path, ["train.py", solver],
                             env={"PYTHONPATH": str(tmp_path)})
    check_ok(code, out)
    single = train_here(tmp_path, write_case(tmp_path, "SGD", 2 * B, 3, "one/s"), monkeypatch)
    assert_same_weights(caffemodel(tmp_path / "pycaffe.caffemodel"), single)



CHILD = """
import os, signal, sys, time
rank = int(os.environ["PROTONET_SOLVER_RANK"])
assert os.environ["PROTONET_SOLVER_COUNT"] == "2" and os.environ["PROTONET_NCCL_UID"] == "ab"
if rank == 1:
    time.sleep(0.3)
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(120)        # rank 0 would wait for rank 1 in NCCL forever
"""


def test_gpu_list_parent_names_a_dead_child_and_ends_the_others(tmp_path):
    # protonet train --gpu 0,1 runs one child per GPU under launch.supervise
    from protonet import launch
    from logcapture import captured_log
    (tmp_path / "child.py").write_text(CHILD)
    start = time.monotonic()
    with captured_log() as stream:
        code = launch.supervise([sys.executable, str(tmp_path / "child.py")], 2,
                                {"PROTONET_NCCL_UID": "ab"}, ids=[3, 5], poll=0.05)
    assert code == 137 and time.monotonic() - start < 60
    assert re.search(r"rank 1 on GPU 5 \(pid \d+\) was killed by signal 9 \(SIGKILL\); "
                     r"stopping the other 1 rank", stream.getvalue())


FAKE_GPU_BOOT = '''
"""Run a script with protonet's GPU mode on tests/fakecupy.py (one fake GPU per MPI rank)."""
import runpy
import sys

sys.path.insert(0, sys.argv[1])
import fakecupy  # noqa: E402
from protonet import backend  # noqa: E402

backend._cupy = fakecupy
if sys.argv[2] == "-m":
    sys.argv = sys.argv[3:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
'''


def test_nccl_path_on_fake_gpus(tmp_path, monkeypatch):
    """python/train.py's flow in GPU mode: caffe.NCCL takes NCCL (CuPy's cuda.nccl, here
    fakecupy's stand-in whose collectives go over MPI), with layer-wise reduction."""
    (tmp_path / "boot.py").write_text(FAKE_GPU_BOOT)
    (tmp_path / "train.py").write_text(PYCAFFE_SCRIPT.replace(
        "caffe.set_mode_cpu()", "caffe.set_device(0)\ncaffe.set_mode_gpu()\n"
        "assert caffe.has_nccl() and len(caffe.NCCL.new_uid()) == 128"))
    solver = write_case(tmp_path, "SGD", B, 3, "two/s")
    (tmp_path / solver).write_text((tmp_path / solver).read_text().replace(
        "layer_wise_reduce: false", "layer_wise_reduce: true"))
    tests = os.path.dirname(os.path.abspath(__file__))
    code, out, _ = run_ranks(tmp_path, ["boot.py", tests, "train.py", solver],
                             env={"PYTHONPATH": str(tmp_path)})
    check_ok(code, out)
    assert "NCCL: rank 1 of 2" in out and "MPI: rank" not in out
    single = train_here(tmp_path, write_case(tmp_path, "SGD", 2 * B, 3, "one/s"), monkeypatch)
    assert_same_weights(caffemodel(tmp_path / "pycaffe.caffemodel"), single)


def test_mpi_ranks_on_fake_gpus(tmp_path, monkeypatch):
    """mpirun -np 2 protonet train --gpu 0: each rank on its (fake) GPU, the gradients staged
    through host memory for MPI."""
    (tmp_path / "boot.py").write_text(FAKE_GPU_BOOT)
    solver = write_case(tmp_path, "Adam-iter_size-2", B, 2, "two/s")
    tests = os.path.dirname(os.path.abspath(__file__))
    code, out, _ = run_ranks(tmp_path, ["boot.py", tests, "-m", "protonet", "train", "--solver",
                                        solver, "--gpu", "0", "--no-curve", "--python-path", "."])
    check_ok(code, out)
    assert "MPI: rank 1 of 2" in out and "Using GPUs 0" in out
    single = train_here(tmp_path, write_case(tmp_path, "Adam-iter_size-2", 2 * B, 2, "one/s"),
                        monkeypatch)
    assert_same_weights(caffemodel(tmp_path / "two" / "s_iter_2.caffemodel"), single)


def test_sigterm_stops_like_sigint_when_asked(tmp_path):
    # protonet train on several ranks installs this: a batch system's SIGTERM stops all ranks
    import signal
    from protonet.signals import SignalHandler
    with SignalHandler(sigterm_effect="stop") as handler:
        assert handler() == "none"
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert handler() == "stop" and handler() == "none"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_only_the_root_solver_has_test_nets(tmp_path, monkeypatch):
    from protonet import comm
    solver = write_case(tmp_path, "SGD", B, 1, "two/s")
    with open(tmp_path / solver, "a") as f:
        f.write("test_iter: 1\ntest_interval: 1\n")
    monkeypatch.chdir(tmp_path)
    add_search_path(str(tmp_path))
    assert len(protonet.get_solver(solver).test_nets) == 1
    monkeypatch.setattr(comm, "_world", {"count": 2, "rank": 1, "multiprocess": True})
    assert protonet.get_solver(solver).test_nets == []


def test_under_a_launcher_without_mpi4py_the_error_gives_the_install_line(tmp_path, monkeypatch,
                                                                           capsys):
    from protonet.cli import main
    solver = write_case(tmp_path, "SGD", B, 1, "two/s")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PMI_RANK", "0")
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)      # import mpi4py fails
    assert main(["train", "--solver", solver, "--no-curve"]) == 1
    err = capsys.readouterr().err
    assert 'needs mpi4py and an MPI library: pip install -e ".[mpi]"' in err


def test_layer_wise_reduction_starts_only_in_the_solver_s_last_pass(tmp_path, monkeypatch):
    """Which layers' reductions start during backward: none in the first of iter_size passes
    nor in a backward a script runs itself; in the last pass, each param's group once its
    lowest user (ip1 for the weights it shares with ip1b) is done."""
    from protonet.comm import LocalComm
    from protonet.parallel import DataParallel

    class Two(LocalComm):
        count = 2                      # as if a second rank were there: the hooks act

        def __init__(self):
            super().__init__()
            self.started = []

        def allreduce_start(self, arrays, what=""):
            self.started.append(len(arrays))
            return super().allreduce_start(arrays)

    solver = write_case(tmp_path, "Adam-iter_size-2", B, 1, "two/s")
    monkeypatch.chdir(tmp_path)
    add_search_path(str(tmp_path))
    s = protonet.get_solver(solver)
    link = Two()
    strategy = DataParallel(link)
    s.parallel = strategy
    started = []
    s.net.after_backward_hooks.append(lambda li: started.append((li, len(link.started))))
    s.net.forward_backward()            # a script's own pass: nothing starts
    assert link.started == []
    started.clear()
    s.step(1)
    names = s.net.layer_names
    first, last = started[:len(names)], started[len(names):]
    assert all(n == 0 for _, n in first)                 # iter_size 2: the first pass waits
    by_layer = dict((names[li], n) for li, n in last)
    # ip2's weight and bias start after ip2; ip1b's bias after ip1b; the shared weight and
    # ip1's bias only after ip1, the last layer (in backward order) that adds to them
    assert by_layer["ip2"] == 1 and by_layer["ip1b"] == 2 and by_layer["ip1"] == 3
    assert link.started == [2, 1, 2]
