"""Python layer plugins: DIGITS' published Dice layer unchanged, our Dice and DiceLoss
(layers/dice.py), plugin errors, and plugins with learnable blobs under the solver."""
import textwrap
import traceback

import numpy as np
import pytest

import caffe
from protonet import python_layer
from protonet.net import NetError
from protonet.proto import caffe_pb2

from gradcheck import check_gradient, make_layer
from parity import SHARED

PLUGINS = SHARED / "plugins"


@pytest.fixture
def plugin_path(monkeypatch):
    """DIGITS' plugin folder on the Python-layer search path, for this test only."""
    monkeypatch.setattr(python_layer, "_extra_paths", [])
    python_layer.add_search_path(PLUGINS)
    return PLUGINS


def write(folder, name, text):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return str(path)


# A small FCN in DIGITS' train/val form: stage "val" adds the Dice metrics.
FCN_TRAIN_VAL = """
name: "tiny_fcn"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 3 dim: 1 dim: 12 dim: 12 } } }
layer { name: "label" type: "Input" top: "label"
        input_param { shape { dim: 3 dim: 1 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.5 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "score_fr" type: "Convolution" bottom: "pool1" top: "score_fr"
        convolution_param { num_output: 2 kernel_size: 1
                            weight_filler { type: "gaussian" std: 1 }
                            bias_filler { type: "constant" value: 0 } } }
layer { name: "upscore" type: "Deconvolution" bottom: "score_fr" top: "upscore"
        param { lr_mult: 0 }
        convolution_param { num_output: 2 group: 2 bias_term: false kernel_size: 4 stride: 2
                            weight_filler { type: "bilinear" } } }
layer { name: "score" type: "Crop" bottom: "upscore" bottom: "data" top: "score"
        crop_param { axis: 2 offset: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
        exclude { stage: "deploy" } }
layer { name: "dice" type: "Python" bottom: "score" bottom: "label" top: "dice"
        python_param { module: "digits_python_layers" layer: "Dice" }
        include { stage: "val" } }
layer { name: "our_dice" type: "Python" bottom: "score" bottom: "label" top: "our_dice"
        python_param { module: "dice" layer: "Dice" }
        include { stage: "val" } }
"""


def dice_by_counting(scores, labels):
    """Mean over images of 2|P and L| / (|P| + |L|), counted pixel by pixel."""
    values = []
    for n in range(scores.shape[0]):
        both = pred_area = label_area = 0
        for y in range(scores.shape[2]):
            for x in range(scores.shape[3]):
                fg_pred = scores[n, 1, y, x] > scores[n, 0, y, x]
                fg_label = labels[n, 0, y, x] == 1
                pred_area += fg_pred
                label_area += fg_label
                both += fg_pred and fg_label
        values.append(2.0 * both / (pred_area + label_area))
    return float(np.mean(values))


def fcn_inputs(seed):
    r = np.random.default_rng(seed)
    data = r.normal(0, 1, (3, 1, 12, 12)).astype(np.float32)
    labels = np.zeros((3, 1, 12, 12), np.float32)
    for n in range(3):
        y, x = r.integers(1, 6, 2)
        labels[n, 0, y:y + 5 + n, x:x + 4] = 1      # a blob of foreground per image
    return data, labels


def test_digits_dice_layer_runs_unchanged_in_train_val_net(tmp_path, plugin_path):
    prototxt = write(tmp_path, "train_val.prototxt", FCN_TRAIN_VAL)
    caffe.set_random_seed(4)      # weights whose predictions give 0 < dice < 1 on these inputs
    val = caffe.Net(prototxt, caffe.TEST, stages=["val"])
    assert [l.type for l in val.layers][-2:] == ["Python", "Python"]
    assert val.layer_dict["dice"].plugin_name == "digits_python_layers.Dice"
    checked = 0
    for seed in range(4):
        data, labels = fcn_inputs(seed)
        out = val.forward(data=data, label=labels)
        scores = val.blobs["score"].data
        assert scores.shape == (3, 2, 12, 12)
        expected = dice_by_counting(scores, labels)
        assert out["dice"].shape == (1,)
        assert 0 < expected < 1
        np.testing.assert_allclose(out["dice"][0], expected, rtol=1e-6)
        assert out["our_dice"][0] == out["dice"][0]
        assert np.isfinite(out["loss"])
        checked += 1
    assert checked == 4

    # The train net of the same file has no metric layers and trains through the loss.
    train = caffe.Net(prototxt, caffe.TRAIN, stages=["train"])
    assert "dice" not in train._layer_names and "our_dice" not in train._layer_names
    data, labels = fcn_inputs(0)
    train.forward(data=data, label=labels)
    train.backward()
    assert np.abs(train.params["conv1"][0].diff).sum() > 0


