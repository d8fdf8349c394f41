"""TensorBoard event files, read back with TensorBoard's own reader."""
import glob
import json
import os

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import protonet
from protonet import tensorboard as tb
from protonet.proto import caffe_pb2

from logcapture import captured_log


def read_run(logdir):
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def texts(acc, tag):
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(tag + "/text_summary")]


def test_writer_holds_train_test_text_and_images(tmp_path):
    rng = np.random.RandomState(0)
    image = rng.rand(12, 10).astype(np.float32)
    pred = np.zeros((12, 10), bool)
    pred[3:8, 2:6] = True
    with tb.EventWriter(tmp_path, run="snap") as w:
        for it in range(5):
            w.on_train(it, 1.0 / (it + 1), 2.0 / (it + 1), 0.01 * (it + 1))
        w.on_test(0, 4, [("loss", 0.25, 1.0), ("acc", 0.5, 0.0), ("acc", 0.75, 0.0)])
        w.on_test(1, 4, [("dice", 0.875, 0.0)])
        w.on_overlays(0, 4, [(image, pred, ~pred), (image, pred, None)])
        w.on_text("solver", "base_lr: 0.01")
    acc = read_run(tmp_path)
    f32 = lambda v: float(np.float32(v))   # noqa: E731  (simple_value is a float32)
    assert scalars(acc, "train/loss") == [(i, f32(1.0 / (i + 1))) for i in range(5)]
    assert scalars(acc, "train/smoothed_loss") == [(i, f32(2.0 / (i + 1))) for i in range(5)]
    assert scalars(acc, "train/lr") == [(i, f32(0.01 * (i + 1))) for i in range(5)]
    assert scalars(acc, "test/loss") == [(4, 0.25)]
    assert scalars(acc, "test/acc_0") == [(4, 0.5)]
    assert scalars(acc, "test/acc_1") == [(4, 0.75)]
    assert scalars(acc, "test1/dice") == [(4, 0.875)]
    assert texts(acc, "solver") == [(0, "base_lr: 0.01")]
    shots = acc.Images("test/overlay_0")
    assert [(e.step, e.width, e.height) for e in shots] == [(4, 10, 12)]
    assert [e.step for e in acc.Images("test/overlay_1")] == [4]
    # the picture is viz.overlay's: decode it and compare
    import io
    from PIL import Image
    from protonet.viz import overlay
    got = np.asarray(Image.open(io.BytesIO(shots[0].encoded_image_string)))
    np.testing.assert_array_equal(got, overlay(image, pred, ~pred))


def test_resume_drops_later_steps_and_continues_without_gap_or_duplicate(tmp_path):
    with tb.EventWriter(tmp_path, run="snap") as w:
        for it in range(10):
            w.on_train(it, float(it), float(it), 0.1)
        w.on_test(0, 0, [("loss", 100.0, 1.0)])
        w.on_test(0, 5, [("loss", 105.0, 1.0)])
        w.on_overlays(0, 5, [(np.ones((4, 4)), np.eye(4, dtype=bool), None)])
        w.on_text("solver", "first")
    # resumed from the snapshot at iteration 5, right away (the same second: files must not clash)
    with tb.EventWriter(tmp_path, start_iter=5, run="snap") as w:
        for it in range(5, 8):
            w.on_train(it, 1000.0 + it, 1000.0 + it, 0.2)
        w.on_test(0, 5, [("loss", 205.0, 1.0)])
        w.on_text("solver", "second")
    files = sorted(glob.glob(str(tmp_path / "events.out.tfevents.*")))
    assert len(files) == 2 and files[0].endswith(".protonet-snap.0001") \
        and files[1].endswith(".protonet-snap.0002")
    acc = read_run(tmp_path)
    assert scalars(acc, "train/loss") == [(i, float(i)) for i in range(5)] + \
        [(i, 1000.0 + i) for i in range(5, 8)]
    assert [s for s, _ in scalars(acc, "train/lr")] == list(range(8))
    assert scalars(acc, "test/loss") == [(0, 100.0), (5, 205.0)]
    assert acc.Tags()["images"] == []                      # drawn at 5 by the first run: stale
    assert texts(acc, "solver") == [(0, "first"), (5, "second")]
    # the old file itself holds no stale step (any reader, not only one that purges)
    from tensorboardX.proto.event_pb2 import Event
    steps = [Event.FromString(p).step for _, p in tb._records(files[0])]
    assert max(steps) == 4
    # a TensorBoard that had read the old file before: the new file says to purge from 5
    first = Event.FromString(tb._records(files[1])[1][1])
    assert first.step == 5 and first.session_log.status == first.session_log.START


