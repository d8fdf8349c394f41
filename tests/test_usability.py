"""What a new user of the command line runs into: plurals, a steady progress bar, glog's
--log_dir, close type names, files checked first, stage hints, refused reruns."""
import io
import os
import re

import numpy as np
import pytest

from protonet import log as plog
from protonet.cli import main
from protonet.net import Net, NetError
from protonet.proto import caffe_pb2

NET = """name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 }
    data_filler { type: "constant" value: 1 } data_filler { type: "constant" value: 0 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc"
  include { phase: TEST stage: "val" } }
"""


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(NET)
    Net("net.prototxt", caffe_pb2.TEST).save("w.caffemodel")
    return tmp_path


def test_plural():
    assert plog.plural(1, "epoch") == "1 epoch" and plog.plural(2, "epoch") == "2 epochs"
    assert plog.plural(1.0, "epoch") == "1 epoch" and plog.plural(0.5, "epoch") == "0.5 epochs"
    assert plog.plural(0, "case") == "0 cases" and plog.plural(3, "entry", "entries") == "3 entries"


def test_progress_bar_keeps_its_width():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    bar = plog.ProgressBar(1000, stream=Tty(), enabled=True)
    lines = []
    for it, loss, lr in ((0, None, None), (1, 0.5, 0.01), (37, 0.123456789, 1e-4),
                         (999, -12345.678, 0.001), (1000, 1.5e-7, 1.25e-5)):
        bar.iteration, bar.loss, bar.lr = it, loss, lr
        lines.append(bar._render())
    bar.close()
    assert len({len(line) for line in lines}) == 1, lines
    # the bar's brackets stay put and fill up
    assert len({line.index("]") for line in lines}) == 1
    assert lines[0].count("#") == 0 and "." not in lines[-1].split("]")[0]
    assert "1000/1000" in lines[-1] and "loss 1.5e-07" in lines[-1]


def test_log_dir_flag_writes_a_glog_file(work, capsys):
    logs = work / "logs"
    assert main(["test", "--model", "net.prototxt", "--weights", "w.caffemodel",
                 "--iterations", "1", "-log_dir=%s" % logs]) == 0
    files = [f for f in os.listdir(logs) if ".log.INFO." in f]
    assert len(files) == 1 and os.path.islink(logs / "protonet.INFO")
    text = (logs / files[0]).read_text()
    assert "Log file created at:" in text and "Running for 1 iterations." in text
    assert "--log_dir is not used" not in capsys.readouterr().err


def test_unknown_layer_type_suggests_close_names():
    with pytest.raises(NetError) as exc:
        Net(caffe_pb2.NetParameter(layer=[caffe_pb2.LayerParameter(
            name="c", type="Convolutoin", top=["c"])]), caffe_pb2.TEST)
    message = str(exc.value)
    assert "Did you mean 'Convolution'" in message and "Softmax" not in message
    assert len(message) < 250
    with pytest.raises(NetError, match="'ReLU'"):
        Net(caffe_pb2.NetParameter(layer=[caffe_pb2.LayerParameter(
            name="r", type="relu", top=["r"])]), caffe_pb2.TEST)


def test_missing_weights_is_reported_before_the_net_is_built(work, capsys):
    assert main(["test", "--model", "net.prototxt", "--weights", "nope.caffemodel"]) == 1
    err = capsys.readouterr().err
    assert "--weights: nope.caffemodel: no such file" in err
    assert "Creating Layer" not in err and "Top shape" not in err and "Use CPU" not in err
    (work / "solver.prototxt").write_text('net: "net.prototxt"\nbase_lr: 0.1\nmax_iter: 1\n'
                                          'lr_policy: "fixed"\nsolver_mode: CPU\n')
    assert main(["train", "--solver", "solver.prototxt", "--weights", "w.caffemodel,gone"]) == 1
    err = capsys.readouterr().err
    assert "--weights: gone: no such file" in err and "Creating Layer" not in err


def test_weight_shape_mismatch_names_the_file(work):
    other = NET.replace("num_output: 2", "num_output: 3")
    (work / "other.prototxt").write_text(other)
    param = caffe_pb2.NetParameter()
    param.ParseFromString(open("w.caffemodel", "rb").read())
    net = Net("other.prototxt", caffe_pb2.TEST)
    with pytest.raises(NetError, match=r"'ip' \(w\.caffemodel\); shape mismatch.*2x3.*3x3"):
        net.copy_from(param, origin="w.caffemodel")
    with pytest.raises(NetError, match=r"'ip' \(w\.caffemodel\)"):
        net.copy_from("w.caffemodel")


def test_test_hints_at_a_stage_that_adds_outputs(work, capsys):
    assert main(["test", "--model", "net.prototxt", "--weights", "w.caffemodel",
                 "--iterations", "1"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"Layer 'acc' \(Accuracy\) is only in the net with --stage val: its "
                     r"output 'acc' is not computed", err)
    assert main(["test", "--model", "net.prototxt", "--weights", "w.caffemodel",
                 "--iterations", "1", "--stage", "val"]) == 0
    err = capsys.readouterr().err
    assert "only in the net with" not in err and re.search(r"\] acc = [0-9.]+$", err, re.M)


def test_tutorial_refuses_an_earlier_run(tmp_path, capsys):
    out = tmp_path / "tut"
    (out / "train").mkdir(parents=True)
    (out / "train" / "snapshot_iter_9.caffemodel").write_bytes(b"")
    assert main(["tutorial", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds a tutorial run (train)" in err and "--force" in err
    assert (out / "train" / "snapshot_iter_9.caffemodel").exists()
    assert main(["tutorial", "--out", str(tmp_path / "new"), "--weights", "gone.caffemodel"]) == 2
    assert "--weights: gone.caffemodel: no such file" in capsys.readouterr().err