def _plugin_layer(name, bottoms=("score", "label"), param_str=""):
    text = """
        name: "%s_layer" type: "Python" %s top: "out"
        python_param { module: "dice" layer: "%s" param_str: "%s" }
    """ % (name, " ".join('bottom: "%s"' % b for b in bottoms), name, param_str)
    return make_layer(text)


def _digits_dice(scores, labels):
    from google.protobuf import text_format
    param = caffe_pb2.LayerParameter()
    text_format.Parse('name: "d" type: "Python" python_param { module: "digits_python_layers" '
                      'layer: "Dice" }', param)
    layer = python_layer.create_python_layer(param, caffe.TEST, dtype=np.float64, xp=np)
    return _run_layer(layer, [scores, labels])


def _run_layer(layer, arrays):
    from protonet.blob import Blob
    bottom = []
    for a in arrays:
        b = Blob(a.shape, dtype=np.float64, xp=np)
        b.data[...] = a
        bottom.append(b)
    top = [Blob((), dtype=np.float64, xp=np)]
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return top[0].data.copy()


def test_our_dice_equals_digits_dice(plugin_path):
    r = np.random.default_rng(7)
    for trial in range(12):
        n, h, w = r.integers(1, 4), r.integers(2, 9), r.integers(2, 9)
        scores = r.normal(0, 1, (n, 2, h, w))
        labels = (r.random((n, 1, h, w)) < 0.3).astype(np.float64)
        labels[:, 0, 0, 0] = 1                     # never 0/0, where DIGITS' layer gives NaN
        ours = _run_layer(_plugin_layer("Dice"), [scores, labels])
        theirs = _digits_dice(scores, labels)
        assert ours.shape == theirs.shape == (1,)
        np.testing.assert_allclose(ours, theirs, rtol=1e-12)


def test_dice_edge_cases_and_shape_errors():
    layer = _plugin_layer("Dice")
    scores = np.zeros((2, 2, 3, 3))
    scores[:, 0] = 1                               # predicts background everywhere
    labels = np.zeros((2, 1, 3, 3))
    assert _run_layer(layer, [scores, labels])[0] == 1.0     # nothing to find, nothing found
    labels[1, 0, 1, 1] = 1
    assert _run_layer(_plugin_layer("Dice"), [scores, labels])[0] == 0.5
    with pytest.raises(ValueError, match=r"Dice_layer.*labels must have shape \(2, 1, 3, 3\)"):
        _run_layer(_plugin_layer("Dice"), [scores, np.zeros((2, 1, 3, 4))])
    with pytest.raises(ValueError, match="C >= 2"):
        _run_layer(_plugin_layer("Dice"), [np.zeros((2, 1, 3, 3)), labels])


def soft_dice_loss(scores, labels, eps):
    """The documented formula, image by image."""
    losses = []
    for s, l in zip(scores, labels[:, 0]):
        e = np.exp(s - s.max(axis=0))
        p1 = (e / e.sum(axis=0))[1]
        losses.append(1 - 2 * np.sum(p1 * l) / (np.sum(p1) + np.sum(l) + eps))
    return float(np.mean(losses))


def test_dice_loss_forward_matches_formula():
    r = np.random.default_rng(0)
    scores = r.normal(0, 1, (3, 3, 4, 5))
    labels = (r.random((3, 1, 4, 5)) < 0.4).astype(np.float64)
    layer = _plugin_layer("DiceLoss", param_str="{'eps': 0.5}")
    out = _run_layer(layer, [scores, labels])
    assert out.shape == (1,)
    np.testing.assert_allclose(out[0], soft_dice_loss(scores, labels, 0.5), rtol=1e-12)


@pytest.mark.parametrize("shape,eps", [((2, 2, 3, 4), "1e-5"), ((3, 3, 2, 3), "0.1"),
                                       ((2, 2, 5), "1e-3")])
