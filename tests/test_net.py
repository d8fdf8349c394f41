"""The net graph: NetState filtering, splits, in-place, sharing, loss weights, backward
flags, weights in and out (incl. OpenCV's Caffe importer as an independent reader), errors."""
import cv2
import numpy as np
import pytest

import protonet
from protonet import Net, NetError
from protonet.io import read_net, read_binary, FormatError
from protonet.netstate import filter_net
from protonet.proto import caffe_pb2

from parity import SHARED

DIGITS = SHARED / "models" / "digits"


def write(tmp_path, text, name="net.prototxt"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def _names(param, phase, stages=()):
    param = caffe_pb2.NetParameter.FromString(param.SerializeToString())
    param.state.phase = phase
    param.state.stage.extend(stages)
    return [l.name for l in filter_net(param).layer]


def test_digits_train_val_filters_like_caffe():
    param = read_net(str(DIGITS / "fcn_alexnet.prototxt"))
    train = _names(param, caffe_pb2.TRAIN, ["train"])
    val = _names(param, caffe_pb2.TEST, ["val"])
    deploy = _names(param, caffe_pb2.TEST, ["deploy"])
    assert train.count("data") == 1 and train.count("label") == 1
    assert "accuracy" not in train and "loss" in train
    assert "accuracy" in val and "loss" in val
    assert "loss" not in deploy
    core = ["shift", "conv1", "relu1", "pool1", "norm1", "conv2", "relu2", "pool2", "norm2",
            "conv3", "relu3", "conv4", "relu4", "conv5", "relu5", "pool5", "fc6", "relu6",
            "drop6", "fc7", "relu7", "drop7", "score_fr", "upscore", "score"]
    assert [n for n in train if n in core] == core
    assert train == ["data", "label"] + core + ["loss"]
    assert val == ["data", "label"] + core + ["loss", "accuracy"]


def _fill_random(net, seed=0, scale=0.05):
    r = np.random.default_rng(seed)
    for name, blobs in net.params.items():
        for b in blobs:
            if name == "upscore":
                continue                      # keep the bilinear filler's weights
            b.data[...] = r.normal(0, scale, b.shape)
    return net


@pytest.fixture(scope="module")
def deploy_net():
    return Net(str(DIGITS / "fcn_alexnet.deploy.prototxt"), protonet.TEST)


def test_digits_deploy_runs_unchanged_and_reshapes(deploy_net):
    net = deploy_net
    assert net.inputs == ["data"]
    assert net.blobs["data"].shape == (1, 3, 500, 356)
    out = net.forward(data=np.random.default_rng(1).uniform(0, 255, (1, 3, 500, 356)))
    assert out["score"].shape == (1, 21, 500, 356)
    out = net.forward(data=np.zeros((1, 3, 256, 256), np.float32))
    assert out["score"].shape == (1, 21, 256, 256)


def test_deploy_matches_opencv_importer(deploy_net, tmp_path):
    net = _fill_random(deploy_net, seed=3, scale=0.02)
    model = str(tmp_path / "fcn.caffemodel")
    net.save(model)
    x = np.random.default_rng(2).uniform(0, 255, (1, 3, 256, 256)).astype(np.float32)
    ours = net.forward(data=x)["score"].copy()
    cvnet = cv2.dnn.readNetFromCaffe(str(DIGITS / "fcn_alexnet.deploy.prototxt"), model)
    cvnet.setInput(x)
    theirs = cvnet.forward("score")
    assert theirs.shape == ours.shape
    rel = np.abs(ours - theirs).max() / np.abs(theirs).max()
    assert np.abs(theirs).max() > 0 and rel <= 1e-4, rel


SMALL_CORE = """
name: "core_ops"
input: "data"
input_shape { dim: 2 dim: 3 dim: 17 dim: 19 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 stride: 2 group: 3
    weight_filler { type: "gaussian" std: 0.2 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" relu_param { negative_slope: 0.1 } }
layer { name: "lrn" type: "LRN" bottom: "conv" top: "lrn" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 } }
layer { name: "lrn2" type: "LRN" bottom: "lrn" top: "lrn2"
  lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL } }
layer { name: "pool" type: "Pooling" bottom: "lrn2" top: "pool"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "apool" type: "Pooling" bottom: "conv" top: "apool"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "pow" type: "Power" bottom: "pool" top: "pow" power_param { power: 1 scale: 2 shift: -0.5 } }
layer { name: "drop" type: "Dropout" bottom: "pow" top: "pow" }
layer { name: "up" type: "Deconvolution" bottom: "pow" top: "up"
  convolution_param { num_output: 4 kernel_size: 4 stride: 2 weight_filler { type: "gaussian" std: 0.2 } } }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "apool" top: "crop" crop_param { axis: 2 offset: 1 } }
layer { name: "ip" type: "InnerProduct" bottom: "crop" top: "ip"
  inner_product_param { num_output: 7 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


def test_core_layers_match_opencv(tmp_path):
    proto = write(tmp_path, SMALL_CORE)
    protonet.set_random_seed(5)
    net = Net(proto, protonet.TEST)
    model = str(tmp_path / "core.caffemodel")
    net.save(model)
    x = np.random.default_rng(0).normal(size=(2, 3, 17, 19)).astype(np.float32)
    ours = {k: v.copy() for k, v in net.forward(data=x, blobs=["crop", "apool"]).items()}
    cvnet = cv2.dnn.readNetFromCaffe(proto, model)
    cvnet.setInput(x)
    for name in ("crop", "prob"):
        theirs = cvnet.forward(name)
        mine = ours[name]
        rel = np.abs(mine - theirs.reshape(mine.shape)).max() / np.abs(theirs).max()
        assert rel <= 1e-4, (name, rel)


def test_save_load_roundtrip_and_schema(tmp_path):
    proto = write(tmp_path, SMALL_CORE)
    protonet.set_random_seed(1)
    a = Net(proto, protonet.TEST)
    path = str(tmp_path / "a.caffemodel")
    a.save(path)
    msg = read_binary(path, caffe_pb2.NetParameter())
    assert [l.name for l in msg.layer][:3] == ["input", "conv", "relu"]
    conv = [l for l in msg.layer if l.name == "conv"][0]
    assert list(conv.blobs[0].shape.dim) == [6, 1, 3, 3]
    np.testing.assert_array_equal(np.asarray(conv.blobs[0].data).reshape(6, 1, 3, 3),
                                  a.params["conv"][0].data)
    protonet.set_random_seed(2)
    b = Net(proto, protonet.TEST, weights=path)
    for name in a.params:
        for x, y in zip(a.params[name], b.params[name]):
            np.testing.assert_array_equal(x.data, y.data)
    c = Net(proto, path, protonet.TEST)        # pycaffe's positional form
    np.testing.assert_array_equal(c.params["ip"][0].data, a.params["ip"][0].data)


def test_copy_shape_mismatch_names_layer_and_shapes(tmp_path):
    proto = write(tmp_path, SMALL_CORE)
    path = str(tmp_path / "a.caffemodel")
    Net(proto, protonet.TEST).save(path)
    other = write(tmp_path, SMALL_CORE.replace("dim: 2 dim: 3", "dim: 2 dim: 6"), "b.prototxt")
    with pytest.raises(NetError) as err:
        Net(other, protonet.TEST, weights=path)
    msg = str(err.value)
    assert "'conv'" in msg and "6x1x3x3" in msg and "6x2x3x3" in msg


SPLIT_NET = """
name: "splits"
layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 3 dim: 4 } shape { dim: 3 dim: 2 } } }
layer { name: "a" type: "InnerProduct" bottom: "x" top: "a"
  param { name: "shared_w" } param { name: "shared_b" }
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "b" type: "InnerProduct" bottom: "x" top: "b"
  param { name: "shared_w" } param { name: "shared_b" }
  inner_product_param { num_output: 2 } }
