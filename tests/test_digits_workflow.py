"""DIGITS' workflow end to end: the published FCN-AlexNet (with the tutorial's 2-class
edits, as a copy made here) trains on a Sunnybrook-layout dataset through --dataset,
with the unchanged third-party Dice plugin; weights carry over with --weights, and
RGB weights on a gray dataset fail with a clear message."""
import os
import re
from pathlib import Path

import numpy as np
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


# -- net surgery: ImageNet AlexNet -> FCN-AlexNet ------------------------------------------
# BVLC AlexNet's layers (names, kernels, strides, pads, groups, 227 x 227 input: pool5 is
# 6 x 6), at reduced widths so the test stays small: the real caffemodel is 233 MB. fc6 keeps
# AlexNet's geometry, an InnerProduct over pool5's C x 6 x 6 that FCN-AlexNet's fc6 convolution
# (kernel 6) takes reshaped.
WIDTHS = {96: 8, 256: 16, 384: 12, 4096: 32, 1000: 10}
ALEXNET_LAYERS = [  # name, type, num_output, kernel, stride, pad, group
    ("conv1", "Convolution", 96, 11, 4, 0, 1), ("conv2", "Convolution", 256, 5, 1, 2, 2),
    ("conv3", "Convolution", 384, 3, 1, 1, 1), ("conv4", "Convolution", 384, 3, 1, 1, 2),
    ("conv5", "Convolution", 256, 3, 1, 1, 2), ("fc6", "InnerProduct", 4096, 0, 0, 0, 0),
    ("fc7", "InnerProduct", 4096, 0, 0, 0, 0), ("fc8", "InnerProduct", 1000, 0, 0, 0, 0)]


def _alexnet_deploy():
    """models/bvlc_alexnet/deploy.prototxt's structure at WIDTHS."""
    text = ['name: "AlexNet"', 'layer { name: "data" type: "Input" top: "data" '
            'input_param { shape { dim: 1 dim: 3 dim: 227 dim: 227 } } }']
    bottom = "data"
    for name, kind, n, k, s, p, g in ALEXNET_LAYERS:
        if kind == "Convolution":
            text.append('layer { name: "%s" type: "Convolution" bottom: "%s" top: "%s" '
                        'convolution_param { num_output: %d kernel_size: %d stride: %d pad: %d '
                        'group: %d } }' % (name, bottom, name, WIDTHS[n], k, s, p, g))
        else:
            text.append('layer { name: "%s" type: "InnerProduct" bottom: "%s" top: "%s" '
                        'inner_product_param { num_output: %d } }' % (name, bottom, name, WIDTHS[n]))
        bottom = name
        if name in ("conv1", "conv2", "conv5"):     # norm1 and norm2 keep the shape
            pool = "pool" + name[-1]
            text.append('layer { name: "%s" type: "Pooling" bottom: "%s" top: "%s" '
                        'pooling_param { pool: MAX kernel_size: 3 stride: 2 } }'
                        % (pool, bottom, pool))
            bottom = pool
    return "\n".join(text) + "\n"