def test_dice_loss_gradient(shape, eps):
    r = np.random.default_rng(1)
    scores = r.normal(0, 1, shape)
    labels = (r.random((shape[0], 1) + shape[2:]) < 0.4).astype(np.float64)
    labels.reshape(shape[0], -1)[:, 0] = 1
    layer = _plugin_layer("DiceLoss", param_str="{'eps': %s}" % eps)
    checked = check_gradient(layer, [scores, labels], check_bottom=[0], step=1e-4, threshold=1e-6)
    assert checked == scores.size


DICE_LOSS_NET = """
name: "dice_loss_net"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 1 dim: 8 dim: 8 } shape { dim: 2 dim: 1 dim: 8 dim: 8 } } }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
        convolution_param { num_output: 2 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "dice_loss" type: "Python" bottom: "score" bottom: "label" top: "dice_loss"
        %s
        python_param { module: "dice" layer: "DiceLoss" } }
"""


def test_dice_loss_weight_in_a_net(tmp_path):
    r = np.random.default_rng(2)
    data = r.normal(0, 1, (2, 1, 8, 8)).astype(np.float32)
    label = (data > 0.5).astype(np.float32)
    grads = {}
    for weight in ("", "loss_weight: 1", "loss_weight: 2.5"):
        net = caffe.Net(write(tmp_path, "net.prototxt", DICE_LOSS_NET % weight), caffe.TRAIN)
        net.params["score"][0].data[...] = np.linspace(-1, 1, 18).reshape(2, 1, 3, 3)
        net.blobs["data"].data[...] = data
        net.blobs["label"].data[...] = label
        loss = net.forward_backward()
        value = float(net.blobs["dice_loss"].data[0])
        expected_w = {"": 0.0, "loss_weight: 1": 1.0, "loss_weight: 2.5": 2.5}[weight]
        assert net.blob_loss_weights["dice_loss"] == expected_w
        np.testing.assert_allclose(loss, expected_w * value, rtol=1e-6)
        grads[expected_w] = net.params["score"][0].diff.copy()
    # Without a loss weight the layer is a plain output: nothing flows back (Caffe's rule).
    assert not grads[0.0].any()
    np.testing.assert_allclose(grads[2.5], 2.5 * grads[1.0], rtol=1e-5, atol=1e-8)


def test_dice_loss_trains_a_segmenter(tmp_path):
    net_path = write(tmp_path, "net.prototxt", DICE_LOSS_NET % "loss_weight: 1")
    solver_path = write(tmp_path, "solver.prototxt", """
        net: "%s"
        base_lr: 0.5
        lr_policy: "fixed"
        momentum: 0.9
        display: 0
        max_iter: 60
        random_seed: 5
    """ % net_path)
    solver = caffe.SGDSolver(solver_path)
    r = np.random.default_rng(3)
    data = r.normal(0, 1, (2, 1, 8, 8)).astype(np.float32)
    solver.net.blobs["data"].data[...] = data
    solver.net.blobs["label"].data[...] = (data > 0.3).astype(np.float32)
    solver.step(1)
    first = float(solver.net.blobs["dice_loss"].data[0])
    solver.step(59)
    solver.net.forward()
    last = float(solver.net.blobs["dice_loss"].data[0])
    assert last < 0.5 * first, (first, last)


# -- plugin errors --------------------------------------------------------------------------

BAD_LAYERS = """
import caffe


class Boom(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        ratio = 1.0 / int(bottom[0].data.sum())   # the plugin's own bug
        top[0].data[...] = ratio

    def backward(self, top, propagate_down, bottom):
        pass


class BadSetup(caffe.Layer):
    def setup(self, bottom, top):
        raise KeyError("missing option 'threshold' in param_str")

    def reshape(self, bottom, top):
        pass
"""

BAD_NET = """layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }
layer {
  name: "boom"
  type: "Python"
  bottom: "data"
  top: "out"
  python_param { module: "%s" layer: "%s" }
}
"""


