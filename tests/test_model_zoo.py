"""Caffe's own example nets (written out by tests/zoo_nets.py), built with their data
layers replaced by Input/DummyData and run forward and backward: output shapes, losses
against NumPy and near their initial values, every learnable parameter's gradient,
split and in-place blob names, published parameter totals. Then random-weight deploy
nets saved by protonet and read back by OpenCV's Caffe importer, blob by blob."""
import math

import cv2
import numpy as np
import pytest

import protonet
from protonet import Net
from protonet.proto import caffe_pb2

import zoo_nets


# ------------------------------------------------------------------ helpers
def build(tmp, text, phase, name="net.prototxt"):
    path = tmp / name
    path.write_text(text)
    return Net(str(path), phase)


def f64(blob):
    return np.asarray(blob.data, dtype=np.float64)


def softmax(x, axis=1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_loss(logits, labels):
    """SoftmaxWithLoss over (N, C) logits; labels truncated to int as Caffe does."""
    logp = np.log(softmax(np.asarray(logits, np.float64)))
    lab = np.asarray(labels).astype(np.int64)
    return -logp[np.arange(len(lab)), lab].mean()


def top_k_accuracy(logits, labels, k):
    order = np.argsort(-np.asarray(logits), axis=1)[:, :k]
    return float(np.mean([int(l) in row for l, row in zip(labels, order)]))


def check_param_grads(net):
    """Every param with lr_mult > 0 got a finite, non-zero diff; frozen ones none."""
    seen = 0
    for name, layer in zip(net.layer_names, net.layers):
        for i, blob in enumerate(layer.blobs):
            diff = np.asarray(blob.diff)
            assert np.all(np.isfinite(diff)), (name, i)
            if layer.param_propagate_down[i]:
                assert np.any(diff != 0), "no gradient reached %s param %d" % (name, i)
                seen += 1
            else:
                assert not np.any(diff), "frozen %s param %d got a gradient" % (name, i)
    return seen


def assert_shapes(net, expected, n):
    """{blob: shape without the batch axis} -> assert each blob is (n, *shape)."""
    for name, shape in expected.items():
        assert net.blobs[name].shape == (n,) + tuple(shape), name


def param_count(net):
    unique = {id(b): b for layer in net.layers for b in layer.blobs}
    return sum(b.count for b in unique.values())


# -------------------------------------------------------------------- LeNet
LENET_SHAPES = {"conv1": (20, 24, 24), "pool1": (20, 12, 12), "conv2": (50, 8, 8),
                "pool2": (50, 4, 4), "ip1": (500,), "ip2": (10,)}


def test_lenet_train_and_test(tmp_path):
    n = 8
    protonet.set_random_seed(1)
    net = build(tmp_path, zoo_nets.lenet(n), protonet.TEST)
    # Caffe's split naming: <blob>_<producer>_<top index>_split, inserted after the producer.
    assert net.layer_names == ["mnist", "label_mnist_1_split", "conv1", "pool1", "conv2",
                               "pool2", "ip1", "relu1", "ip2", "ip2_ip2_0_split", "accuracy",
                               "loss"]
    assert list(net.blobs) == ["data", "label", "label_mnist_1_split_0", "label_mnist_1_split_1",
                               "conv1", "pool1", "conv2", "pool2", "ip1", "ip2",
                               "ip2_ip2_0_split_0", "ip2_ip2_0_split_1", "accuracy", "loss"]
    assert net.top_names[net.layer_names.index("relu1")] == ["ip1"]          # in place
    r = np.random.default_rng(0)
    x = r.uniform(0, 1, (n, 1, 28, 28))
    labels = r.integers(0, 10, n)
    out = net.forward(data=x, label=labels)
    assert_shapes(net, LENET_SHAPES, n)
    logits = f64(net.blobs["ip2"])
    assert out["loss"] == pytest.approx(softmax_loss(logits, labels), rel=1e-5)
    assert abs(float(out["loss"]) - math.log(10)) < 1.0
    assert float(out["accuracy"]) == pytest.approx(top_k_accuracy(logits, labels, 1))
    net.backward()
    assert check_param_grads(net) == 8
    assert not np.any(net.blobs["data"].diff)              # an input gets no gradient

    train = build(tmp_path, zoo_nets.lenet(n), protonet.TRAIN, "train.prototxt")
    assert "accuracy" not in train.layer_names
    assert not any(b.endswith(("_split_0", "_split_1")) for b in train.blobs)
    train.share_with(net)
    out = train.forward(data=x, label=labels)
    assert out["loss"] == pytest.approx(softmax_loss(logits, labels), rel=1e-5)


# ------------------------------------------------------------------ CIFAR-10
CIFAR_SHAPES = {"conv1": (32, 32, 32), "pool1": (32, 16, 16), "conv2": (32, 16, 16),
                "pool2": (32, 8, 8), "conv3": (64, 8, 8), "pool3": (64, 4, 4)}


def test_cifar10_quick_dummydata(tmp_path):
    n = 8
    protonet.set_random_seed(2)
    net = build(tmp_path, zoo_nets.cifar10_quick(n, dummy=True), protonet.TRAIN)
    assert net.layer_names == ["cifar", "conv1", "pool1", "relu1", "conv2", "relu2", "pool2",
                               "conv3", "relu3", "pool3", "ip1", "ip2", "loss"]
    loss = net.forward_from_to()
    assert_shapes(net, dict(CIFAR_SHAPES, ip1=(64,), ip2=(10,)), n)
    labels = np.asarray(net.blobs["label"].data).copy()
    assert np.any(labels != np.floor(labels))              # truncation is exercised
    assert loss == pytest.approx(softmax_loss(f64(net.blobs["ip2"]), labels), rel=1e-5)
    assert loss == pytest.approx(math.log(10), abs=0.01)   # conv1 std 1e-4: near-uniform scores
    net.backward_from_to()
    assert check_param_grads(net) == 10
    first = np.asarray(net.blobs["data"].data).copy()
    net.forward_from_to()                                  # DummyData refills non-constant tops
    assert not np.array_equal(first, net.blobs["data"].data)


def test_cifar10_quick_test_phase_splits(tmp_path):
    net = build(tmp_path, zoo_nets.cifar10_quick(4), protonet.TEST)
    assert net.layer_names == ["cifar", "label_cifar_1_split", "conv1", "pool1", "relu1",
                               "conv2", "relu2", "pool2", "conv3", "relu3", "pool3", "ip1",
                               "ip2", "ip2_ip2_0_split", "accuracy", "loss"]
    r = np.random.default_rng(3)
    labels = r.integers(0, 10, 4)
    out = net.forward(data=r.normal(0, 50, (4, 3, 32, 32)), label=labels)
    logits = f64(net.blobs["ip2"])
    assert float(out["accuracy"]) == pytest.approx(top_k_accuracy(logits, labels, 1))
    assert out["loss"] == pytest.approx(softmax_loss(logits, labels), rel=1e-5)


def test_cifar10_full(tmp_path):
    n = 8
    protonet.set_random_seed(3)
    net = build(tmp_path, zoo_nets.cifar10_full(n), protonet.TRAIN)
    r = np.random.default_rng(4)
    labels = r.integers(0, 10, n)
    out = net.forward(data=r.normal(0, 50, (n, 3, 32, 32)), label=labels)
    assert_shapes(net, dict(CIFAR_SHAPES, norm1=(32, 16, 16), norm2=(32, 8, 8), ip1=(10,)), n)
    assert out["loss"] == pytest.approx(softmax_loss(f64(net.blobs["ip1"]), labels), rel=1e-5)
    assert float(out["loss"]) == pytest.approx(math.log(10), abs=0.01)
    # conv1, conv2 (lr 1/2), conv3 (no specs: 1/1), ip1 (lr 1/2, decay 250/0)
    assert net.params_lr == [1, 2, 1, 2, 1, 1, 1, 2]
    assert net.params_weight_decay == [1, 1, 1, 1, 1, 1, 250, 0]
    net.backward()
    assert check_param_grads(net) == 8          # conv3 has no param specs: lr_mult 1 by default


def _bn_layers(net):
    return [(name, layer) for name, layer in zip(net.layer_names, net.layers)
            if layer.type == "BatchNorm"]


BN_BOTTOMS = {"bn1": "pool1", "bn2": "conv2", "bn3": "conv3"}


def test_cifar10_sigmoid_bn_train_uses_batch_stats(tmp_path):
    n = 6
    protonet.set_random_seed(5)
    net = build(tmp_path, zoo_nets.cifar10_full_sigmoid_bn(n), protonet.TRAIN)
    r = np.random.default_rng(5)
    labels = r.integers(0, 10, n)
    out = net.forward(data=r.normal(0, 50, (n, 3, 32, 32)), label=labels)
    assert_shapes(net, dict(CIFAR_SHAPES, bn1=(32, 16, 16), bn2=(32, 16, 16), bn3=(64, 8, 8),
                        ip1=(10,)), n)
    for name, layer in _bn_layers(net):
        x = f64(net.blobs[BN_BOTTOMS[name]])
        mean = x.mean(axis=(0, 2, 3), keepdims=True)
        var = x.var(axis=(0, 2, 3), keepdims=True)
        expected = (x - mean) / np.sqrt(var + 1e-5)
        np.testing.assert_allclose(net.blobs[name].data, expected, rtol=1e-3, atol=1e-4)
        m = x.size // x.shape[1]
        mean_sum, var_sum, factor = (np.asarray(b.data, np.float64) for b in layer.blobs)
        assert factor == pytest.approx([1.0])
        np.testing.assert_allclose(mean_sum, mean.ravel(), rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(var_sum, var.ravel() * m / (m - 1), rtol=1e-3, atol=1e-12)
        assert layer.param_propagate_down == [False, False, False]
    assert out["loss"] == pytest.approx(softmax_loss(f64(net.blobs["ip1"]), labels), rel=1e-5)
    assert float(out["loss"]) == pytest.approx(math.log(10), abs=0.1)
    net.backward()
    assert check_param_grads(net) == 5          # 3 bias-free convs + ip1 weight and bias


def test_cifar10_sigmoid_bn_test_uses_global_stats(tmp_path):
    n = 4
    protonet.set_random_seed(6)
    net = build(tmp_path, zoo_nets.cifar10_full_sigmoid_bn(n), protonet.TEST)
    r = np.random.default_rng(6)
    saved = {}
    for name, layer in _bn_layers(net):
        c = layer.blobs[0].count
        factor = 7.5                              # the running sums are divided by it
        saved[name] = (r.normal(0, 0.01, c) * factor, r.uniform(1e-4, 1e-2, c) * factor, factor)
        for blob, value in zip(layer.blobs, saved[name]):
            blob.data[...] = value
    labels = r.integers(0, 10, n)
    out = net.forward(data=r.normal(0, 50, (n, 3, 32, 32)), label=labels)
    for name, layer in _bn_layers(net):
        mean_sum, var_sum, factor = saved[name]
        shape = (1, -1, 1, 1)
        x = f64(net.blobs[BN_BOTTOMS[name]])
        expected = (x - (mean_sum / factor).reshape(shape)) / np.sqrt(
            (var_sum / factor).reshape(shape) + 1e-5)
        np.testing.assert_allclose(net.blobs[name].data, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer.blobs[0].data, mean_sum, rtol=1e-6)   # untouched
        assert float(layer.blobs[2].data[0]) == factor
    assert "accuracy" in net.layer_names
    logits = f64(net.blobs["ip1"])
    assert out["loss"] == pytest.approx(softmax_loss(logits, labels), rel=1e-5)
    assert float(out["accuracy"]) == pytest.approx(top_k_accuracy(logits, labels, 1))
    net.backward()
    assert check_param_grads(net) == 5


# ------------------------------------------------------------- AlexNet family
ALEXNET_SHAPES = {"conv1": (96, 55, 55), "norm1": (96, 55, 55), "pool1": (96, 27, 27),
                  "conv2": (256, 27, 27), "norm2": (256, 27, 27), "pool2": (256, 13, 13),
                  "conv3": (384, 13, 13), "conv4": (384, 13, 13), "conv5": (256, 13, 13),
                  "pool5": (256, 6, 6), "fc6": (4096,), "fc7": (4096,), "fc8": (1000,)}
CAFFENET_SHAPES = dict(ALEXNET_SHAPES, norm1=(96, 27, 27), norm2=(256, 13, 13))


def alexnet_total():
    """Learnable values of AlexNet/CaffeNet from the layer shapes (groups of 2 on conv2/4/5)."""
    convs = [(96, 3, 11), (256, 96 // 2, 5), (384, 256, 3), (384, 384 // 2, 3), (256, 384 // 2, 3)]
    fcs = [(4096, 256 * 6 * 6), (4096, 4096), (1000, 4096)]
    return sum(o * i * k * k + o for o, i, k in convs) + sum(o * i + o for o, i in fcs)


def googlenet_total():
    total = 64 * 3 * 7 * 7 + 64 + 64 * 64 + 64 + 192 * 64 * 9 + 192
    cin = 192
    for _, n1, n3r, n3, n5r, n5, npp in zoo_nets.INCEPTIONS:
        total += (cin * (n1 + n3r + n5r + npp) + n3r * n3 * 9 + n5r * n5 * 25
                  + n1 + n3r + n3 + n5r + n5 + npp)
        cin = n1 + n3 + n5 + npp
    return total + 1000 * cin + 1000


def test_published_totals_from_layer_shapes():
    assert alexnet_total() == 60965224     # AlexNet's ~61M (the same for CaffeNet)
    assert googlenet_total() == 6998552    # bvlc_googlenet (no auxiliary classifiers): ~7.0M


def _images(r, n):
    return r.uniform(-120, 120, (n, 3, 227, 227))    # mean-subtracted pixel range


@pytest.fixture(scope="class")
def alexnet(tmp_path_factory):
    protonet.set_random_seed(7)
    tmp = tmp_path_factory.mktemp("alexnet")
    train = build(tmp, zoo_nets.alexnet_train_val(2, top5=True), protonet.TRAIN)
    test = build(tmp, zoo_nets.alexnet_train_val(3, top5=True), protonet.TEST, "test.prototxt")
    test.share_with(train)
    return train, test, tmp


class TestAlexNet:
    def test_train_phase_dropout_and_gradients(self, alexnet):
        net = alexnet[0]
        assert "accuracy" not in net.layer_names and "accuracy_top5" not in net.layer_names
        assert net.top_names[net.layer_names.index("drop6")] == ["fc6"]
        assert net.params["conv2"][1].data[0] == pytest.approx(0.1)     # bias_filler value
        r = np.random.default_rng(8)
        labels = r.integers(0, 1000, 2)
        out = net.forward(data=_images(r, 2), label=labels)
        assert_shapes(net, ALEXNET_SHAPES, 2)
        assert out["loss"] == pytest.approx(softmax_loss(f64(net.blobs["fc8"]), labels), rel=1e-5)
        assert float(out["loss"]) == pytest.approx(math.log(1000), abs=0.15)
        # fc7 holds relu7 then drop7 in place: each value is 0 or 2 x relu(W fc6 + b).
        w, b = (f64(p) for p in net.params["fc7"])
        pre = np.maximum(f64(net.blobs["fc6"]) @ w.T + b, 0)
        fc7 = f64(net.blobs["fc7"])
        kept = fc7 != 0
        np.testing.assert_allclose(fc7[kept], 2 * pre[kept], rtol=1e-3, atol=1e-5)
        dropped = np.mean(~kept[pre > 1e-3])
        assert 0.4 < dropped < 0.6
        net.backward()
        assert check_param_grads(net) == 16

    def test_test_phase_accuracy_top1_top5(self, alexnet):
        net = alexnet[1]
        assert net.layer_names[-4:] == ["fc8_fc8_0_split", "accuracy", "accuracy_top5", "loss"]
        # share_with shares values (not gradients), as Caffe's ShareTrainedLayersWith
        assert np.shares_memory(net.params["fc8"][0].data, alexnet[0].params["fc8"][0].data)
        r = np.random.default_rng(9)
        x = _images(r, 3)
        net.forward(data=x, label=np.zeros(3))
        fc8 = f64(net.blobs["fc8"])
        order = np.argsort(-fc8, axis=1)
        # one top-1 hit, one hit at rank 3 (top-5 only), one miss at rank 10
        labels = np.array([order[0, 0], order[1, 2], order[2, 9]], np.float64)
        out = net.forward(data=x, label=labels)
        np.testing.assert_array_equal(net.blobs["fc8"].data, fc8.astype(np.float32))  # no dropout
        assert float(out["accuracy"]) == pytest.approx(1 / 3)
        assert float(out["accuracy_top5"]) == pytest.approx(2 / 3)
        assert out["loss"] == pytest.approx(softmax_loss(fc8, labels), rel=1e-5)
        w, b = (f64(p) for p in net.params["fc7"])
        np.testing.assert_allclose(net.blobs["fc7"].data,
                                   np.maximum(f64(net.blobs["fc6"]) @ w.T + b, 0),
                                   rtol=1e-3, atol=1e-4)

    def test_deploy_with_trained_weights(self, alexnet):
        train, test, tmp = alexnet
        deploy = build(tmp, zoo_nets.alexnet_deploy(10), protonet.TEST, "deploy.prototxt")
        assert deploy.inputs == ["data"] and deploy.blobs["data"].shape == (10, 3, 227, 227)
        assert param_count(deploy) == alexnet_total()
        deploy.share_with(train)
        x = _images(np.random.default_rng(10), 1)
        prob = deploy.forward(data=x)["prob"].copy()
        assert prob.shape == (1, 1000) and prob.sum() == pytest.approx(1, rel=1e-5)
        test.forward(data=x, label=np.zeros(1))                 # reshapes the batch to 1
        np.testing.assert_allclose(prob[0], softmax(f64(test.blobs["fc8"])[:1])[0],
                                   rtol=1e-4, atol=1e-9)

    def test_param_count(self, alexnet):
        assert param_count(alexnet[0]) == alexnet_total()


def test_caffenet_train(tmp_path):
    protonet.set_random_seed(11)
    net = build(tmp_path, zoo_nets.caffenet_train_val(1), protonet.TRAIN)
    assert param_count(net) == alexnet_total()
    assert net.params["conv4"][1].data[0] == pytest.approx(1.0)        # CaffeNet's bias 1
    r = np.random.default_rng(11)
    labels = r.integers(0, 1000, 1)
    out = net.forward(data=_images(r, 1), label=labels)
    assert_shapes(net, CAFFENET_SHAPES, 1)
    assert out["loss"] == pytest.approx(softmax_loss(f64(net.blobs["fc8"]), labels), rel=1e-5)
    # CaffeNet's constant biases (0.4, 1, 0.4, 0.4, 0.4) spread the initial scores more
    # than AlexNet's: the first loss sits a little above log(1000).
    assert math.log(1000) - 0.15 < float(out["loss"]) < math.log(1000) + 1.0
    net.backward()
    assert check_param_grads(net) == 16


# ------------------------------------------------------------------ GoogLeNet
GOOGLENET_CHANNELS = {"inception_3a/output": (256, 28), "inception_3b/output": (480, 28),
                      "pool3/3x3_s2": (480, 14), "inception_4a/output": (512, 14),
                      "inception_4b/output": (512, 14), "inception_4c/output": (512, 14),
                      "inception_4d/output": (528, 14), "inception_4e/output": (832, 14),
                      "pool4/3x3_s2": (832, 7), "inception_5a/output": (832, 7),
                      "inception_5b/output": (1024, 7), "pool5/7x7_s1": (1024, 1)}


def test_googlenet_deploy_forward_backward(tmp_path):
    protonet.set_random_seed(12)
    net = build(tmp_path, zoo_nets.googlenet_deploy(1, force_backward=True), protonet.TEST)
    assert param_count(net) == googlenet_total()
    split = "pool2/3x3_s2_pool2/3x3_s2_0_split"
    assert net.top_names[net.layer_names.index(split)] == ["%s_%d" % (split, k) for k in range(4)]
    r = np.random.default_rng(12)
    out = net.forward(data=r.uniform(-120, 120, (1, 3, 224, 224)))
    assert list(out) == ["prob"] and out["prob"].shape == (1, 1000)
    assert out["prob"].sum() == pytest.approx(1, rel=1e-5)
    assert_shapes(net, {"conv1/7x7_s2": (64, 112, 112), "pool1/3x3_s2": (64, 56, 56),
                    "conv2/3x3": (192, 56, 56), "pool2/3x3_s2": (192, 28, 28)}, 1)
    assert_shapes(net, {k: (c, s, s) for k, (c, s) in GOOGLENET_CHANNELS.items()}, 1)
    branches = [net.blobs["inception_4d/" + b].data for b in ("1x1", "3x3", "5x5", "pool_proj")]
    np.testing.assert_array_equal(net.blobs["inception_4d/output"].data,
                                  np.concatenate(branches, axis=1))
    np.testing.assert_allclose(net.blobs["pool5/7x7_s1"].data[..., 0, 0],     # Dropout: identity
                               f64(net.blobs["inception_5b/output"]).mean(axis=(2, 3)),
                               rtol=1e-4, atol=1e-6)
    grads = net.backward(prob=r.normal(size=(1, 1000)))
    assert np.all(np.isfinite(grads["data"])) and np.any(grads["data"] != 0)
    assert check_param_grads(net) == 2 * 58          # 57 convolutions + the classifier


# ------------------------------------------------------------------ siamese
def test_mnist_siamese_shared_towers(tmp_path):
    n = 8
    protonet.set_random_seed(13)
    net = build(tmp_path, zoo_nets.mnist_siamese(n), protonet.TRAIN)
    towers = ["conv1", "conv2", "ip1", "ip2", "feat"]
    for name in towers:
        for i in range(2):
            a, b = net.params[name][i], net.params[name + "_p"][i]
            assert np.shares_memory(a.data, b.data) and np.shares_memory(a.diff, b.diff)
    assert len(net.learnable_params) == 10
    r = np.random.default_rng(13)
    pair = r.uniform(0, 1, (n, 2, 28, 28))
    sim = np.array([1, 0] * (n // 2), np.float64)
    out = net.forward(pair_data=pair, sim=sim)
    np.testing.assert_array_equal(net.blobs["data"].data, pair[:, :1].astype(np.float32))
    np.testing.assert_array_equal(net.blobs["data_p"].data, pair[:, 1:].astype(np.float32))
    assert net.blobs["feat"].shape == (n, 2) and net.blobs["feat_p"].shape == (n, 2)
    d2 = ((f64(net.blobs["feat"]) - f64(net.blobs["feat_p"])) ** 2).sum(axis=1)
    expected = (sim * d2 + (1 - sim) * np.maximum(1.0 - np.sqrt(d2), 0) ** 2).sum() / (2 * n)
    assert out["loss"] == pytest.approx(expected, rel=1e-4)
    net.backward()

    # The same towers with their own params: the shared diff is the sum of both towers'.
    twin = build(tmp_path, zoo_nets.mnist_siamese(n, share=False), protonet.TRAIN, "twin.prototxt")
    assert len(twin.learnable_params) == 20
    twin.copy_from(caffe_pb2.NetParameter.FromString(net.to_proto_bytes()))
    out2 = twin.forward(pair_data=pair, sim=sim)
    assert out2["loss"] == pytest.approx(float(out["loss"]), rel=1e-6)
    twin.backward()
    for name in towers:
        for i in range(2):
            a, b = (np.asarray(twin.params[k][i].diff) for k in (name, name + "_p"))
            assert np.any(a != 0) and np.any(b != 0), name
            scale = max(np.abs(a).max(), np.abs(b).max())
            shared = np.asarray(net.params[name][i].diff)
            assert np.all(np.isfinite(shared))
            np.testing.assert_allclose(shared, a + b, rtol=1e-4, atol=1e-5 * scale)
    # Biases of the last two (linear) layers shift both features alike and cancel in
    # feat - feat_p: their tower gradients are opposite, their shared gradient ~0.
    for name in ("ip2", "feat"):
        a, b = (np.asarray(twin.params[k][1].diff) for k in (name, name + "_p"))
        np.testing.assert_allclose(a, -b, rtol=1e-4, atol=1e-5 * np.abs(a).max())
        assert np.abs(net.params[name][1].diff).max() < 1e-4 * np.abs(a).max()
    for name in ("conv1", "conv2", "ip1"):
        assert np.any(np.asarray(net.params[name][1].diff) != 0)
    for name in towers:
        assert np.any(np.asarray(net.params[name][0].diff) != 0)


# --------------------------------------------------------------- autoencoder
@pytest.mark.parametrize("published_names", [True, False], ids=["published", "renamed"])
def test_mnist_autoencoder_losses(tmp_path, published_names):
    """The published file names both loss layers "loss"; the renamed variant checks
    the rest of the net independently of that."""
    n = 6
    text = zoo_nets.mnist_autoencoder(n)
    if not published_names:
        text = text.replace('name: "loss"\n  type: "EuclideanLoss"',
                            'name: "l2_loss"\n  type: "EuclideanLoss"')
    protonet.set_random_seed(14)
    net = build(tmp_path, text, protonet.TRAIN)
    assert "data_data_0_split" in net.layer_names
    assert "flatdata_flatdata_0_split" in net.layer_names
    assert "decode1_decode1_0_split" in net.layer_names
    x = np.random.default_rng(14).uniform(0, 1, (n, 1, 28, 28))
    out = net.forward(data=x)
    assert set(out) == {"cross_entropy_loss", "l2_error"}
    assert net.blobs["encode4"].shape == (n, 30) and net.blobs["decode1"].shape == (n, 784)
    t = x.reshape(n, -1)
    z = f64(net.blobs["decode1"])
    ce = (np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))).sum() / n
    l2 = ((1 / (1 + np.exp(-z)) - t) ** 2).sum() / (2 * n)
    assert out["cross_entropy_loss"] == pytest.approx(ce, rel=1e-4)
    assert out["l2_error"] == pytest.approx(l2, rel=1e-4)
    assert net.last_loss == pytest.approx(ce, rel=1e-4)     # loss_weight 0: not in the total
    l2_layer = len(net.layer_names) - 1
    assert not net.layer_need_backward[l2_layer]
    assert not net.layer_need_backward[net.layer_names.index("decode1neuron")]
    net.backward()
    assert check_param_grads(net) == 16


# -------------------------------------------------------------------- FCN-8s
def bilinear(k):
    factor = (k + 1) // 2
    center = factor - 1 if k % 2 == 1 else factor - 0.5
    og = np.ogrid[:k, :k]
    return (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)


FCN_SHAPES = {"conv1_1": (64, 262, 262), "pool1": (64, 131, 131), "pool2": (128, 66, 66),
              "pool3": (256, 33, 33), "pool4": (512, 17, 17), "pool5": (512, 9, 9),
              "fc6": (4096, 3, 3), "fc7": (4096, 3, 3), "score_fr": (21, 3, 3),
              "upscore2": (21, 8, 8), "score_pool4": (21, 17, 17), "score_pool4c": (21, 8, 8),
              "fuse_pool4": (21, 8, 8), "upscore_pool4": (21, 18, 18),
              "score_pool3": (21, 33, 33), "score_pool3c": (21, 18, 18),
              "upscore8": (21, 152, 152), "score": (21, 64, 64)}
FCN_CROPS = {"score_pool4c": ("score_pool4", 5), "score_pool3c": ("score_pool3", 9),
             "score": ("upscore8", 31)}


@pytest.fixture(scope="class")
def fcn(tmp_path_factory):
    """voc-fcn8s deploy at 64x64 with random conv weights (std sqrt(1/fan_in)) and the
    frozen bilinear upsampling kernels that FCN's surgery puts in the Deconvolutions."""
    tmp = tmp_path_factory.mktemp("fcn")
    net = build(tmp, zoo_nets.voc_fcn8s(64, 64), protonet.TEST)
    r = np.random.default_rng(15)
    for name, layer in zip(net.layer_names, net.layers):
        if layer.type == "Convolution":
            w, b = layer.blobs
            fan_in = w.count // w.shape[0]
            w.data[...] = r.standard_normal(w.shape, np.float32) * np.float32(fan_in ** -0.5)
            b.data[...] = r.normal(0, 0.01, b.shape)
        elif layer.type == "Deconvolution":
            w = layer.blobs[0]
            w.data[...] = 0
            for c in range(w.shape[0]):
                w.data[c, c] = bilinear(w.shape[2])
    return net, tmp


class TestFCN8s:
    def test_deploy_output_has_input_size(self, fcn):
        net = fcn[0]
        assert "data_input_0_split" in net.layer_names
        assert "pool4_pool4_0_split" in net.layer_names
        x = np.random.default_rng(16).uniform(-120, 120, (1, 3, 64, 64))
        out = net.forward(data=x)
        assert list(out) == ["score"] and out["score"].shape == (1, 21, 64, 64)
        assert_shapes(net, FCN_SHAPES, 1)
        for name, (src, offset) in FCN_CROPS.items():
            li = net.layer_names.index(name)
            assert net.layers[li].layer_param.crop_param.offset == [offset]
            h, w = net.blobs[name].shape[2:]
            window = net.blobs[src].data[:, :, offset:offset + h, offset:offset + w]
            np.testing.assert_array_equal(net.blobs[name].data, window)
        np.testing.assert_allclose(net.blobs["fuse_pool4"].data,
                                   f64(net.blobs["upscore2"]) + f64(net.blobs["score_pool4c"]),
                                   rtol=1e-5, atol=1e-6)
        assert np.all(np.isfinite(out["score"])) and np.any(out["score"] != 0)

    def test_atonce_train_forward_backward(self, fcn):
        deploy, tmp = fcn
        # 32x32 (the smallest size whose crops all fit is 1x1, thanks to pad 100)
        # keeps the backward through the 230x230 conv1 maps affordable.
        text = zoo_nets.voc_fcn8s(32, 32, train=True, scale_skips=True)
        protonet.set_random_seed(17)
        net = build(tmp, text, protonet.TRAIN, "train.prototxt")
        net.share_with(deploy)                       # the deploy net's conv and deconv weights
        r = np.random.default_rng(17)
        label = r.integers(0, 21, (1, 1, 32, 32)).astype(np.float64)
        label[0, 0, :4] = 255                                      # ignore_label
        out = net.forward(data=r.uniform(-120, 120, (1, 3, 32, 32)), label=label)
        assert_shapes(net, {"conv1_1": (64, 230, 230), "pool5": (512, 8, 8), "fc7": (4096, 2, 2),
                        "upscore2": (21, 6, 6), "upscore_pool4": (21, 14, 14),
                        "upscore8": (21, 120, 120), "score": (21, 32, 32)}, 1)
        np.testing.assert_allclose(net.blobs["scale_pool4"].data,
                                   0.01 * f64(net.blobs["pool4"]), rtol=1e-5, atol=1e-12)
        np.testing.assert_allclose(net.blobs["scale_pool3"].data,
                                   1e-4 * f64(net.blobs["pool3"]), rtol=1e-5, atol=1e-12)
        logp = np.log(softmax(f64(net.blobs["score"])))
        lab = label.astype(np.int64)[:, 0]
        valid = lab != 255
        picked = np.take_along_axis(logp, np.where(valid, lab, 0)[:, None], axis=1)[:, 0]
        expected = -picked[valid].sum()                         # normalize: false -> / batch (1)
        assert out["loss"] == pytest.approx(expected, rel=1e-4)
        assert float(out["loss"]) / valid.sum() == pytest.approx(math.log(21), abs=0.3)
        net.backward()
        frozen = [name for name, layer in zip(net.layer_names, net.layers)
                  if layer.type in ("Deconvolution", "Scale")]
        assert frozen == ["upscore2", "scale_pool4", "upscore_pool4", "scale_pool3", "upscore8"]
        assert check_param_grads(net) == 2 * 18              # 13 VGG convs, fc6, fc7, 3 scores


# ---------------------------------------------------------- OpenCV cross-check
OPENCV_NETS = {
    # conv -> BatchNorm (saved stats) -> Scale with bias -> Slice into Sigmoid/TanH/ELU,
    # PReLU, Eltwise SUM with coeffs, Concat, Reshape, Flatten, InnerProduct, Softmax
    "mixed": [
        zoo_nets.input_layer("input", ["data"], [(2, 4, 6, 5)]),
        zoo_nets.layer("conv", "Convolution", "data", "conv", convolution_param=dict(
            num_output=6, kernel_size=3, pad=1, weight_filler=zoo_nets.filler("gaussian", std=0.3),
            bias_filler=zoo_nets.filler("gaussian", std=0.2))),
        zoo_nets.layer("bn", "BatchNorm", "conv", "bn", batch_norm_param=dict(eps=1e-3)),
        zoo_nets.layer("scale", "Scale", "bn", "scale", scale_param=dict(
            bias_term=True, filler=zoo_nets.filler("gaussian", mean=1, std=0.3),
            bias_filler=zoo_nets.filler("gaussian", std=0.3))),
        zoo_nets.layer("slice", "Slice", "scale", ["s0", "s1", "s2"],
                       slice_param=dict(axis=1, slice_point=[2, 4])),
        zoo_nets.layer("sig", "Sigmoid", "s0", "sig"),
        zoo_nets.layer("tanh", "TanH", "s1", "tanh"),
        zoo_nets.layer("elu", "ELU", "s2", "elu", elu_param=dict(alpha=0.7)),
        zoo_nets.layer("prelu", "PReLU", "scale", "prelu",
                       prelu_param=dict(filler=zoo_nets.filler("uniform", min=0.1, max=0.5))),
        zoo_nets.layer("sum", "Eltwise", ["sig", "tanh"], "sum",
                       eltwise_param=dict(operation=zoo_nets.E("SUM"), coeff=[0.5, -1.5])),
        zoo_nets.layer("concat", "Concat", ["sum", "elu", "prelu"], "concat"),
        zoo_nets.layer("reshape", "Reshape", "concat", "reshape",
                       reshape_param=dict(shape=dict(dim=[0, -1, 5]))),
        zoo_nets.layer("flatten", "Flatten", "reshape", "flatten"),
        zoo_nets.layer("ip", "InnerProduct", "flatten", "ip", inner_product_param=dict(
            num_output=7, weight_filler=zoo_nets.filler("gaussian", std=0.1),
            bias_filler=zoo_nets.filler("gaussian", std=0.1))),
        zoo_nets.layer("prob", "Softmax", "ip", "prob"),
    ],
    # Eltwise PROD and 3-way MAX, BatchNorm with use_global_stats, two-bottom Scale,
    # channel-axis Softmax over a 4-D blob, Reshape with axis, Flatten, TanH, Sigmoid
    "eltwise": [
        zoo_nets.input_layer("input", ["data"], [(2, 3, 5, 4)]),
        zoo_nets.layer("conv", "Convolution", "data", "conv", convolution_param=dict(
            num_output=6, kernel_size=1, weight_filler=zoo_nets.filler("gaussian", std=0.5),
            bias_filler=zoo_nets.filler("gaussian", std=0.2))),
        zoo_nets.layer("slice", "Slice", "conv", ["a", "b"], slice_param=dict(axis=1)),
        zoo_nets.layer("prod", "Eltwise", ["a", "b"], "prod",
                       eltwise_param=dict(operation=zoo_nets.E("PROD"))),
        zoo_nets.layer("max", "Eltwise", ["a", "b", "prod"], "max",
                       eltwise_param=dict(operation=zoo_nets.E("MAX"))),
        zoo_nets.layer("prelu", "PReLU", "prod", "prelu",
                       prelu_param=dict(filler=zoo_nets.filler("constant", value=0.3))),
        zoo_nets.layer("bn", "BatchNorm", "max", "bn",
                       batch_norm_param=dict(use_global_stats=True)),
        zoo_nets.layer("scale", "Scale", "bn", "scale", scale_param=dict(
            bias_term=True, filler=zoo_nets.filler("uniform", min=0.5, max=1.5),
            bias_filler=zoo_nets.filler("gaussian", std=0.5))),
        zoo_nets.layer("elu", "ELU", "scale", "elu"),
        zoo_nets.layer("scale2", "Scale", ["prelu", "elu"], "scale2", scale_param=dict(axis=0)),
        zoo_nets.layer("concat", "Concat", ["prelu", "scale2", "scale"], "concat"),
        zoo_nets.layer("softmax", "Softmax", "concat", "softmax"),
        zoo_nets.layer("reshape", "Reshape", "softmax", "reshape",
                       reshape_param=dict(shape=dict(dim=[3, -1]), axis=1, num_axes=1)),
        zoo_nets.layer("flatten", "Flatten", "reshape", "flatten"),
        zoo_nets.layer("tanh", "TanH", "flatten", "tanh"),
        zoo_nets.layer("sig", "Sigmoid", "tanh", "sig"),
    ],
}
def _opencv_case(tmp_path, name, text):
    """Save a random-weight net with non-trivial BatchNorm statistics, run it on a
    random input; return it and OpenCV's import of it, given the same input."""
    proto = tmp_path / (name + ".prototxt")
    proto.write_text(text)
    protonet.set_random_seed(21)
    net = Net(str(proto), protonet.TEST)
    r = np.random.default_rng(22)
    for layer in net.layers:
        if layer.type == "BatchNorm":
            mean, var, factor = layer.blobs
            c = mean.count
            factor.data[...] = 2.5
            mean.data[...] = r.normal(0, 0.5, c) * 2.5
            var.data[...] = r.uniform(0.2, 2, c) * 2.5
    model = str(tmp_path / (name + ".caffemodel"))
    net.save(model)
    x = r.normal(size=net.blobs["data"].shape).astype(np.float32)
    net.forward(data=x)
    cvnet = cv2.dnn.readNetFromCaffe(str(proto), model)
    cvnet.setInput(x)
    return net, cvnet


@pytest.mark.parametrize("name", sorted(OPENCV_NETS))
def test_random_deploy_net_matches_opencv(tmp_path, name):
    net, cvnet = _opencv_case(tmp_path, name, zoo_nets.net(name, *OPENCV_NETS[name]))
    names = list(cvnet.getLayerNames())
    ours_names = [n for n in net.layer_names if n != "input" and not n.endswith("_split")]
    assert names == ours_names
    theirs = cvnet.forward(names)
    for layer_name, value in zip(names, theirs):
        top = net.top_names[net.layer_names.index(layer_name)][0]    # OpenCV returns top 0
        mine = np.asarray(net.blobs[top].data)
        assert value.size == mine.size, layer_name
        rel = np.abs(mine - value.reshape(mine.shape)).max() / np.abs(value).max()
        assert np.abs(value).max() > 0 and rel <= 1e-4, (layer_name, rel)


def test_channel_shared_prelu_saved_as_caffe_does(tmp_path):
    """A channel_shared PReLU has a 0-axis slope blob. Caffe's Blob::ToProto writes no
    ``shape`` field for it (it adds dims one by one, and there are none). OpenCV's
    importer rejects an empty ``shape {}``; Caffe and protonet refuse ``shape { dim: 1 }``
    when loading into the 0-axis blob."""
    text = zoo_nets.net(
        "shared_prelu", zoo_nets.input_layer("input", ["data"], [(2, 3, 4, 5)]),
        zoo_nets.layer("prelu", "PReLU", "data", "prelu",
                       prelu_param=dict(channel_shared=True,
                                        filler=zoo_nets.filler("constant", value=0.3))))
    proto = tmp_path / "shared_prelu.prototxt"
    proto.write_text(text)
    model = tmp_path / "shared_prelu.caffemodel"
    Net(str(proto), protonet.TEST).save(str(model))
    saved = caffe_pb2.NetParameter.FromString(model.read_bytes())
    blob = [l for l in saved.layer if l.name == "prelu"][0].blobs[0]
    assert list(blob.data) == [pytest.approx(0.3)]
    assert not blob.HasField("shape")
    again = Net(str(proto), protonet.TEST, weights=str(model))
    assert float(again.params["prelu"][0].data) == pytest.approx(0.3)
    net, cvnet = _opencv_case(tmp_path, "shared_prelu", text)
    theirs = cvnet.forward("prelu")
    np.testing.assert_allclose(theirs, net.blobs["prelu"].data, rtol=1e-6)
