"""DIGITS' workflow end to end: the published FCN-AlexNet (with the tutorial's 2-class
edits, as a copy made here) trains on a Sunnybrook-layout dataset through --dataset,
with the unchanged third-party Dice plugin; weights carry over with --weights, and
RGB weights on a gray dataset fail with a clear message."""
import os
from pathlib import Path

import pytest

from protonet.cli import main
from protonet.data.sunnybrook import convert
from protonet.data.synth import synth_sunnybrook
from protonet.io import read_net, read_solver
from protonet.proto import caffe_pb2

from parity import SHARED

DICE_LAYER = """
layer { type: 'Python' name: 'dice' bottom: 'score' bottom: 'label' top: 'dice'
  python_param { module: "digits_python_layers" layer: "Dice" } include { stage: "val" } }
"""


def tutorial_copy(tmp_path):
    """The DIGITS net, unchanged except the tutorial's edits: 2 classes and the Dice layer."""
    text = (SHARED / "models" / "digits" / "fcn_alexnet.prototxt").read_text()
    # score_fr and upscore: num_output 21 -> 2, upscore group 21 -> 2
    assert text.count("num_output: 21") == 2 and text.count("group: 21") == 1
    text = text.replace("num_output: 21", "num_output: 2").replace("group: 21", "group: 2")
    path = tmp_path / "fcn_alexnet_2class.prototxt"
    path.write_text(text + DICE_LAYER)
    return str(path)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sb")
    synth = synth_sunnybrook(str(root / "synth"), cases=2, images_per_case=3, seed=5)
    gray = str(root / "gray")
    rgb = str(root / "rgb")
    # DIGITS' own split (by image): 4 train and 2 val images of 2 patients
    convert(synth["images"], synth["contours"], gray, channels="gray", val_pct=34, progress=False,
            val_by="image", preview=False)
    convert(synth["images"], synth["contours"], rgb, channels="rgb", val_pct=34, progress=False,
            val_by="image", preview=False)
    return gray, rgb


def test_digits_fcn_alexnet_trains_via_dataset(tmp_path, datasets, caplog):
    gray, _ = datasets
    net = tutorial_copy(tmp_path)
    out = tmp_path / "run"
    status = main(["train", "--network", net, "--dataset", gray, "--epochs", "1",
                   "--base-lr", "1e-4", "--out", str(out), "--no-curve",
                   "--python-layers", str(SHARED / "plugins" / "digits_python_layers.py")])
    assert status == 0
    solver = read_solver(str(out / "solver.prototxt"))
    assert solver.max_iter == 4                      # 4 training images, batch 1, 1 epoch
    assert list(solver.test_iter) == [2] and solver.test_interval == 4
    assert list(solver.train_state.stage) == ["train"] and list(solver.test_state[0].stage) == ["val"]
    bound = read_net(str(out / "train_val.prototxt"))
    sources = {(l.name, l.include[0].phase): l.data_param.source for l in bound.layer if l.type == "Data"}
    assert sources[("data", caffe_pb2.TRAIN)].endswith(os.path.join("train_db", "features"))
    assert sources[("label", caffe_pb2.TEST)].endswith(os.path.join("val_db", "labels"))
    assert (out / "snapshot_iter_4.caffemodel").exists()
    assert (out / "snapshot_iter_4.solverstate").exists()
    # the repeatable form: the written solver runs with --solver alone
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert main(["train", "--solver", str(out / "solver.prototxt"), "--iterations", "1",
                     "--no-curve", "--python-layers",
                     str(SHARED / "plugins" / "digits_python_layers.py")]) == 0
    finally:
        os.chdir(cwd)