def test_plugin_exception_names_layer_and_keeps_traceback(tmp_path):
    write(tmp_path, "bad_layers_plug.py", BAD_LAYERS)
    net = caffe.Net(write(tmp_path, "net.prototxt", BAD_NET % ("bad_layers_plug", "Boom")),
                    caffe.TEST)
    with pytest.raises(python_layer.PythonLayerError) as info:
        net.forward()
    message = str(info.value)
    assert "'boom'" in message and "bad_layers_plug.Boom" in message
    assert "forward" in message and "ZeroDivisionError" in message
    assert "net.prototxt:3" in message                    # the layer's line in the prototxt
    cause = info.value.__cause__
    assert isinstance(cause, ZeroDivisionError)
    frames = traceback.extract_tb(cause.__traceback__)
    assert frames[-1].filename.endswith("bad_layers_plug.py") and frames[-1].name == "forward"
    assert "ratio = 1.0 / int(bottom[0].data.sum())" in frames[-1].line
    printed = "".join(traceback.format_exception(info.value))
    assert "bad_layers_plug.py" in printed and "the plugin's own bug" in printed

    with pytest.raises(python_layer.PythonLayerError) as info:
        caffe.Net(write(tmp_path, "net2.prototxt", BAD_NET % ("bad_layers_plug", "BadSetup")),
                  caffe.TEST)
    assert "'boom'" in str(info.value) and "setup" in str(info.value)
    assert "missing option 'threshold'" in str(info.value)
    assert isinstance(info.value.__cause__, KeyError)


def test_missing_plugin_module_lists_searched_paths(tmp_path, plugin_path):
    path = write(tmp_path, "net.prototxt", BAD_NET % ("no_such_plugin_module_xyz", "Boom"))
    with pytest.raises(NetError) as info:
        caffe.Net(path, caffe.TEST)
    message = str(info.value)
    assert "'boom'" in message and "no_such_plugin_module_xyz" in message
    for folder in (str(tmp_path), str(PLUGINS), python_layer.shipped_layers_dir()):
        assert folder in message
    assert "sys.path" in message


def test_missing_plugin_class_names_module_and_class(tmp_path):
    write(tmp_path, "bad_layers_plug2.py", BAD_LAYERS)
    path = write(tmp_path, "net.prototxt", BAD_NET % ("bad_layers_plug2", "NoSuchLayer"))
    with pytest.raises(NetError) as info:
        caffe.Net(path, caffe.TEST)
    message = str(info.value)
    assert "'boom'" in message and "NoSuchLayer" in message
    assert str(tmp_path / "bad_layers_plug2.py") in message


# -- learnable plugin blobs under the solver ---------------------------------------------------

SCALE_PLUGIN = """
import caffe


class LearnedScale(caffe.Layer):
    \"\"\"top = w * bottom, with w a learnable scalar kept in self.blobs.\"\"\"

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = 0.5

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] += (top[0].diff * bottom[0].data).sum()
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data[0] * top[0].diff
"""

SCALE_NET = """
name: "scale_net"
layer { name: "data" type: "Input" top: "data" top: "target"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 3 } } }
layer { name: "scale" type: "Python" bottom: "data" top: "scaled"
        python_param { module: "scale_plugin" layer: "LearnedScale" } }
layer { name: "loss" type: "EuclideanLoss" bottom: "scaled" bottom: "target" top: "loss" }
"""


def test_plugin_blobs_train_and_are_snapshotted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "scale_plugin.py", SCALE_PLUGIN)
    write(tmp_path, "net.prototxt", SCALE_NET)
    write(tmp_path, "solver.prototxt", """
        net: "net.prototxt"
        base_lr: 0.2
        lr_policy: "fixed"
        momentum: 0.5
        max_iter: 40
        display: 0
        snapshot: 40
        snapshot_prefix: "snap/scale"
    """)
    (tmp_path / "snap").mkdir()
    solver = caffe.get_solver("solver.prototxt")
    assert isinstance(solver, caffe.SGDSolver) and isinstance(solver.net, caffe.Net)
    assert list(solver.net.params) == ["scale"]
    data = np.linspace(-1.5, 1.5, 12, dtype=np.float32).reshape(4, 3)
    solver.net.blobs["data"].data[...] = data
    solver.net.blobs["target"].data[...] = 3 * data
    solver.solve()
    w = float(solver.net.params["scale"][0].data[0])
    assert abs(w - 3) < 1e-3, w
    assert solver.iter == 40

    model = tmp_path / "snap" / "scale_iter_40.caffemodel"
    assert model.exists() and (tmp_path / "snap" / "scale_iter_40.solverstate").exists()
    saved = caffe_pb2.NetParameter()
    saved.ParseFromString(model.read_bytes())
    layer = [l for l in saved.layer if l.name == "scale"][0]
    assert list(layer.blobs[0].shape.dim) == [1]
    assert layer.blobs[0].data[0] == np.float32(w)

    fresh = caffe.Net("net.prototxt", str(model), caffe.TEST)
    assert fresh.params["scale"][0].data[0] == np.float32(w)
    # The solver state resumes the plugin's parameter too.
    again = caffe.get_solver("solver.prototxt")
    again.restore(str(tmp_path / "snap" / "scale_iter_40.solverstate"))
    assert again.iter == 40 and again.net.params["scale"][0].data[0] == np.float32(w)