layer { name: "relu" type: "ReLU" bottom: "b" top: "b" }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" }
layer { name: "loss" type: "EuclideanLoss" bottom: "sum" bottom: "t" top: "loss" loss_weight: 2 }
"""


def _as_param(net):
    return caffe_pb2.NetParameter.FromString(net.to_proto_bytes())


def test_splits_sharing_inplace_and_loss_weight(tmp_path):
    net = Net(write(tmp_path, SPLIT_NET), protonet.TRAIN)
    assert net.layer_names == ["in", "x_in_0_split", "a", "b", "relu", "sum", "loss"]
    assert list(net.blobs) == ["x", "t", "x_in_0_split_0", "x_in_0_split_1", "a", "b", "sum", "loss"]
    shared, sharer = net.params["a"][0], net.params["b"][0]
    assert np.shares_memory(shared.data, sharer.data) and np.shares_memory(shared.diff, sharer.diff)
    assert len(net.learnable_params) == 2
    r = np.random.default_rng(0)
    x, t = r.normal(size=(3, 4)), r.normal(size=(3, 2))
    net.blobs["x"].data[...] = x
    net.blobs["t"].data[...] = t
    loss = net.forward_from_to()
    w = net.params["a"][0].data.astype(np.float64)
    bias = net.params["a"][1].data.astype(np.float64)
    a = x @ w.T + bias
    s = a + np.maximum(a, 0)
    expected = 2 * ((s - t) ** 2).sum() / 2 / 3
    assert loss == pytest.approx(expected, rel=1e-5)
    net.clear_param_diffs()
    net.backward_from_to()
    g = 2 * (s - t) / 3                                   # d loss / d sum
    ga = g + g * (a > 0)                                  # both paths share the weights
    np.testing.assert_allclose(net.params["a"][0].diff, ga.T @ x, rtol=1e-4, atol=1e-5)
    # Without force_backward, Caffe computes no gradient for a net input.
    assert not np.any(net.blobs["x"].diff)
    assert net.layer_need_backward[net.layer_names.index("in")] is False
    forced = Net(write(tmp_path, "force_backward: true\n" + SPLIT_NET, "f.prototxt"), protonet.TRAIN)
    forced.copy_from(_as_param(net))
    forced.blobs["x"].data[...] = x
    forced.blobs["t"].data[...] = t
    forced.forward_from_to()
    forced.backward_from_to()
    np.testing.assert_allclose(forced.blobs["x"].diff, ga @ w, rtol=1e-4, atol=1e-5)


def test_lr_mult_zero_and_propagate_down(tmp_path):
    text = SPLIT_NET.replace('param { name: "shared_w" } param { name: "shared_b" }\n  inner_product_param { num_output: 2 weight',
                             'param { lr_mult: 0 } param { lr_mult: 0 }\n  inner_product_param { num_output: 2 weight', 1)
    text = text.replace('param { name: "shared_w" } param { name: "shared_b" }', "")
    text = text.replace('top: "loss" loss_weight: 2', 'top: "loss" loss_weight: 2 propagate_down: true propagate_down: false')
    net = Net(write(tmp_path, text), protonet.TRAIN)
    assert net.layers[net.layer_names.index("a")].param_propagate_down == [False, False]
    assert net.params_lr[:2] == [0.0, 0.0]
    assert net.bottom_need_backward[net.layer_names.index("loss")] == [True, False]


def test_unknown_type_suggests_close_known_types(tmp_path):
    p = write(tmp_path, 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n'
                        'layer { name: "bad" type: "Convolutionn" bottom: "x" top: "y" }\n')
    with pytest.raises(NetError) as err:
        Net(p, protonet.TEST)
    msg = str(err.value)
    assert "'bad'" in msg and "Convolutionn" in msg and "Did you mean 'Convolution'" in msg
    assert "Softmax" not in msg                       # the close names, not the whole list
    assert "net.prototxt:2" in msg


def test_unknown_bottom_names_file_and_line(tmp_path):
    p = write(tmp_path, 'layer {\n  name: "in"\n  type: "Input"\n  top: "x"\n'
                        '  input_param { shape { dim: 1 } }\n}\n'
                        'layer {\n  name: "relu1"\n  type: "ReLU"\n  bottom: "conv9"\n  top: "y"\n}\n')
    with pytest.raises(NetError) as err:
        Net(p, protonet.TEST)
    assert "Unknown bottom blob 'conv9' (layer 'relu1', bottom 0)" in str(err.value)
    assert "net.prototxt:8" in str(err.value)


def test_parse_error_names_file_line_column(tmp_path):
    p = write(tmp_path, 'layer {\n  name: "in"\n  tpye: "Input"\n}\n')
    with pytest.raises(FormatError) as err:
        Net(p, protonet.TEST)
    assert "net.prototxt:3:" in str(err.value) and "tpye" in str(err.value)


def test_include_and_exclude_together_is_an_error(tmp_path):
    p = write(tmp_path, 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } }\n'
                        '  include { phase: TEST } exclude { stage: "x" } }\n')
    with pytest.raises(NetError, match="either include rules or exclude rules"):
        Net(p, protonet.TEST)


def test_level_and_stage_arguments(tmp_path):
    p = write(tmp_path, """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }
layer { name: "lvl" type: "ReLU" bottom: "x" top: "l" include { min_level: 2 } }
layer { name: "stg" type: "ReLU" bottom: "x" top: "s" include { stage: "a" stage: "b" } }
""")
    assert Net(p, protonet.TEST).layer_names == ["in"]
    assert "lvl" in Net(p, protonet.TEST, level=2).layer_names
    assert "stg" not in Net(p, protonet.TEST, stages=["a"]).layer_names
    assert "stg" in Net(p, protonet.TEST, stages=["a", "b"]).layer_names


def test_v1_caffemodel_with_legacy_blob_shapes_loads_by_name(tmp_path):
    """An old caffemodel (V1 `layers`, 4-d num/channels/height/width blobs) fills a V2 net."""
    proto = write(tmp_path, """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 3 kernel_size: 3 } }
layer { name: "ip" type: "InnerProduct" bottom: "c" top: "y" inner_product_param { num_output: 4 } }
""")
    r = np.random.default_rng(4)
    w_conv, b_conv = r.normal(size=(3, 2, 3, 3)), r.normal(size=3)
    w_ip, b_ip = r.normal(size=(4, 27)), r.normal(size=4)
    old = caffe_pb2.NetParameter()
    for name, kind, arrays in (("conv", caffe_pb2.V1LayerParameter.CONVOLUTION, (w_conv, b_conv)),
                               ("ip", caffe_pb2.V1LayerParameter.INNER_PRODUCT, (w_ip, b_ip)),
                               ("gone", caffe_pb2.V1LayerParameter.RELU, ())):
        layer = old.layers.add(name=name, type=kind)
        for a in arrays:
            legacy = (1,) * (4 - a.ndim) + a.shape
            blob = layer.blobs.add(num=legacy[0], channels=legacy[1], height=legacy[2], width=legacy[3])
            blob.data.extend(a.ravel().astype(np.float32).tolist())
    path = tmp_path / "old.caffemodel"
    path.write_bytes(old.SerializeToString())
    net = Net(proto, protonet.TEST, weights=str(path))
    np.testing.assert_allclose(net.params["conv"][0].data, w_conv, rtol=1e-6)
    np.testing.assert_allclose(net.params["conv"][1].data, b_conv, rtol=1e-6)
    np.testing.assert_allclose(net.params["ip"][0].data, w_ip, rtol=1e-6)
    np.testing.assert_allclose(net.params["ip"][1].data, b_ip, rtol=1e-6)


SAVE_NET = """name: "s"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "a" param { name: "w" }
  inner_product_param { num_output: 2 bias_term: false weight_filler { type: "constant" value: 1 } } }