def test_resume_rewrites_only_its_own_run(tmp_path):
    with tb.EventWriter(tmp_path, run="a") as w:
        w.on_train(7, 1.0, 1.0, 0.1)
    with tb.EventWriter(tmp_path, run="b") as w:
        w.on_train(7, 2.0, 2.0, 0.1)
    before = {p: os.path.getsize(p) for p in glob.glob(str(tmp_path / "*protonet-a*"))}
    with tb.EventWriter(tmp_path, start_iter=3, run="b"):
        pass
    assert {p: os.path.getsize(p) for p in glob.glob(str(tmp_path / "*protonet-a*"))} == before
    # b's first file held only step 7: nothing of it is left
    assert len(glob.glob(str(tmp_path / "*protonet-b*"))) == 1


def test_a_run_from_iteration_0_replaces_the_earlier_curves(tmp_path):
    with tb.EventWriter(tmp_path, run="r") as w:
        for it in range(6):
            w.on_train(it, 1.0, 1.0, 0.1)
        w.on_text("solver", "old")
    with tb.EventWriter(tmp_path, run="r") as w:
        for it in range(3):
            w.on_train(it, 2.0, 2.0, 0.1)
    acc = read_run(tmp_path)
    assert scalars(acc, "train/loss") == [(0, 2.0), (1, 2.0), (2, 2.0)]
    assert "solver/text_summary" not in acc.Tags()["tensors"]