def _alexnet_v1_caffemodel(path, seed=0):
    """Random weights saved as bvlc_alexnet.caffemodel is: a V1 net (`layers`), 4-d legacy
    blob dims (an InnerProduct's weights as 1 x 1 x out x in, biases as 1 x 1 x 1 x out)."""
    rng = np.random.default_rng(seed)
    shapes = {}
    channels, ip_in = 3, None
    for name, kind, n, k, s, p, g in ALEXNET_LAYERS:
        out = WIDTHS[n]
        if kind == "Convolution":
            shapes[name] = ((out, channels // g, k, k), (1, 1, 1, out))
            channels = out
            ip_in = channels * 6 * 6
        else:
            shapes[name] = ((1, 1, out, ip_in), (1, 1, 1, out))
            ip_in = out
    param = caffe_pb2.NetParameter(name="AlexNet")
    V1 = caffe_pb2.V1LayerParameter
    values = {}
    for name, kind, *_ in ALEXNET_LAYERS:
        layer = param.layers.add(name=name, type=V1.CONVOLUTION if kind == "Convolution"
                                 else V1.INNER_PRODUCT)
        values[name] = []
        for shape in shapes[name]:
            arr = rng.normal(0, 0.05, shape).astype(np.float32)
            blob = layer.blobs.add(num=shape[0], channels=shape[1], height=shape[2],
                                   width=shape[3])
            blob.data.extend(arr.ravel().tolist())
            values[name].append(arr)
    with open(path, "wb") as f:
        f.write(param.SerializeToString())
    return values


def _fcn_alexnet_small(tmp_path):
    """The tutorial's FCN-AlexNet (DIGITS' net, 2 classes, Dice) at the same WIDTHS."""
    text = Path(tutorial_copy(tmp_path)).read_text()
    for n in (96, 256, 384, 4096):
        text = text.replace("num_output: %d\n" % n, "num_output: %d\n" % WIDTHS[n])
    path = tmp_path / "fcn_alexnet_small.prototxt"
    path.write_text(text)
    return str(path)


def _params(path):
    from protonet.io import blob_shape, blobproto_to_array, read_net_binary
    return {lp.name: [blobproto_to_array(b).reshape(blob_shape(b)) for b in lp.blobs]
            for lp in read_net_binary(path).layer if len(lp.blobs)}


def test_surgery_alexnet_into_fcn_alexnet_then_finetune(tmp_path, datasets, capsys):
    gray, _ = datasets
    source = str(tmp_path / "bvlc_alexnet.caffemodel")
    alexnet = _alexnet_v1_caffemodel(source)
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(_alexnet_deploy())
    target = _fcn_alexnet_small(tmp_path)
    init = str(tmp_path / "fcn_alexnet_init.caffemodel")

    # a gray net: conv1's RGB weights do not fit, and the error says what to do
    capsys.readouterr()
    assert main(["surgery", "--source-weights", source, "--target-model", target,
                 "--input-shape", "1,1,256,256", "--out", init]) == 1
    captured = capsys.readouterr()
    assert "conv1" in captured.out and "DOES NOT FIT" in captured.out
    assert "3 input channels (8x3x11x11)" in captured.out and "(8x1x11x11)" in captured.out
    assert "--sum-input-channels" in captured.out and "nothing written" in captured.err
    assert not os.path.exists(init)

    assert main(["surgery", "--source-weights", source, "--source-model", str(deploy),
                 "--target-model", target, "--sum-input-channels", "--out", init]) == 0
    out = capsys.readouterr().out
    assert "reshaped 32x576 -> 32x16x6x6 (InnerProduct -> Convolution)" in out
    assert "summed over 3 input channels: 8x3x11x11 -> 8x1x11x11" in out
    assert re.search(r"fc8 +only in the source", out)
    assert re.search(r"score_fr +only in the target", out) and re.search(r"upscore +only", out)
    got = _params(init)
    np.testing.assert_allclose(got["conv1"][0], alexnet["conv1"][0].sum(axis=1, keepdims=True),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got["conv1"][1], alexnet["conv1"][1].ravel())
    for name in ("conv2", "conv3", "conv4", "conv5"):
        np.testing.assert_array_equal(got[name][0], alexnet[name][0])
    # fc6: the InnerProduct's row of 16*6*6 inputs is the convolution's 16 x 6 x 6 kernel
    assert got["fc6"][0].shape == (32, 16, 6, 6)
    np.testing.assert_array_equal(got["fc6"][0].reshape(32, -1), alexnet["fc6"][0][0, 0])
    np.testing.assert_array_equal(got["fc7"][0][:, :, 0, 0], alexnet["fc7"][0][0, 0])
    np.testing.assert_array_equal(got["fc7"][1], alexnet["fc7"][1].ravel())
    assert "fc8" not in got and got["score_fr"][0].shape == (2, 32, 1, 1)
    # --rename copies a layer of another name (here one that does not fit: 10 classes into 2);
    # --skip leaves a layer at its initial values (DIGITS' net has no fillers: zeros)
    other = str(tmp_path / "other.caffemodel")
    assert main(["surgery", "--source-weights", source, "--target-model", target,
                 "--input-shape", "1,1,256,256", "--skip", "conv1", "--rename", "fc8:score_fr",
                 "--out", other]) == 1
    assert re.search(r"score_fr +<- fc8 +DOES NOT FIT: param 0: source shape 10x32 \(320 values\), "
                     r"target shape 2x32x1x1 \(64 values\)", capsys.readouterr().out)
    assert main(["surgery", "--source-weights", source, "--target-model", target,
                 "--input-shape", "1,1,256,256", "--skip", "conv1", "--out", other]) == 0
    assert re.search(r"conv1 +skipped \(--skip\)", capsys.readouterr().out)
    skipped = _params(other)
    assert skipped["conv1"][0].shape == (8, 1, 11, 11) and not skipped["conv1"][0].any()
    np.testing.assert_array_equal(skipped["fc6"][0], got["fc6"][0])
    # refuses to overwrite; --force replaces
    assert main(["surgery", "--source-weights", source, "--target-model", target,
                 "--sum-input-channels", "--out", init]) == 1
    assert "--force" in capsys.readouterr().err

    # fine-tune on the gray dataset from the surgery's weights
    run = tmp_path / "ft"
    assert main(["train", "--network", target, "--dataset", gray, "--epochs", "1",
                 "--base-lr", "1e-4", "--out", str(run), "--no-curve", "--weights", init,
                 "--python-layers", str(SHARED / "plugins" / "digits_python_layers.py")]) == 0
    tuned = _params(str(run / "snapshot_iter_4.caffemodel"))
    for name in ("conv1", "conv3", "fc6", "fc7"):
        start, end = got[name][0], tuned[name][0]
        # the copied weights, moved a little by 4 iterations; DIGITS' net has no fillers, so a
        # layer that was not copied would still be about zero
        assert np.linalg.norm(end - start) < 0.05 * np.linalg.norm(start), name
    assert np.any(tuned["score_fr"][0] != got["score_fr"][0])          # it trained


def test_draw_writes_the_graph(tmp_path, capsys):
    net = Path(__file__).resolve().parents[1] / "examples" / "sunnybrook" / "fcn8s.prototxt"
    dot = tmp_path / "net.dot"
    assert main(["draw", str(net), str(dot), "--phase", "TEST"]) == 0
    text = dot.read_text()
    assert text.startswith("digraph") and '"conv1_1_Convolution"' in text
    assert '"score_fr_Convolution" -> "score_fr_blob"' in text
    svg = tmp_path / "net.svg"
    assert main(["draw", str(net), str(svg)]) == 0        # Graphviz's dot (.ci/run installs it)
    body = svg.read_text()
    assert body.lstrip().startswith("<?xml") and "<svg" in body and "conv1_1" in body
    assert main(["draw", str(net), str(tmp_path / "net")]) == 1
    assert "extension" in capsys.readouterr().err
    # pycaffe's caffe.draw renders through the same dot without pydot
    import caffe.draw
    from protonet.io import read_net
    png = tmp_path / "net.png"
    caffe.draw.draw_net_to_file(read_net(str(net)), str(png), "TB")
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_draw_without_graphviz_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    import shutil
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    net = Path(__file__).resolve().parents[1] / "examples" / "sunnybrook" / "fcn8s.prototxt"
    assert main(["draw", str(net), str(tmp_path / "net.svg")]) == 1
    err = capsys.readouterr().err
    assert "Graphviz's `dot` program" in err and "apt-get install graphviz" in err
    assert not (tmp_path / "net.svg").exists()
    assert main(["draw", str(net), str(tmp_path / "net.dot")]) == 0     # DOT needs nothing


def test_a_rerun_into_an_earlier_run_is_refused_unless_forced(tmp_path, datasets, capsys):
    from protonet.digits import prepare_run
    gray, _ = datasets
    net = tutorial_copy(tmp_path)
    out = tmp_path / "run"
    prepare_run(net, gray, str(out), 1)
    (out / "snapshot_iter_9.caffemodel").write_bytes(b"stale")
    (out / "snapshot_iter_9.solverstate").write_bytes(b"stale")
    (out / "snapshot_curve.json").write_text("{}")
    (out / "events.out.tfevents.1796640000.host.protonet-snapshot.0001").write_bytes(b"stale")
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["train", "--network", net, "--dataset", gray, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--force" in err
    assert (out / "snapshot_iter_9.caffemodel").exists()
    # the ranks of a multi-process run (--gpu 0,1 children, mpirun) write the same files
    # without refusing or deleting each other's
    prepare_run(net, gray, str(out), 1, check_out=False)
    assert (out / "snapshot_iter_9.caffemodel").exists()
    prepare_run(net, gray, str(out), 1, force=True)
    assert sorted(os.listdir(out)) == ["notes.txt", "solver.prototxt", "train_val.prototxt"]
