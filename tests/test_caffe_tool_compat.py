"""What scripts written for Caffe's `caffe` tool and glog rely on: flag spellings, log lines, GLOG_*.

The expected lines are Caffe 1.0's (tools/caffe.cpp, net.cpp, solver.cpp), worked
out here for small nets by the rules Caffe logs them by.
"""
import os
import re

import numpy as np
import pytest

import protonet
from logcapture import captured_log
from protonet import backend, cli, devices
from protonet import log as plog
from protonet.cli import gflags_spelling, main
from protonet.solver import get_solver
from test_cli import NET, SOLVER, _lines

GLOG_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] (.*)$")

SMALL = """name: "small"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 1 dim: 5 dim: 5 } shape { dim: 2 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip" param { name: "w" }
  inner_product_param { num_output: 2 } }
layer { name: "ip2" type: "InnerProduct" bottom: "conv" top: "ip2" param { name: "w" }
  inner_product_param { num_output: 2 } }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc"
  include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER % 10)
    (tmp_path / "small.prototxt").write_text(SMALL)
    return tmp_path


@pytest.fixture
def restore_log_level():
    level = plog.logger.level
    yield
    plog.logger.setLevel(level)


# ----------------------------------------------------------------------------- flags
def test_gflags_spellings_become_ours():
    argv = ["train", "-solver", "s.prototxt", "-gpu=0", "--sigint_effect=snapshot",
            "-sighup_effect", "none", "--gpu", "-1", "-h", "--", "-raw_arg"]
    assert gflags_spelling(argv) == [
        "train", "--solver", "s.prototxt", "--gpu=0", "--sigint-effect=snapshot",
        "--sighup-effect", "none", "--gpu", "-1", "-h", "--", "-raw_arg"]


def test_caffe_command_lines_run_unchanged(work, capsys):
    # as in Caffe's docs: caffe train -solver ... ; caffe test -model ... -weights ... -iterations N
    assert main(["train", "-solver", "solver.prototxt", "-sigint_effect", "stop",
                 "--sighup_effect=snapshot", "--no-curve"]) == 0
    assert os.path.exists("snap_iter_10.caffemodel")
    capsys.readouterr()
    assert main(["test", "-model", "net.prototxt", "-weights=snap_iter_10.caffemodel",
                 "-iterations", "2"]) == 0
    assert sum(l.startswith("Batch ") for l in _lines(capsys.readouterr().err)) == 2


def test_flags_a_verb_does_not_use_are_accepted_with_a_warning(work, capsys):
    # gflags flags are global: `caffe time -weights w` runs and ignores the weights
    assert main(["time", "-model", "net.prototxt", "-iterations", "1", "-weights", "x.caffemodel",
                 "-snapshot", "s.solverstate"]) == 0
    err = capsys.readouterr().err
    assert "--weights is not used by `protonet time` (`caffe time` ignores it too)" in err
    assert "--snapshot is not used by `protonet time`" in err
    assert not os.path.exists("x.caffemodel")
    assert main(["device_query", "-model", "net.prototxt"]) == 0
    assert "--model is not used by `protonet device_query`" in capsys.readouterr().err


# ----------------------------------------------------------------------------- train's lines
def test_train_says_optimization_done_twice_and_after_an_early_stop(work, capsys, monkeypatch):
    assert main(["train", "--solver", "solver.prototxt", "--no-curve"]) == 0
    lines = _lines(capsys.readouterr().err)
    assert lines.count("Optimization Done.") == 2 and lines[-1] == "Optimization Done."

    class StopAfterTwoIterations:
        """Stands in for the signal handler: Ctrl-C arrives in the second iteration (the
        first two polls are the two batches of the initial test)."""
        def __init__(self, *effects):
            self.calls = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def __call__(self):
            self.calls += 1
            return "stop" if self.calls == 4 else "none"
    monkeypatch.setattr("protonet.solver.SignalHandler", StopAfterTwoIterations)
    assert main(["train", "--solver", "solver.prototxt", "--no-curve"]) == 0
    lines = _lines(capsys.readouterr().err)
    tail = lines[lines.index("Optimization stopped early."):]
    assert tail == ["Optimization stopped early.", "Optimization Done."]
    assert "Snapshotting to binary proto file snap_iter_2.caffemodel" in lines


def test_solver_mode_counts_only_when_written(work, capsys, monkeypatch):
    # the field's default is GPU; Caffe trains on the CPU unless the file says GPU
    monkeypatch.setattr(devices, "device_count", lambda: 1)
    (work / "solver.prototxt").write_text((SOLVER % 2).replace("solver_mode: CPU\n", ""))
    assert main(["train", "--solver", "solver.prototxt", "--no-curve"]) == 0
    assert "Use CPU." in _lines(capsys.readouterr().err)
    assert backend.mode() == "cpu"


def test_several_gpus_need_as_many_gpus_and_nccl(work, capsys, monkeypatch):
    # `caffe train --gpu 0,1` trains one solver per GPU; protonet starts one process per GPU
    monkeypatch.setattr(devices, "device_count", lambda: 1)
    assert main(["train", "--solver", "solver.prototxt", "--gpu", "0,1", "--no-curve"]) == 1
    assert "--gpu 0,1: 2 GPUs requested but this machine has 1" in capsys.readouterr().err
    monkeypatch.setattr(devices, "device_count", lambda: 2)
    assert main(["train", "--solver", "solver.prototxt", "--gpu", "0,1", "--no-curve"]) == 1
    err = capsys.readouterr().err
    assert "uses NCCL through CuPy, which is not available here" in err and "mpirun" in err
    assert not os.path.exists("snap_iter_10.caffemodel")


# ----------------------------------------------------------------------------- net construction
def test_net_construction_logs_as_caffe(work):
    with captured_log() as stream:
        protonet.Net("small.prototxt", phase="TRAIN")
    lines = [GLOG_LINE.match(l).group(2) for l in stream.getvalue().splitlines()
             if GLOG_LINE.match(l)]
    start = lines.index("Creating Layer data")
    # Caffe's order: layer created, bottoms, tops, set up, top shapes (+ loss weight), memory;
    # then backward needs from the last layer to the first, the outputs, done. The shared
    # param "w" is announced when ip2 takes it. Memory counts 4-byte floats of every top,
    # in-place tops included: 50+2, +27 (conv), +27 (relu), +4, +4, +1.
    assert lines[start:] == [
        "Creating Layer data", "data -> data", "data -> label", "Setting up data",
        "Top shape: 2 1 5 5 (50)", "Top shape: 2 (2)", "Memory required for data: 208",
        "Creating Layer conv", "conv <- data", "conv -> conv", "Setting up conv",
        "Top shape: 2 3 3 3 (54)", "Memory required for data: 424",
        "Creating Layer relu", "relu <- conv", "relu -> conv (in-place)", "Setting up relu",
        "Top shape: 2 3 3 3 (54)", "Memory required for data: 640",
        "Creating Layer conv_relu_0_split", "conv_relu_0_split <- conv",
        "conv_relu_0_split -> conv_relu_0_split_0", "conv_relu_0_split -> conv_relu_0_split_1",
        "Setting up conv_relu_0_split",
        "Top shape: 2 3 3 3 (54)", "Top shape: 2 3 3 3 (54)", "Memory required for data: 1072",
        "Creating Layer ip", "ip <- conv_relu_0_split_0", "ip -> ip", "Setting up ip",
        "Top shape: 2 2 (4)", "Memory required for data: 1088",
        "Creating Layer ip2", "ip2 <- conv_relu_0_split_1", "ip2 -> ip2", "Setting up ip2",
        "Top shape: 2 2 (4)", "Memory required for data: 1104",
        "Sharing parameters 'w' owned by layer 'ip', param index 0",
        "Creating Layer loss", "loss <- ip", "loss <- label", "loss -> loss", "Setting up loss",
        "Top shape: (1)", "    with loss weight 1", "Memory required for data: 1108",
        "loss needs backward computation.", "ip2 does not need backward computation.",
        "ip needs backward computation.", "conv_relu_0_split needs backward computation.",
        "relu needs backward computation.", "conv needs backward computation.",
        "data does not need backward computation.",
        "This network produces output ip2", "This network produces output loss",
        "Network initialization done."]
    # before all that: why the TEST-only layer was left out, and the filtered net
    assert lines[0] == ("The NetState phase (0) differed from the phase (1) specified by a rule "
                        "in layer acc")
    assert lines[1].startswith("Initializing net from parameters: ")


def test_netstate_rules_log_the_first_unmet_condition(work):
    (work / "rules.prototxt").write_text("""name: "r"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 } } }
