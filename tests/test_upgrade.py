"""Upgrades of old Caffe net, solver and blob formats (protonet.upgrade)."""
import json
from pathlib import Path

import pytest
from google.protobuf import text_format

from protonet.proto import caffe_pb2
from protonet.upgrade import (UpgradeError, UpgradeWarning, upgrade_batch_norm,
                              upgrade_blob_shape, upgrade_data_transformation,
                              upgrade_net, upgrade_net_input, upgrade_solver,
                              v1_type_name)

# real Caffe 1.0 reference data and the published DIGITS assets, kept in the repo
SHARED = Path(__file__).resolve().parent / "caffe_reference"


def net(text):
    return text_format.Parse(text, caffe_pb2.NetParameter())


def assert_same(actual, expected_text):
    expected = net(expected_text)
    assert actual == expected, (
        "upgraded net differs\n--- got\n%s--- expected\n%s"
        % (text_format.MessageToString(actual), text_format.MessageToString(expected)))


# -- V1 -> V2 ----------------------------------------------------------------

LENET_V1 = """
name: "LeNet"
layers {
  name: "mnist"
  type: DATA
  top: "data"
  top: "label"
  data_param { source: "mnist_train_lmdb" backend: LMDB batch_size: 64 scale: 0.00390625 }
  include { phase: TRAIN }
}
layers {
  name: "mnist"
  type: DATA
  top: "data"
  top: "label"
  data_param { source: "mnist_test_lmdb" backend: LMDB batch_size: 100 }
  transform_param { scale: 0.00390625 }
  include { phase: TEST }
}
layers {
  name: "conv1"
  type: CONVOLUTION
  bottom: "data"
  top: "conv1"
  blobs_lr: 1
  blobs_lr: 2
  convolution_param {
    num_output: 20
    kernel_size: 5
    stride: 1
    weight_filler { type: "xavier" }
    bias_filler { type: "constant" }
  }
}
layers {
  name: "pool1"
  type: POOLING
  bottom: "conv1"
  top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layers {
  name: "ip1"
  type: INNER_PRODUCT
  bottom: "pool1"
  top: "ip1"
  blobs_lr: 1
  blobs_lr: 2
  weight_decay: 1
  weight_decay: 0
  inner_product_param { num_output: 500 weight_filler { type: "xavier" } }
}
layers { name: "relu1" type: RELU bottom: "ip1" top: "ip1" }
layers {
  name: "ip2"
  type: INNER_PRODUCT
  bottom: "ip1"
  top: "ip2"
  param: "ip2_w"
  blob_share_mode: PERMISSIVE
  inner_product_param { num_output: 10 }
}
layers {
  name: "accuracy"
  type: ACCURACY
  bottom: "ip2"
  bottom: "label"
  top: "accuracy"
  include { phase: TEST }
}
layers {
  name: "loss"
  type: SOFTMAX_LOSS
  bottom: "ip2"
  bottom: "label"
  top: "loss"
  loss_weight: 2
  exclude { stage: "deploy" }
}
"""

LENET_V2 = """
name: "LeNet"
layer {
  name: "mnist"
  type: "Data"
  top: "data"
  top: "label"
  include { phase: TRAIN }
  transform_param { scale: 0.00390625 }
  data_param { source: "mnist_train_lmdb" backend: LMDB batch_size: 64 }
}
layer {
  name: "mnist"
  type: "Data"
  top: "data"
  top: "label"
  include { phase: TEST }
  transform_param { scale: 0.00390625 }
  data_param { source: "mnist_test_lmdb" backend: LMDB batch_size: 100 }
}
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  param { lr_mult: 1 }
  param { lr_mult: 2 }
  convolution_param {
    num_output: 20
    kernel_size: 5
    stride: 1
    weight_filler { type: "xavier" }
    bias_filler { type: "constant" }
  }
}
layer {
  name: "pool1"
  type: "Pooling"
  bottom: "conv1"
  top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layer {
  name: "ip1"
  type: "InnerProduct"
  bottom: "pool1"
  top: "ip1"
  param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 500 weight_filler { type: "xavier" } }
}
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer {
  name: "ip2"
  type: "InnerProduct"
  bottom: "ip1"
  top: "ip2"
  param { name: "ip2_w" share_mode: PERMISSIVE }
  inner_product_param { num_output: 10 }
}
layer {
  name: "accuracy"
  type: "Accuracy"
  bottom: "ip2"
  bottom: "label"
  top: "accuracy"
  include { phase: TEST }
}
layer {
  name: "loss"
  type: "SoftmaxWithLoss"
  bottom: "ip2"
  bottom: "label"
  top: "loss"
  loss_weight: 2
  exclude { stage: "deploy" }
}
"""