def test_a_torn_last_record_is_dropped_on_resume(tmp_path):
    with tb.EventWriter(tmp_path, run="r") as w:
        for it in range(4):
            w.on_train(it, float(it), float(it), 0.1)
    path, = glob.glob(str(tmp_path / "events*"))
    with open(path, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x00\x00\x00\x00torn")     # a writer that died mid-record
    with tb.EventWriter(tmp_path, start_iter=2, run="r") as w:
        w.on_train(2, 9.0, 9.0, 0.1)
    assert scalars(read_run(tmp_path), "train/loss") == [(0, 0.0), (1, 1.0), (2, 9.0)]


def test_without_tensorboardx_training_is_told_once(monkeypatch, tmp_path):
    monkeypatch.setattr(tb, "available", lambda: False)
    monkeypatch.setattr(tb, "_warned_missing", False)
    with captured_log() as out:
        assert tb.open_writer(tmp_path) is None
        assert tb.open_writer(tmp_path) is None
    assert out.getvalue().count('pip install "protonet[tensorboard]"') == 1
    assert os.listdir(tmp_path) == []


def test_run_texts_show_solver_and_net_files(tmp_path):
    net = tmp_path / "net.prototxt"
    net.write_text('name: "n"  # a comment\n')
    other = tmp_path / "val.prototxt"
    other.write_text('name: "v"\n')
    p = caffe_pb2.SolverParameter(net=str(net), base_lr=0.5)
    got = dict(tb.run_texts(p))
    assert set(got) == {"solver", "net"}
    assert got["net"] == '```\nname: "n"  # a comment\n```'
    assert "base_lr: 0.5" in got["solver"]
    p = caffe_pb2.SolverParameter(train_net=str(net), test_net=[str(other), str(net)])
    got = dict(tb.run_texts(p))
    assert set(got) == {"solver", "net", "test_net_0"}     # test net #1 is the train net's file
    assert 'name: "v"' in got["test_net_0"]


SEG_NET = """
name: "seg"
layer { name: "in" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 3 dim: 1 dim: 6 dim: 5 } shape { dim: 3 dim: 1 dim: 6 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "up"
  convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "score" type: "Crop" bottom: "up" bottom: "data" top: "score" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
  loss_param { ignore_label: 255 } }
layer { name: "acc" type: "Accuracy" bottom: "score" bottom: "label" top: "acc"
  accuracy_param { ignore_label: 255 } }
"""


def _seg_net(tmp_path, text=SEG_NET):
    path = tmp_path / "seg.prototxt"
    path.write_text(text)
    return protonet.Net(str(path), protonet.TEST)


def test_segmentation_samples_find_score_label_and_image(tmp_path):
    net = _seg_net(tmp_path)
    found = tb.SegmentationSamples.find(net, count=4)
    # Crop(up, data) also pairs a score-like blob with a data-layer blob: only a layer
    # whose top is a net output counts; score, label and data reach theirs through Splits
    assert len(net.layers) == 8 and net.param.layer[1].type == "Split"
    assert (found.image, found.score, found.label) == ("data", "score", "label")
    rng = np.random.RandomState(1)
    data = rng.rand(3, 1, 6, 5).astype(np.float32)
    label = (rng.rand(3, 1, 6, 5) > 0.5).astype(np.float32)
    label[0, 0, 0, 0] = 255                     # ignore_label: not in the true mask
    net.forward(data=data, label=label)
    found.take(net)
    found.take(net)                             # a second batch tops up to count
    assert len(found.samples) == 4
    score = net.blobs["score"].data
    img, pred, true = found.samples[3]          # the second batch's first sample
    np.testing.assert_array_equal(img[:, :, 0], data[0, 0])
    np.testing.assert_array_equal(pred, score[0].argmax(axis=0) == 1)
    np.testing.assert_array_equal(true, label[0, 0] == 1)
    assert not found.samples[0][2][0, 0]
    found.take(net)
    assert len(found.samples) == 4
    found.reset()
    assert found.samples == []


def test_a_classifier_is_not_a_segmentation_net(tmp_path):
    text = """
layer { name: "in" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } shape { dim: 2 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "score" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
"""
    assert tb.SegmentationSamples.find(_seg_net(tmp_path, text)) is None


# -- protonet train: what the events hold, against the log ---------------------------------
NET = """name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "target"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 1 }
    data_filler { type: "constant" value: 1 } data_filler { type: "constant" value: 0.5 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 1 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }
layer { name: "half" type: "Power" bottom: "ip" top: "half" power_param { scale: 0.5 }
  include { phase: TEST } }
"""

SOLVER = """net: "net.prototxt"
type: "SGD"
base_lr: 0.05
momentum: 0.9
lr_policy: "step"
gamma: 0.5
stepsize: 4
max_iter: 10
display: 1
average_loss: 3
snapshot: 5
snapshot_prefix: "runs/a/snap"
test_iter: 2
test_interval: 5
solver_mode: CPU
random_seed: 3
"""


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    os.makedirs("runs/a")
    return tmp_path


def _train(*args, curve=False):
    from protonet.cli import main
    more = [] if curve else ["--no-curve"]          # matplotlib's drawing: only where it is looked at
    with captured_log() as out:
        assert main(["train", "--solver", "solver.prototxt"] + list(args) + more) == 0
    return out.getvalue()


def _logged(text, pattern):
    import re
    return [(int(m.group(1)), float(m.group(2))) for m in re.finditer(pattern, text)]


def test_train_events_equal_the_logged_values(work):
    text = _train()
    acc = read_run("runs/a")
    # "Iteration N (...), loss = X": the smoothed loss, as Caffe prints it (%g)
    logged = _logged(text, r"Iteration (\d+) \(.*\), loss = (\S+)")
    assert [s for s, _ in logged] == list(range(10))
    got = scalars(acc, "train/smoothed_loss")
    assert [s for s, _ in got] == list(range(10))
    np.testing.assert_allclose([v for _, v in got], [v for _, v in logged], rtol=1e-5)
    # the raw loss: its mean over the last 3 iterations is the smoothed loss
    raw = [v for _, v in scalars(acc, "train/loss")]
    np.testing.assert_allclose(np.mean(raw[7:10]), got[9][1], rtol=1e-5)
    assert raw[0] == got[0][1]
    lrs = _logged(text, r"Iteration (\d+), lr = (\S+)")
    assert scalars(acc, "train/lr") == [(s, float(np.float32(0.05 * 0.5 ** (s // 4))))
                                        for s in range(10)]
    assert [(s, float(np.float32(v))) for s, v in lrs] == scalars(acc, "train/lr")
    # "Test net output #k: name = X" at iterations 0, 5 and 10; "half" has a value per sample
    tests = _logged(text, r"Iteration (\d+), Testing net \(#0\)\n(?:.*\n)*?.*Test net output #0: "
                          r"half = (\S+)")
    assert [s for s, _ in tests] == [0, 5, 10]
    np.testing.assert_allclose([v for _, v in scalars(acc, "test/half_0")],
                               [v for _, v in tests], rtol=1e-5)
    assert [s for s, _ in scalars(acc, "test/half_3")] == [0, 5, 10]
    assert [s for s, _ in scalars(acc, "test/loss")] == [0, 5, 10]
    got = dict(texts(acc, "solver"))
    assert list(got) == [0] and "base_lr: 0.05" in got[0] and "stepsize: 4" in got[0]
    assert texts(acc, "net") == [(0, "```\n%s\n```" % NET.rstrip("\n"))]
    assert acc.Tags()["images"] == []           # a regression net: no overlays
    assert "tensorboard --logdir runs/a" in text


def test_resumed_train_continues_the_curves(work):
    _train(curve=True)
    straight = scalars(read_run("runs/a"), "train/loss")
    # resume from iteration 5 and stop at 8: the first run's 8, 9 and its test at 10 go
    _train("--snapshot", "runs/a/snap_iter_5.solverstate", "--iterations", "8", curve=True)
    acc = read_run("runs/a")
    got = scalars(acc, "train/loss")
    assert got == straight[:8]          # resuming is bit exact: the same values, once each
    smoothed = scalars(acc, "train/smoothed_loss")
    assert [s for s, _ in smoothed] == list(range(8))
    # the smoothing starts again at a resume, as Caffe's: iteration 5's is the second run's
    assert smoothed[5][1] == got[5][1] != np.mean([v for _, v in got[3:6]])
    assert [s for s, _ in scalars(acc, "test/half_0")] == [0, 5]
    assert [s for s, _ in texts(acc, "solver")] == [0, 5]
    # the PNG curve's history is the whole run too, up to the resumed run's end
    history = json.loads(open("runs/a/snap_curve.json").read())
    assert history["train"]["iter"] == list(range(8))
    np.testing.assert_array_equal(np.float32(history["train"]["loss"]),
                                  np.float32([v for _, v in straight[:8]]))
    half, = [t for t in history["tests"] if t["output"] == "half[0]"]
    assert half["iter"] == [0, 5]


def test_two_runs_compare_in_one_tensorboard(work):
    _train("--iterations", "3")
    with open("solver.prototxt", "a") as f:
        f.write('snapshot_prefix: "runs/b/snap"\nbase_lr: 0.01\n')
    text = open("solver.prototxt").read().replace('snapshot_prefix: "runs/a/snap"\n', "")
    text = text.replace("base_lr: 0.05\n", "")
    open("solver.prototxt", "w").write(text)
    os.makedirs("runs/b")
    _train("--iterations", "3")
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    mux = EventMultiplexer()
    mux.AddRunsFromDirectory("runs")
    mux.Reload()
    assert sorted(mux.Runs()) == ["a", "b"]
    lr = {run: [e.value for e in mux.Scalars(run, "train/lr")] for run in ("a", "b")}
    assert lr == {"a": [np.float32(0.05)] * 3, "b": [np.float32(0.01)] * 3}


def test_no_tensorboard_flag_and_other_folder(work):
    _train("--iterations", "2", "--no-tensorboard")
    assert not glob.glob("runs/a/events*")
    _train("--iterations", "2", "--tensorboard", "tb")
    assert [s for s, _ in scalars(read_run("tb"), "train/loss")] == [0, 1]


def test_train_without_tensorboardx_trains_and_says_how_to_get_curves(work, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "tensorboardX", None)     # import tensorboardX -> ImportError
    monkeypatch.setattr(tb, "_warned_missing", False)
    text = _train("--iterations", "2") + _train("--iterations", "2")
    assert text.count('pip install "protonet[tensorboard]"') == 1
    assert os.path.exists("runs/a/snap_iter_2.caffemodel")
    assert not glob.glob("runs/a/events*")


def test_an_unwritable_events_folder_stops_no_training(work):
    open("blocked", "w").close()                  # a file where the folder should be
    text = _train("--iterations", "2", "--tensorboard", "blocked/tb")
    assert "TensorBoard events are not written to blocked/tb" in text
    assert os.path.exists("runs/a/snap_iter_2.caffemodel")