def test_digits_dice_layer_in_fcn_alexnet_train_val(tmp_path, plugin_path):
    """The published FCN-AlexNet train/val net with DIGITS' Dice layer added, as DIGITS'
    medical-imaging example does (two classes; Input layers in place of the LMDB data layers)."""
    from google.protobuf import text_format
    from protonet.io import read_net
    net_param = read_net(str(SHARED / "models" / "digits" / "fcn_alexnet.prototxt"))
    for layer in net_param.layer:
        if layer.type == "Data":
            layer.type = "Input"
            layer.ClearField("data_param")
            channels = 3 if layer.name == "data" else 1
            layer.input_param.shape.add().dim.extend([2, channels, 32, 32])
        if layer.name in ("score_fr", "upscore"):
            layer.convolution_param.num_output = 2
        if layer.name == "upscore":
            layer.convolution_param.group = 2
    text_format.Parse('name: "dice" type: "Python" bottom: "score" bottom: "label" top: "dice" '
                      'python_param { module: "digits_python_layers" layer: "Dice" } '
                      'include { stage: "val" }', net_param.layer.add())
    path = tmp_path / "train_val.prototxt"
    path.write_text(text_format.MessageToString(net_param))

    val = caffe.Net(str(path), caffe.TEST, stages=["val"])
    assert val._layer_names[-3:] == ["loss", "accuracy", "dice"]
    r = np.random.default_rng(0)
    for name, blobs in val.params.items():
        if name != "upscore":                      # keep the bilinear upsampling
            weights, bias = blobs
            fan_in = weights.count // weights.shape[0]
            # Uniform noise (cheap to draw) at He's scale keeps the activations alive.
            weights.data[...] = r.random(weights.shape, dtype=np.float32) - 0.5
            weights.data[...] *= np.sqrt(2.0 / fan_in) / np.sqrt(1 / 12.0)
            bias.data[...] = 0
    data = r.uniform(0, 255, (2, 3, 32, 32)).astype(np.float32)
    labels = np.zeros((2, 1, 32, 32), np.float32)
    labels[0, 0, 8:20, 10:24] = 1
    labels[1, 0, 16:30, 4:12] = 1
    val.forward(data=data, label=labels)
    # Centre the classifier so that both classes are predicted (bilinear upsampling passes
    # a bias shift through unchanged), then measure.
    margin = val.blobs["score"].data[:, 1] - val.blobs["score"].data[:, 0]
    val.params["score_fr"][1].data[1] -= np.median(margin)
    out = val.forward(start="score_fr")           # only the layers from the classifier on
    scores = val.blobs["score"].data
    assert scores.shape == (2, 2, 32, 32)
    fg = scores[:, 1] > scores[:, 0]
    assert 0 < fg.sum() < fg.size                # a prediction with both classes
    np.testing.assert_allclose(out["dice"][0], dice_by_counting(scores, labels), rtol=1e-6)


# -- plugins as Caffe runs them: their own exceptions, __init__, in-place, late blobs ------
CAFFE_WAY_PLUGINS = '''
import caffe
import numpy as np


class SetupFails(caffe.Layer):
    def setup(self, bottom, top):
        raise RuntimeError("no licence")

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass


class WithInit(caffe.Layer):
    """Sets state in its own __init__, as Caffe runs it (the class is called with the param)."""

    def __init__(self, param):
        super().__init__(param)
        self.factor = 3.0

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.factor * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = self.factor * top[0].diff


class DoubleInPlace(caffe.Layer):
    """bottom: x top: x — reads its top before writing it: the same blob, as in Caffe."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] *= 2

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] *= 2


class LateBlob(caffe.Layer):
    """Adds its weight in the first reshape (Caffe reads a layer's blobs after it)."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        if not len(self.blobs):
            self.blobs.add_blob(1)
            self.blobs[0].data[...] = 0.5
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] += (top[0].diff * bottom[0].data).sum()
        bottom[0].diff[...] = self.blobs[0].data[0] * top[0].diff


class Phase(caffe.Layer):
    def setup(self, bottom, top):
        self.seen_phase = self.phase

    def reshape(self, bottom, top):
        top[0].reshape(1)

    def forward(self, bottom, top):
        top[0].data[...] = self.phase
'''