def test_v1_lenet_upgrades_to_v2():
    param = net(LENET_V1)
    assert upgrade_net(param, source="lenet_v1.prototxt") is True
    assert_same(param, LENET_V2)
    # Unset lr_mult/decay_mult keep their default of 1.
    conv1 = param.layer[2]
    assert [p.decay_mult for p in conv1.param] == [1.0, 1.0]
    assert not conv1.param[0].HasField("decay_mult")


def test_upgraded_net_is_left_alone():
    param = net(LENET_V2)
    assert upgrade_net(param) is False
    assert_same(param, LENET_V2)


def test_v1_every_sub_param_is_copied():
    param = net("""
    layers { name: "a" type: ABSVAL }
    layers { name: "e" type: ELTWISE eltwise_param { operation: MAX } }
    layers { name: "p" type: POWER power_param { power: 2 scale: 3 shift: 1 } }
    layers { name: "t" type: THRESHOLD threshold_param { threshold: 0.5 } }
    layers { name: "d" type: DUMMY_DATA dummy_data_param { shape { dim: 1 dim: 2 } } }
    layers { name: "s" type: SLICE slice_param { slice_dim: 1 slice_point: 2 } }
    layers { name: "l" type: SIGMOID_CROSS_ENTROPY_LOSS loss_param { ignore_label: 3 } }
    layers { name: "m" type: MVN mvn_param { normalize_variance: false } }
    layers { name: "x" type: EXP exp_param { base: 2 } }
    layers { name: "c" type: CONTRASTIVE_LOSS contrastive_loss_param { margin: 2 } }
    layers { name: "h" type: HINGE_LOSS hinge_loss_param { norm: L2 } }
    """)
    upgrade_net(param)
    assert_same(param, """
    layer { name: "a" type: "AbsVal" }
    layer { name: "e" type: "Eltwise" eltwise_param { operation: MAX } }
    layer { name: "p" type: "Power" power_param { power: 2 scale: 3 shift: 1 } }
    layer { name: "t" type: "Threshold" threshold_param { threshold: 0.5 } }
    layer { name: "d" type: "DummyData" dummy_data_param { shape { dim: 1 dim: 2 } } }
    layer { name: "s" type: "Slice" slice_param { slice_dim: 1 slice_point: 2 } }
    layer { name: "l" type: "SigmoidCrossEntropyLoss" loss_param { ignore_label: 3 } }
    layer { name: "m" type: "MVN" mvn_param { normalize_variance: false } }
    layer { name: "x" type: "Exp" exp_param { base: 2 } }
    layer { name: "c" type: "ContrastiveLoss" contrastive_loss_param { margin: 2 } }
    layer { name: "h" type: "HingeLoss" hinge_loss_param { norm: L2 } }
    """)


def test_v1_weight_decay_longer_than_blobs_lr():
    param = net("""layers { name: "ip" type: INNER_PRODUCT blobs_lr: 3
                            weight_decay: 0 weight_decay: 5 }""")
    upgrade_net(param)
    assert_same(param, """layer { name: "ip" type: "InnerProduct"
                                  param { lr_mult: 3 decay_mult: 0 } param { decay_mult: 5 } }""")


# -- data transformation -------------------------------------------------------