def test_finetune_weights_carry_over_and_rgb_into_gray_is_clear(tmp_path, datasets, capsys):
    gray, rgb = datasets
    net = str(tmp_path / "fcn8s.prototxt")
    src = Path(__file__).resolve().parents[1] / "examples" / "sunnybrook" / "fcn8s.prototxt"
    with open(net, "w") as f:
        f.write(src.read_text())
    first = tmp_path / "first"
    template = src.parent / "solver_fcn8s.prototxt"
    assert main(["train", "--solver", str(template), "--network", net, "--dataset", rgb,
                 "--epochs", "1", "--out", str(first), "--no-curve"]) == 0
    written = read_solver(str(first / "solver.prototxt"))
    assert written.type == "Adam" and abs(written.base_lr - 1e-3) < 1e-9 and written.max_iter == 4
    weights = str(first / "snapshot_iter_4.caffemodel")
    second = tmp_path / "second"
    assert main(["train", "--network", net, "--dataset", rgb, "--epochs", "1", "--base-lr", "1e-3",
                 "--solver-type", "Adam", "--out", str(second), "--no-curve",
                 "--weights", weights]) == 0
    # RGB (3-channel) conv1 weights into a gray (1-channel) net: a clear error, exit 1
    third = tmp_path / "third"
    capsys.readouterr()
    status = main(["train", "--network", net, "--dataset", gray, "--epochs", "1",
                   "--base-lr", "1e-3", "--out", str(third), "--no-curve", "--weights", weights])
    err = capsys.readouterr().err
    assert status == 1
    assert "conv1_1" in err and "16x3x3x3" in err and "16x1x3x3" in err
    assert "--channels rgb" in err


def _solver_for(tmp_path, datasets, name, *flags):
    gray, _ = datasets
    out = tmp_path / name
    from protonet.digits import prepare_run
    kwargs = dict(flags)
    template = kwargs.pop("template", None)
    path = prepare_run(tutorial_copy(tmp_path), gray, str(out), 1, template=template, **kwargs)
    return read_solver(path)


def test_solver_settings_are_digits_caffe_train(tmp_path, datasets):
    # caffe_train.py: momentum 0.9 (not for AdaGrad/RMSProp), weight_decay = base_lr / 100,
    # test_initialization left at Caffe's default (a test at iteration 0); policies take the
    # model form's defaults, their gamma scaled to the run (scale = max_iter / 100)
    s = _solver_for(tmp_path, datasets, "a", ("base_lr", 1e-4))
    assert s.momentum == pytest.approx(0.9) and s.weight_decay == pytest.approx(1e-6)
    assert not s.HasField("test_initialization") and s.test_initialization
    scale = s.max_iter / 100.0
    s = _solver_for(tmp_path, datasets, "b", ("base_lr", 0.01), ("lr_policy", "exp"))
    assert s.gamma == pytest.approx(0.95 ** (1 / scale))
    s = _solver_for(tmp_path, datasets, "c", ("base_lr", 0.01), ("lr_policy", "inv"))
    assert s.gamma == pytest.approx(0.1 / scale) and s.power == pytest.approx(0.5)
    s = _solver_for(tmp_path, datasets, "d", ("base_lr", 0.01), ("lr_policy", "poly"))
    assert s.power == pytest.approx(3.0)
    s = _solver_for(tmp_path, datasets, "e", ("base_lr", 0.01), ("solver_type", "RMSProp"))
    assert not s.HasField("momentum") and s.rms_decay == pytest.approx(0.99)


def test_command_line_settings_win_over_the_template(tmp_path, datasets):
    template = read_solver(str(Path(__file__).resolve().parents[1] / "examples" / "sunnybrook"
                               / "solver_scratch.prototxt"))
    s = _solver_for(tmp_path, datasets, "t", ("template", template))
    assert s.type == "SGD" and s.base_lr == pytest.approx(1e-4) and s.lr_policy == "fixed"
    s = _solver_for(tmp_path, datasets, "u", ("template", template), ("base_lr", 0.01),
                    ("lr_policy", "step"), ("solver_type", "Adam"))
    assert s.type == "Adam" and s.base_lr == pytest.approx(0.01) and s.lr_policy == "step"
    assert s.gamma == pytest.approx(0.1) and s.stepsize >= 1
    assert s.weight_decay == pytest.approx(1e-6)            # the rest is the template's


def test_python_layers_beside_the_network_are_found(tmp_path, datasets, monkeypatch):
    gray, _ = datasets
    folder = tmp_path / "netdir"
    folder.mkdir()
    (folder / "digits_python_layers.py").write_text(
        (SHARED / "plugins" / "digits_python_layers.py").read_text())
    net = folder / "net.prototxt"
    net.write_text(Path(tutorial_copy(tmp_path)).read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(__import__("sys").modules, "digits_python_layers", raising=False)
    from protonet import python_layer
    monkeypatch.setattr(python_layer, "_extra_paths", [])
    assert main(["train", "--network", str(net), "--dataset", gray, "--epochs", "1",
                 "--base-lr", "1e-4", "--out", str(tmp_path / "run"), "--no-curve"]) == 0