CAFFE_WAY_NET = """name: "w"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "p" type: "Python" bottom: "x" top: "%s"
  python_param { module: "caffe_way_plugins" layer: "%s" } %s }
"""


def caffe_way_net(tmp_path, monkeypatch, layer, top="y", extra="", phase=caffe.TEST):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "caffe_way_plugins", raising=False)
    write(tmp_path, "caffe_way_plugins.py", CAFFE_WAY_PLUGINS)
    return caffe.Net(write(tmp_path, "net.prototxt", CAFFE_WAY_NET % (top, layer, extra)), phase)


def check_caffe_way_plugins(tmp_path, monkeypatch):
    """The checks below, for the CPU here and for the device path in test_device_path.py."""
    # the plugin's own exception comes through as its own type (Caffe's test_exception)
    with pytest.raises(RuntimeError, match="no licence") as info:
        caffe_way_net(tmp_path, monkeypatch, "SetupFails")
    assert "Python layer 'p'" in str(info.value) and "net.prototxt:3" in str(info.value)
    # __init__ runs
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    net = caffe_way_net(tmp_path, monkeypatch, "WithInit", extra="loss_weight: 1")
    np.testing.assert_array_equal(net.forward(x=x)["y"], 3 * x)
    assert net.blob_loss_weights["y"] == 1.0
    layer = net.layers[list(net._layer_names).index("p")]
    assert layer.factor == 3.0 and type(layer).__name__ in ("WithInit", "HostLayer")
    layer.factor = 5.0                      # scripts set plugin attributes through net.layers
    np.testing.assert_array_equal(net.forward(x=x)["y"], 5 * x)
    assert isinstance(layer, caffe.Layer) and layer.__class__.__name__ == "WithInit"
    # in place: the top is the bottom
    net = caffe_way_net(tmp_path, monkeypatch, "DoubleInPlace", top="x")
    np.testing.assert_array_equal(net.forward(x=x)["x"], 2 * x)
    # a blob added in the first reshape is a parameter of the net
    net = caffe_way_net(tmp_path, monkeypatch, "LateBlob")
    assert list(net.params) == ["p"] and net.params["p"][0].data[0] == 0.5
    np.testing.assert_array_equal(net.forward(x=x)["y"], 0.5 * x)
    # a layer's own phase field wins over the net's (Caffe sets the net's only when unset)
    net = caffe_way_net(tmp_path, monkeypatch, "Phase", extra="phase: TEST", phase=caffe.TRAIN)
    assert net.forward()["y"][0] == caffe.TEST
    net = caffe_way_net(tmp_path, monkeypatch, "Phase", phase=caffe.TRAIN)
    assert net.forward()["y"][0] == caffe.TRAIN


def test_plugins_run_as_caffe_runs_them(tmp_path, monkeypatch):
    check_caffe_way_plugins(tmp_path, monkeypatch)


KEEP_PLUGIN = """
import caffe


class KeepScale(caffe.Layer):
    \"\"\"top = w * bottom; keeps its weight Blob from setup, as plugins often do.\"\"\"

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = 0.5
        self.kept = self.blobs[0]

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.kept.data[0] * bottom[0].data
"""

SHARED_SCALES = """name: "s"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "s1" type: "Python" bottom: "x" top: "a" param { name: "w" }
  python_param { module: "keep_plugin" layer: "KeepScale" } }
layer { name: "s2" type: "Python" bottom: "a" top: "b" param { name: "w" }
  python_param { module: "keep_plugin" layer: "KeepScale" } }
"""


def test_shared_weights_reach_a_blob_the_plugin_kept(tmp_path, monkeypatch):
    # Caffe shares a named param by making each layer's own Blob view the owner's memory,
    # so a Blob kept in setup (self.kept = self.blobs[0]) sees the shared values
    monkeypatch.syspath_prepend(str(tmp_path))
    write(tmp_path, "keep_plugin.py", KEEP_PLUGIN)
    net = caffe.Net(write(tmp_path, "net.prototxt", SHARED_SCALES), caffe.TEST)
    net.params["s1"][0].data[...] = 1.25
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(net.forward(x=x)["b"], 1.25 * 1.25 * x)