def test_data_transformation_moves_to_transform_param():
    param = net("""
    layers { name: "img" type: IMAGE_DATA top: "data"
             image_data_param { source: "list.txt" mean_file: "m.binaryproto"
                                crop_size: 227 mirror: true } }
    layers { name: "win" type: WINDOW_DATA top: "w" window_data_param { source: "w.txt" } }
    layers { name: "relu" type: RELU bottom: "data" top: "data" }
    """)
    assert upgrade_data_transformation(param) is True
    img = param.layers[0]
    assert img.transform_param.mean_file == "m.binaryproto"
    assert img.transform_param.crop_size == 227
    assert img.transform_param.mirror is True
    for field in ("mean_file", "crop_size", "mirror"):
        assert not img.image_data_param.HasField(field)
    assert img.image_data_param.source == "list.txt"
    assert not param.layers[2].HasField("transform_param")
    assert upgrade_data_transformation(param) is False


# -- V0 -> V1 -> V2 ------------------------------------------------------------

V0_PADDED = """
name: "v0_padded"
input: "data"
input_dim: 1
input_dim: 3
input_dim: 16
input_dim: 16
layers {
  layer { name: "pad1" type: "padding" pad: 2 }
  bottom: "data"
  top: "pad1"
}
layers {
  layer {
    name: "conv1"
    type: "conv"
    num_output: 8
    kernelsize: 5
    stride: 2
    group: 1
    biasterm: false
    weight_filler { type: "gaussian" std: 0.01 }
    blobs_lr: 1
    weight_decay: 1
  }
  bottom: "pad1"
  top: "conv1"
}
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers {
  layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.0001 beta: 0.75 k: 2 }
  bottom: "conv1"
  top: "norm1"
}
layers { layer { name: "pad2" type: "padding" pad: 1 } bottom: "norm1" top: "pad2" }
layers {
  layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 }
  bottom: "pad2"
  top: "pool1"
}
layers {
  layer {
    name: "fc"
    type: "innerproduct"
    num_output: 10
    weight_filler { type: "xavier" }
    bias_filler { type: "constant" value: 0.1 }
    blobs_lr: 1
    blobs_lr: 2
    weight_decay: 1
    weight_decay: 0
  }
  bottom: "pool1"
  top: "fc"
}
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "fc" top: "fc" }
layers { layer { name: "prob" type: "softmax" } bottom: "fc" top: "prob" }
"""