layer { name: "fc2" type: "InnerProduct" bottom: "data" top: "b" param { name: "w" }
  inner_product_param { num_output: 2 bias_term: false } }
"""


def test_a_prototxt_that_is_not_utf8_still_loads(tmp_path):
    # Caffe's parser takes the bytes as they are; comments saved as GBK are common
    text = SAVE_NET.replace('name: "s"', '# \u8fd9\u662f\u4e00\u4e2a\u7f51\u7edc\nname: "s"')
    path = tmp_path / "gbk.prototxt"
    path.write_bytes(text.encode("gbk"))
    net = Net(str(path), phase=caffe_pb2.TEST)
    assert net.layer_names == ["data", "data_data_0_split", "fc", "fc2"]
    # and its errors still name the line
    path.write_bytes(text.replace('top: "b"', 'top: "b" bogus: 1').encode("gbk"))
    with pytest.raises(FormatError, match=r"gbk\.prototxt:6:"):
        Net(str(path), phase=caffe_pb2.TEST)


def test_saved_layers_carry_the_net_phase(tmp_path):
    net = Net(write(tmp_path, SAVE_NET), phase=caffe_pb2.TEST)
    net.save(str(tmp_path / "w.caffemodel"))
    saved = read_binary(str(tmp_path / "w.caffemodel"), caffe_pb2.NetParameter())
    assert [l.phase for l in saved.layer] == [caffe_pb2.TEST] * 4
    assert all(l.HasField("phase") for l in saved.layer)


def test_weights_and_diffs_load_into_the_first_layer_of_a_name(tmp_path):
    # two layers named "fc" (as Caffe allows): Caffe copies into the first one
    twice = SAVE_NET.replace('name: "fc2"', 'name: "fc"').replace('param { name: "w" }', "")
    net = Net(write(tmp_path, twice), phase=caffe_pb2.TEST)
    model = caffe_pb2.NetParameter()
    layer = model.layer.add(name="fc", type="InnerProduct")
    blob = layer.blobs.add()
    blob.shape.dim.extend([2, 3])
    blob.data.extend(range(6))
    blob.diff.extend([0.5] * 6)                  # a snapshot_diff model carries diffs too
    net.copy_from(model)
    first, second = [net._layers[i].blobs[0] for i, n in enumerate(net.layer_names) if n == "fc"]
    np.testing.assert_array_equal(first.data, np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(first.diff, np.full((2, 3), 0.5))
    assert not second.data.any()


def test_hdf5_snapshot_diffs_include_shared_params(tmp_path):
    import h5py
    from protonet.solver import load_hdf5_weights, save_hdf5_weights
    net = Net(write(tmp_path, SAVE_NET), phase=caffe_pb2.TEST)
    net.params["fc"][0].diff[...] = 2.0
    save_hdf5_weights(net, str(tmp_path / "w.h5"), write_diff=True)
    with h5py.File(tmp_path / "w.h5", "r") as f:
        # values once (fc owns "w"), diffs for every layer's params, shared or not (as Caffe)
        assert list(f["data"]["fc"]) == ["0"] and list(f["data"]["fc2"]) == []
        assert list(f["diff"]["fc"]) == ["0"] and list(f["diff"]["fc2"]) == ["0"]
    other = Net(write(tmp_path, SAVE_NET.replace("value: 1", "value: 0"), "o.prototxt"),
                phase=caffe_pb2.TEST)
    load_hdf5_weights(other, str(tmp_path / "w.h5"))
    np.testing.assert_array_equal(other.params["fc2"][0].data, np.ones((2, 3)))
