"""The PNG training curve: its history across resumes, log loss axis, epochs, lr panel."""
import json

import numpy as np
import pytest

from protonet.curve import TrainingCurve, iterations_per_epoch
from protonet.io import SolverError


def _curve(n=10, lr=lambda i: 0.01, per_epoch=None):
    c = TrainingCurve("net", iters_per_epoch=per_epoch)
    for i in range(n):
        c.add_train(i, 1.0 / (i + 1), 2.0 / (i + 1), lr(i))
        if i % 4 == 0:
            c.add_test(0, i, [("loss", 0.5 / (i + 1), 1.0), ("acc", 0.1 * i, 0.0),
                              ("acc", 0.2 * i, 0.0)])
    return c


def test_history_round_trips_and_truncates_at_the_resume_iteration(tmp_path):
    c = _curve(per_epoch=4)
    c.save(tmp_path / "h.json")
    back = TrainingCurve("net")
    back.load(tmp_path / "h.json")
    assert back.to_dict() == c.to_dict()
    assert back.iters_per_epoch == 4
    back = TrainingCurve("net")
    back.load(tmp_path / "h.json", before=6)
    assert back.iters == [0, 1, 2, 3, 4, 5]
    assert back.loss == c.loss[:6] and back.smoothed == c.smoothed[:6] and back.lr == c.lr[:6]
    assert back.tests[(0, "loss")] == ([0, 4], c.tests[(0, "loss")][1][:2], 1.0)
    assert back.tests[(0, "acc[1]")] == ([0, 4], [0.0, 0.8], 0.0)
    back.load(tmp_path / "h.json", before=0)
    assert back.iters == [] and back.tests == {}


def test_a_bad_history_is_a_clear_error(tmp_path):
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"train": {"iter": [0, 1], "loss": [1.0]}, "tests": []}))
    with pytest.raises(SolverError, match=r"h\.json: not a training curve history"):
        TrainingCurve().load(path)


def test_loss_axis_is_logarithmic_and_a_fixed_lr_has_no_panel():
    fig = _curve().figure()
    loss, outputs = fig.axes[:2]
    assert loss.get_yscale() == "log"
    assert len([a for a in fig.axes if a.get_ylabel()]) == 2      # loss, test outputs: no lr panel
    assert "lr 0.01 (fixed)" in fig._suptitle.get_text()
    assert outputs.get_xlabel() == "iteration"


def test_a_changing_lr_gets_its_panel_and_a_negative_loss_a_linear_axis():
    c = _curve(lr=lambda i: 0.1 * 0.5 ** (i // 3))
    c.add_train(10, -0.5, -0.5, 0.001)         # a loss that goes below zero (e.g. -Dice)
    fig = c.figure()
    labelled = [a for a in fig.axes if a.get_ylabel()]
    assert [a.get_ylabel() for a in labelled] == ["loss", "test outputs", "learning rate"]
    assert labelled[0].get_yscale() == "linear"
    assert "(fixed)" not in fig._suptitle.get_text()


def test_x_axis_in_epochs_when_known():
    fig = _curve(per_epoch=4).figure()
    loss = fig.axes[0]
    xs = loss.lines[0].get_xdata()
    np.testing.assert_allclose(xs, np.arange(10) / 4.0)
    assert [a.get_xlabel() for a in fig.axes if a.get_xlabel()][-1] == "epoch"


def test_epoch_length_from_the_train_nets_lmdb(tmp_path):
    from protonet.data.db import LMDBWriter
    from protonet.net import Net
    from protonet.proto import caffe_pb2
    db = tmp_path / "db"
    datum = caffe_pb2.Datum(channels=1, height=1, width=1, float_data=[1.0])
    with LMDBWriter(str(db)) as w:
        for i in range(10):
            w.put(b"%08d" % i, datum.SerializeToString())
    text = ('layer { name: "d" type: "Data" top: "d" data_param { source: "%s" batch_size: 3 '
            'backend: LMDB } }' % db)
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    net = Net(str(path), caffe_pb2.TRAIN)
    p = caffe_pb2.SolverParameter()
    assert iterations_per_epoch(p, net) == 4                   # ceil(10 / 3), as DIGITS counts
    p.iter_size = 2
    assert iterations_per_epoch(p, net) == 2
    path.write_text('layer { name: "d" type: "DummyData" top: "d" '
                    'dummy_data_param { shape { dim: 1 } } }')
    assert iterations_per_epoch(p, Net(str(path), caffe_pb2.TRAIN)) is None


def test_a_resume_with_a_damaged_history_trains_on_with_a_warning(tmp_path, monkeypatch):
    from protonet.cli import main
    from logcapture import captured_log
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "d" type: "DummyData" top: "d" top: "t" dummy_data_param { '
        'shape { dim: 2 dim: 3 } shape { dim: 2 dim: 1 } } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "d" top: "ip" '
        'inner_product_param { num_output: 1 } }\n'
        'layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "t" top: "loss" }\n')
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" max_iter: 4 snapshot: 2 '
        'snapshot_prefix: "s" solver_mode: CPU display: 0\n')
    assert main(["train", "--solver", "solver.prototxt", "--no-tensorboard"]) == 0
    assert json.loads((tmp_path / "s_curve.json").read_text())["train"]["iter"] == [0, 1, 2, 3]
    (tmp_path / "s_curve.json").write_text("{not json")
    with captured_log() as out:
        assert main(["train", "--solver", "solver.prototxt", "--no-tensorboard",
                     "--snapshot", "s_iter_2.solverstate"]) == 0
    assert "s_curve.json: not a training curve history" in out.getvalue()
    assert json.loads((tmp_path / "s_curve.json").read_text())["train"]["iter"] == [2, 3]