layer { name: "lo" type: "Power" bottom: "data" top: "lo" include { min_level: 2 } }
layer { name: "hi" type: "Power" bottom: "data" top: "hi" include { max_level: 0 } }
layer { name: "st" type: "Power" bottom: "data" top: "st" include { stage: "a" stage: "b" } }
layer { name: "ns" type: "Power" bottom: "data" top: "ns" exclude { not_stage: "a" } }
layer { name: "nx" type: "Power" bottom: "data" top: "nx" include { not_stage: "a" } }
""")
    with captured_log() as stream:
        net = protonet.Net("rules.prototxt", phase="TEST", level=1, stages=["a"])
    text = stream.getvalue()
    assert net.layer_names == ["data", "ns"]
    assert "The NetState level (1) is above the min_level (2) specified by a rule in layer lo" in text
    assert "The NetState level (1) is above the max_level (0) specified by a rule in layer hi" in text
    assert "The NetState did not contain stage 'b' specified by a rule in layer st" in text
    assert "The NetState contained a not_stage 'a' specified by a rule in layer nx" in text
    # an exclude rule that is not met keeps the layer, and says why it was not met
    assert "The NetState contained a not_stage 'a' specified by a rule in layer ns" in text


def test_debug_info_ends_backward_with_the_parameter_norms(work):
    solver = get_solver(_small_solver(work, "debug_info: true\n"))
    solver.progress = False
    net = solver.net
    net.blobs["data"].data[...] = np.linspace(-1, 1, 50).reshape(2, 1, 5, 5)
    net.blobs["label"].data[...] = [0, 1]
    with captured_log() as stream:
        solver._forward_backward(True)
    params = [(np.asarray(b.data, np.float64), np.asarray(b.diff, np.float64))
              for b in net.learnable_params]
    l1 = [sum(np.abs(p[k]).sum() for p in params) for k in (0, 1)]
    l2 = [np.sqrt(sum((p[k] ** 2).sum() for p in params)) for k in (0, 1)]
    m = re.search(r"^E.*\]     \[Backward\] All net params \(data, diff\): L1 norm = \((\S+), (\S+)\); "
                  r"L2 norm = \((\S+), (\S+)\)$", stream.getvalue(), re.M)
    assert m, stream.getvalue()[-2000:]
    np.testing.assert_allclose([float(g) for g in m.groups()], l1 + l2, rtol=2e-5)
    assert l1[1] > 0          # the line shows real gradients, not zeros


def _small_solver(work, extra=""):
    path = work / "small_solver.prototxt"
    path.write_text('net: "small.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 1\n'
                    'display: 1\nsolver_mode: CPU\nsnapshot_after_train: false\n' + extra)
    return str(path)


# ----------------------------------------------------------------------------- GLOG_* variables
def test_glog_minloglevel_hides_lower_levels(work, capsys, monkeypatch, restore_log_level):
    monkeypatch.setenv("GLOG_minloglevel", "1")
    assert main(["time", "--model", "net.prototxt", "--iterations", "1",
                 "--weights", "unused.caffemodel"]) == 0
    levels = {GLOG_LINE.match(l).group(1) for l in capsys.readouterr().err.splitlines()
              if GLOG_LINE.match(l)}
    assert levels == {"W"}                  # the ignored-flag warning, and no info line
    monkeypatch.setenv("GLOG_minloglevel", "2")
    assert main(["time", "--model", "net.prototxt", "--iterations", "1",
                 "--weights", "unused.caffemodel"]) == 0
    assert not any(GLOG_LINE.match(l) for l in capsys.readouterr().err.splitlines())
    assert main(["time", "--model", "missing.prototxt"]) == 1      # errors still show
    assert any(l.startswith("E") and "missing.prototxt" in l
               for l in capsys.readouterr().err.splitlines())
    monkeypatch.delenv("GLOG_minloglevel")
    assert main(["time", "--model", "net.prototxt", "--iterations", "1"]) == 0
    assert "*** Benchmark ends ***" in capsys.readouterr().err


def test_glog_log_dir_gets_a_glog_named_file(work, capsys, monkeypatch):
    monkeypatch.setenv("GLOG_log_dir", str(work / "logs"))
    assert main(["train", "--solver", "solver.prototxt", "--no-curve"]) == 0
    err = capsys.readouterr().err
    files = sorted(os.listdir(work / "logs"))
    assert len(files) == 2 and "protonet.INFO" in files
    name = [f for f in files if f != "protonet.INFO"][0]
    assert re.match(r"^protonet\.[^.]+.*\.[^.]+\.log\.INFO\.\d{8}-\d{6}\.%d$" % os.getpid(), name)
    assert os.readlink(work / "logs" / "protonet.INFO") == name
    text = (work / "logs" / name).read_text().splitlines()
    assert text[0].startswith("Log file created at: ") and text[2].startswith("Log line format:")
    # the same lines as on stderr (Caffe's tool also logs to stderr)
    assert _lines("\n".join(text)) == _lines(err)
    assert "Optimization Done." in text[-1]
    # the file is closed with the command: a later run without the variable writes nothing there
    monkeypatch.delenv("GLOG_log_dir")
    size = (work / "logs" / name).stat().st_size
    assert main(["time", "--model", "net.prototxt", "--iterations", "1"]) == 0
    assert (work / "logs" / name).stat().st_size == size
    capsys.readouterr()
    (work / "a_file").write_text("")               # a log dir that cannot be made: stderr only
    monkeypatch.setenv("GLOG_log_dir", str(work / "a_file"))
    assert main(["time", "--model", "net.prototxt", "--iterations", "1"]) == 0
    err = capsys.readouterr().err
    assert "Could not create logging file:" in err and "*** Benchmark ends ***" in err
    monkeypatch.setenv("GLOG_log_dir", str(work / "logs2"))
    monkeypatch.setenv("GLOG_logtostderr", "1")
    assert main(["time", "--model", "net.prototxt", "--iterations", "1"]) == 0
    assert not os.path.exists(work / "logs2")