V0_PADDED_V2 = """
name: "v0_padded"
layer {
  name: "input"
  type: "Input"
  top: "data"
  input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } }
}
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  param { lr_mult: 1 decay_mult: 1 }
  convolution_param {
    num_output: 8
    bias_term: false
    pad: 2
    kernel_size: 5
    stride: 2
    group: 1
    weight_filler { type: "gaussian" std: 0.01 }
  }
}
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer {
  name: "norm1"
  type: "LRN"
  bottom: "conv1"
  top: "norm1"
  lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 k: 2 }
}
layer {
  name: "pool1"
  type: "Pooling"
  bottom: "norm1"
  top: "pool1"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }
}
layer {
  name: "fc"
  type: "InnerProduct"
  bottom: "pool1"
  top: "fc"
  param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  inner_product_param {
    num_output: 10
    weight_filler { type: "xavier" }
    bias_filler { type: "constant" value: 0.1 }
  }
}
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" dropout_param { dropout_ratio: 0.3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def test_v0_net_with_padding_layers_upgrades_to_v2():
    param = net(V0_PADDED)
    assert upgrade_net(param, source="v0.prototxt") is True
    assert_same(param, V0_PADDED_V2)


def test_v0_data_layer_settings():
    param = net("""
    layers {
      layer {
        name: "data" type: "data" source: "train_leveldb" batchsize: 32 rand_skip: 7
        scale: 0.5 meanfile: "mean.binaryproto" cropsize: 28 mirror: true
      }
      top: "data" top: "label"
    }
    layers {
      layer { name: "imgs" type: "images" source: "list.txt" batchsize: 4
              shuffle_images: true new_height: 32 new_width: 24 }
      top: "img" top: "img_label"
    }
    layers {
      layer { name: "win" type: "window_data" source: "w.txt" batchsize: 2
              det_fg_threshold: 0.6 det_bg_threshold: 0.4 det_fg_fraction: 0.3
              det_context_pad: 16 det_crop_mode: "square" }
      top: "w" top: "w_label"
    }
    layers { layer { name: "cat" type: "concat" concat_dim: 0 }
             bottom: "data" bottom: "img" top: "cat" }
    layers { layer { name: "loss" type: "infogain_loss" source: "H.binaryproto" }
             bottom: "cat" bottom: "label" }
    layers { layer { name: "out" type: "hdf5_output" hdf5_output_param { file_name: "o.h5" } }
             bottom: "cat" bottom: "label" }
    """)
    upgrade_net(param)
    assert_same(param, """
    layer {
      name: "data" type: "Data" top: "data" top: "label"
      transform_param { scale: 0.5 mean_file: "mean.binaryproto" crop_size: 28 mirror: true }
      data_param { source: "train_leveldb" batch_size: 32 rand_skip: 7 }
    }
    layer {
      name: "imgs" type: "ImageData" top: "img" top: "img_label"
      image_data_param { source: "list.txt" batch_size: 4 shuffle: true
                         new_height: 32 new_width: 24 }
    }
    layer {
      name: "win" type: "WindowData" top: "w" top: "w_label"
      window_data_param { source: "w.txt" batch_size: 2 fg_threshold: 0.6 bg_threshold: 0.4
                          fg_fraction: 0.3 context_pad: 16 crop_mode: "square" }
    }
    layer { name: "cat" type: "Concat" bottom: "data" bottom: "img" top: "cat"
            concat_param { concat_dim: 0 } }
    layer { name: "loss" type: "InfogainLoss" bottom: "cat" bottom: "label"
            infogain_loss_param { source: "H.binaryproto" } }
    layer { name: "out" type: "HDF5Output" bottom: "cat" bottom: "label"
            hdf5_output_param { file_name: "o.h5" } }
    """)


def test_v0_setting_for_wrong_type_is_dropped_with_warning():
    param = net("""
    input: "x"
    layers { layer { name: "r" type: "relu" num_output: 3 } bottom: "x" top: "y" }
    """)
    with pytest.warns(UpgradeWarning, match=r"<net>: layer 0 'r'.*num_output.*relu"):
        upgrade_net(param)
    assert_same(param, 'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }')


def test_v0_unknown_layer_type_names_file_and_layer():
    param = net("""layers { layer { name: "mystery" type: "warp" } top: "a" }""")
    with pytest.raises(UpgradeError, match=r"old\.prototxt: layer 0 'mystery'.*'warp'"):
        upgrade_net(param, source="old.prototxt")


def test_v0_padding_into_non_conv_layer_is_an_error():
    param = net("""
    input: "data"
    layers { layer { name: "pad" type: "padding" pad: 1 } bottom: "data" top: "p" }
    layers { layer { name: "relu" type: "relu" } bottom: "p" top: "r" }
    """)
    with pytest.raises(UpgradeError, match=r"v0\.prototxt: layer 1 'relu'.*padding layer 'pad'"):
        upgrade_net(param, source="v0.prototxt")


def test_v0_unknown_bottom_is_an_error():
    param = net("""layers { layer { name: "conv" type: "conv" } bottom: "nowhere" top: "c" }""")
    with pytest.raises(UpgradeError, match=r"layer 0 'conv'.*'nowhere'"):
        upgrade_net(param, source="v0.prototxt")


# -- net inputs ----------------------------------------------------------------

def test_input_dim_becomes_input_layer_first():
    param = net("""
    input: "data"
    input: "label"
    input_dim: 10 input_dim: 3 input_dim: 32 input_dim: 32
    input_dim: 10 input_dim: 1 input_dim: 1 input_dim: 1
    layer { name: "relu" type: "ReLU" bottom: "data" top: "data" }
    """)
    assert upgrade_net_input(param) is True
    assert_same(param, """
    layer {
      name: "input" type: "Input" top: "data" top: "label"
      input_param { shape { dim: 10 dim: 3 dim: 32 dim: 32 }
                    shape { dim: 10 dim: 1 dim: 1 dim: 1 } }
    }
    layer { name: "relu" type: "ReLU" bottom: "data" top: "data" }
    """)
    assert upgrade_net_input(param) is False


def test_input_shape_becomes_input_layer():
    param = net("""
    input: "data"
    input_shape { dim: 2 dim: 5 }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" }
    """)
    assert upgrade_net(param) is True
    assert_same(param, """
    layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 2 dim: 5 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" }
    """)


def test_input_without_shape_is_stripped():
    # Old caffemodels name their inputs but carry no shapes.
    param = net('input: "data" layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')
    assert upgrade_net(param) is True
    assert_same(param, 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')


@pytest.mark.parametrize("fields", [
    'input: "a" input: "b" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4',
    'input: "a" input: "b" input_shape { dim: 1 }',
])
def test_input_shape_count_mismatch_is_an_error(fields):
    with pytest.raises(UpgradeError, match=r"deploy\.prototxt: net inputs \['a', 'b'\]"):
        upgrade_net(net(fields), source="deploy.prototxt")


# -- BatchNorm -------------------------------------------------------------------

def test_batch_norm_params_are_frozen_and_keep_names():
    param = net("""
    layer { name: "bn" type: "BatchNorm"
            param { name: "m" lr_mult: 1 } param { name: "v" decay_mult: 1 } param { name: "f" } }
    layer { name: "bn2" type: "BatchNorm" param { lr_mult: 1 } }
    layer { name: "conv" type: "Convolution"
            param { lr_mult: 1 } param { lr_mult: 1 } param { lr_mult: 1 } }
    """)
    assert upgrade_net(param) is True
    assert [(p.name, p.lr_mult, p.decay_mult) for p in param.layer[0].param] == [
        ("m", 0, 0), ("v", 0, 0), ("f", 0, 0)]
    assert [p.lr_mult for p in param.layer[1].param] == [1]
    assert [p.lr_mult for p in param.layer[2].param] == [1, 1, 1]
    assert upgrade_batch_norm(param) is True  # Caffe re-applies it; it is idempotent
    assert [p.lr_mult for p in param.layer[0].param] == [0, 0, 0]


# -- errors ----------------------------------------------------------------------

def test_layer_and_layers_together_is_an_error():
    param = net("""
    layer { name: "new" type: "ReLU" }
    layers { name: "old" type: RELU }
    """)
    with pytest.raises(UpgradeError, match=r"mixed\.prototxt: .*both 'layer'.*'new'.*'old'"):
        upgrade_net(param, source="mixed.prototxt")


# -- V1 type names ---------------------------------------------------------------

def test_v1_type_name_covers_every_enum_value():
    V1 = caffe_pb2.V1LayerParameter
    for name, value in V1.LayerType.items():
        upgraded = v1_type_name(value)
        assert (upgraded == "") == (name == "NONE"), name
        assert v1_type_name(name) == upgraded
    assert v1_type_name(V1.CONVOLUTION) == "Convolution"
    assert v1_type_name(V1.SOFTMAX_LOSS) == "SoftmaxWithLoss"
    assert v1_type_name(V1.IMAGE_DATA) == "ImageData"
    assert v1_type_name(V1.TANH) == "TanH"
    assert v1_type_name(V1.IM2COL) == "Im2col"
    assert v1_type_name(V1.HDF5_DATA) == "HDF5Data"
    with pytest.raises(UpgradeError, match="999"):
        v1_type_name(999)
    with pytest.raises(UpgradeError, match="CONV"):
        v1_type_name("CONV")


# -- real files ------------------------------------------------------------------

def _shared(*parts):
    path = SHARED.joinpath(*parts)
    assert path.exists(), "%s is missing (tests/caffe_reference)" % path
    return path


def test_shared_v1_legacy_net_upgrades():
    path = _shared("parity", "nets", "v1_legacy", "net.prototxt")
    param = net(path.read_text())
    assert upgrade_net(param, source=str(path)) is True
    assert not len(param.layers) and not len(param.input) and not len(param.input_dim)
    meta_path = path.with_name("meta.json")
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        assert [(l.name, l.type) for l in param.layer] == [
            (l["name"], l["type"]) for l in meta["layers"]]
        for top, shape in zip(param.layer[0].top, param.layer[0].input_param.shape):
            assert list(shape.dim) == meta["inputs"][top]
    assert param.layer[0].type == "Input"
    conv1 = param.layer[1]
    assert [(p.lr_mult, p.decay_mult) for p in conv1.param] == [(1, 1), (2, 0)]
    assert list(conv1.convolution_param.pad) == [1]
    pool1 = param.layer[3]
    assert pool1.pooling_param.pool == caffe_pb2.PoolingParameter.AVE


def test_shared_digits_deploy_input_shape_upgrades():
    path = _shared("models", "digits", "fcn_alexnet.deploy.prototxt")
    original = net(path.read_text())
    param = net(path.read_text())
    assert upgrade_net(param, source=str(path)) is True
    first = param.layer[0]
    assert (first.name, first.type, list(first.top)) == ("input", "Input", ["data"])
    assert [list(s.dim) for s in first.input_param.shape] == [[1, 3, 500, 356]]
    assert not len(param.input) and not len(param.input_shape)
    assert list(param.layer[1:]) == list(original.layer)


# -- solver ----------------------------------------------------------------------

@pytest.mark.parametrize("enum_name, type_name", [
    ("SGD", "SGD"), ("NESTEROV", "Nesterov"), ("ADAGRAD", "AdaGrad"),
    ("RMSPROP", "RMSProp"), ("ADADELTA", "AdaDelta"), ("ADAM", "Adam")])
def test_solver_type_enum_becomes_string(enum_name, type_name):
    solver = text_format.Parse("base_lr: 0.1 solver_type: %s" % enum_name,
                               caffe_pb2.SolverParameter())
    assert upgrade_solver(solver, source="solver.prototxt") is True
    assert solver.type == type_name
    assert not solver.HasField("solver_type")
    assert upgrade_solver(solver) is False


def test_solver_without_solver_type_is_unchanged():
    solver = text_format.Parse('type: "Adam"', caffe_pb2.SolverParameter())
    assert upgrade_solver(solver) is False
    assert solver.type == "Adam"


def test_solver_type_and_matching_type_are_accepted():
    solver = text_format.Parse('solver_type: NESTEROV type: "Nesterov"',
                               caffe_pb2.SolverParameter())
    assert upgrade_solver(solver) is True
    assert solver.type == "Nesterov" and not solver.HasField("solver_type")


def test_solver_type_and_conflicting_type_is_an_error():
    solver = text_format.Parse('solver_type: ADAM type: "SGD"', caffe_pb2.SolverParameter())
    with pytest.raises(UpgradeError, match=r"solver\.prototxt: solver_type: ADAM.*'SGD'"):
        upgrade_solver(solver, source="solver.prototxt")


# -- blob shapes -----------------------------------------------------------------

def test_legacy_blob_dims_become_shape():
    blob = caffe_pb2.BlobProto(num=2, channels=3, height=4, width=5)
    blob.data.extend([0.0] * 120)
    assert upgrade_blob_shape(blob) is True
    assert list(blob.shape.dim) == [2, 3, 4, 5]
    assert not any(blob.HasField(f) for f in ("num", "channels", "height", "width"))
    assert upgrade_blob_shape(blob) is False


def test_partial_legacy_blob_dims_default_to_zero():
    blob = caffe_pb2.BlobProto(width=7)
    upgrade_blob_shape(blob)
    assert list(blob.shape.dim) == [0, 0, 0, 7]


def test_legacy_blob_dims_take_precedence_over_shape():
    # Caffe's Blob::FromProto reads the legacy fields whenever any is set.
    blob = caffe_pb2.BlobProto(num=1, channels=1, height=1, width=3)
    blob.shape.dim.extend([9, 9])
    upgrade_blob_shape(blob)
    assert list(blob.shape.dim) == [1, 1, 1, 3]


def test_modern_blob_is_unchanged():
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([4, 2])
    assert upgrade_blob_shape(blob) is False
    assert list(blob.shape.dim) == [4, 2]
