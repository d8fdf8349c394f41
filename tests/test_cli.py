"""The ``protonet`` command line, driven through ``main([...])`` in a temporary folder."""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from protonet import backend
from protonet.cli import COMMANDS, main
from protonet.io import blobproto_to_array, read_binary, read_net_binary
from protonet.proto import caffe_pb2

REPO = Path(__file__).resolve().parents[1]
GLOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] ")

NET = """name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "target"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 1 }
    data_filler { type: "constant" value: 1 } data_filler { type: "constant" value: 0.5 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 1 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "extra" type: "Power" bottom: "ip" top: "extra" include { stage: "more" } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }
"""

SOLVER = """net: "net.prototxt"
type: "SGD"
base_lr: 0.05
momentum: 0.9
lr_policy: "step"
gamma: 0.5
stepsize: 4
max_iter: %d
display: 5
snapshot: 5
snapshot_prefix: "snap"
test_iter: 2
test_interval: 5
solver_mode: CPU
random_seed: 3
"""


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER % 10)
    return tmp_path


def _weights(path):
    return {(l.name, i): blobproto_to_array(b)
            for l in read_net_binary(str(path)).layer for i, b in enumerate(l.blobs)}


def _lines(text):
    return [GLOG.sub("", l) for l in text.splitlines() if GLOG.match(l)]


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name, *_ in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", [c[0] for c in COMMANDS])
def test_each_command_help_has_an_example(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and "protonet %s" % name in out


def test_no_command_prints_usage(capsys):
    assert main([]) == 1
    assert "usage: protonet" in capsys.readouterr().err


def test_train_writes_snapshots_and_caffe_log(work, capsys):
    assert main(["train", "--solver", "solver.prototxt", "--no-curve"]) == 0
    err = capsys.readouterr().err
    lines = _lines(err)
    assert "Initializing solver from parameters: " in lines
    assert "Use CPU." in lines and "Starting Optimization" in lines
    assert "Iteration 5, lr = 0.025" in lines
    assert "Iteration 0, Testing net (#0)" in lines and "Iteration 10, Testing net (#0)" in lines
    assert any(re.match(r"Iteration 5 \(.* iter/s, .*s/5 iters\), loss = [\d.e+-]+$", l) for l in lines)
    assert lines[-1] == "Optimization Done."
    for n in (5, 10):
        state = read_binary("snap_iter_%d.solverstate" % n, caffe_pb2.SolverState())
        assert state.iter == n and state.learned_net == "snap_iter_%d.caffemodel" % n
        assert state.current_step == (n - 1) // 4     # set by the lr of the last update
        assert set(_weights("snap_iter_%d.caffemodel" % n)) == {("ip", 0), ("ip", 1)}


def test_train_resume_lands_on_the_same_weights(work):
    assert main(["train", "--solver", "solver.prototxt", "--no-curve"]) == 0
    straight = _weights("snap_iter_10.caffemodel")
    os.remove("snap_iter_10.caffemodel")
    assert main(["train", "--solver", "solver.prototxt", "--snapshot", "snap_iter_5.solverstate",
                 "--no-curve"]) == 0
    resumed = _weights("snap_iter_10.caffemodel")
    for key in straight:
        np.testing.assert_array_equal(straight[key], resumed[key])


def test_train_finetune_and_argument_errors(work, capsys):
    assert main(["train", "--solver", "solver.prototxt", "--iterations", "3", "--no-curve"]) == 0
    assert os.path.exists("snap_iter_3.caffemodel")      # snapshot_after_train at the early stop
    capsys.readouterr()
    os.rename("snap_iter_3.caffemodel", "start.caffemodel")
    assert main(["train", "--solver", "solver.prototxt", "--weights", "start.caffemodel",
                 "--iterations", "1", "--no-curve"]) == 0
    assert "Finetuning from start.caffemodel" in _lines(capsys.readouterr().err)
    assert main(["train", "--solver", "solver.prototxt", "--weights", "start.caffemodel",
                 "--snapshot", "snap_iter_5.solverstate"]) == 1
    assert "not both" in capsys.readouterr().err
    assert main(["train", "--solver", "missing.prototxt"]) == 1
    assert "--solver: 'missing.prototxt' not found" in capsys.readouterr().err
    (work / "bad_solver.prototxt").write_text('net: "nowhere.prototxt"\nlr_policy: "fixed"\n')
    assert main(["train", "--solver", "bad_solver.prototxt"]) == 1
    assert "net: net file 'nowhere.prototxt' not found" in capsys.readouterr().err


def test_train_stage_reaches_the_train_net(work, capsys):
    (work / "solver.prototxt").write_text((SOLVER % 1).replace("test_iter: 2\ntest_interval: 5\n", "")
                                          .replace("display: 5", "display: 1"))
    assert main(["train", "--solver", "solver.prototxt", "--stage", "more", "--no-curve"]) == 0
    lines = _lines(capsys.readouterr().err)
    assert any(l.startswith("    Train net output #0: extra = ") for l in lines)


def test_test_command_averages_outputs(work, capsys):
    assert main(["train", "--solver", "solver.prototxt", "--no-curve"]) == 0
    capsys.readouterr()
    assert main(["test", "--model", "net.prototxt", "--weights", "snap_iter_10.caffemodel",
                 "--iterations", "3"]) == 0
    lines = _lines(capsys.readouterr().err)
    w = _weights("snap_iter_10.caffemodel")
    ip = float(w[("ip", 0)].sum() + w[("ip", 1)].sum())
    loss = (ip - 0.5) ** 2 / 2
    batch = [l for l in lines if l.startswith("Batch ")]
    assert len(batch) == 3 and batch[0].startswith("Batch 0, loss = ")
    assert [l for l in lines if l.startswith("Loss: ")]
    final = [l for l in lines if l.startswith("loss = ")]
    m = re.match(r"loss = ([\d.e+-]+) \(\* 1 = ([\d.e+-]+) loss\)$", final[0])
    assert m and float(m.group(1)) == pytest.approx(loss, rel=1e-4)


def test_time_command_json(work, capsys):
    assert main(["time", "--model", "net.prototxt", "--iterations", "2", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert [l["name"] for l in report["layers"]] == ["data", "ip", "loss"]
    assert report["iterations"] == 2 and report["phase"] == "TRAIN"
    assert all(l["forward_ms"] >= 0 and l["backward_ms"] >= 0 for l in report["layers"])
    lines = _lines(captured.err)
    assert any(re.match(r"\s+ip\tforward: [\d.e+-]+ ms\.$", l) for l in lines)
    assert any(l.startswith("Average Forward-Backward: ") for l in lines)
    assert lines[-1] == "*** Benchmark ends ***"


def test_time_command_splits_gemm_time(work, capsys):
    matmul = np.matmul
    assert main(["time", "--model", "net.prototxt", "--iterations", "2", "--json"]) == 0
    captured = capsys.readouterr()
    layers = {l["name"]: l for l in json.loads(captured.out)["layers"]}
    ip, loss = layers["ip"], layers["loss"]
    # the InnerProduct's forward is a GEMM (backward too when its bottom needs a diff)
    assert 0 < ip["gemm_forward_ms"] <= ip["forward_ms"]
    assert loss["gemm_forward_ms"] == 0 and loss["gemm_backward_ms"] == 0
    for l in layers.values():
        assert l["outside_gemm_ms"] == pytest.approx(
            l["forward_ms"] + l["backward_ms"] - l["gemm_forward_ms"] - l["gemm_backward_ms"])
    lines = _lines(captured.err)
    assert any(re.match(r"\s+ip\toutside GEMMs: [\d.e+-]+ ms \([\d.]+%\); GEMMs: [\d.e+-]+ ms\.$", l)
               for l in lines)
    assert any(l.startswith("Layers over 10% of the net's time outside GEMMs: ") for l in lines)
    assert np.matmul is matmul        # the clock is gone afterwards


def test_device_query(capsys):
    assert main(["device_query"]) == 0
    lines = _lines(capsys.readouterr().err)
    assert lines[0] == "Querying GPUs all"
    assert any("No GPU" in l or l.startswith("Device id:") for l in lines)


def test_gpu_flag_without_a_gpu_is_a_clear_error(work, capsys, monkeypatch):
    # a machine without CuPy, whatever this one has
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_error", ImportError("No module named 'cupy'"))
    assert main(["time", "--model", "net.prototxt", "--iterations", "1", "--gpu", "0"]) == 1
    assert "GPU 0 requested but no GPU is usable" in capsys.readouterr().err
    assert main(["time", "--model", "net.prototxt", "--iterations", "1", "--gpu", "-1"]) == 0


def _run_protonet(args, cwd, **kw):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "protonet"] + args, cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_python_m_protonet(tmp_path):
    proc = _run_protonet(["--help"], tmp_path)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "device_query" in out


def test_sigint_stops_training_with_a_snapshot(work):
    (work / "solver.prototxt").write_text((SOLVER % 1000000).replace("display: 5", "display: 1")
                                          .replace("snapshot: 5", "snapshot: 0"))
    proc = _run_protonet(["train", "--solver", "solver.prototxt", "--no-curve"], work)
    try:
        for line in proc.stderr:
            if "Iteration 20, lr" in line:
                proc.send_signal(signal.SIGINT)
                break
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest
    assert "Optimization stopped early." in rest
    snaps = sorted(f for f in os.listdir(work) if f.startswith("snap_iter_"))
    assert len(snaps) == 2 and snaps[0].endswith(".caffemodel") and snaps[1].endswith(".solverstate")
    state = read_binary(str(work / snaps[1]), caffe_pb2.SolverState())
    assert state.iter >= 21 and state.learned_net == snaps[0]
    assert set(_weights(work / snaps[0])) == {("ip", 0), ("ip", 1)}
    assert not [f for f in os.listdir(work) if f.startswith(".")]
