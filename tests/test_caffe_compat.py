"""``import caffe``: pycaffe code runs unchanged on protonet.

The scripts and plugins here are written in the style of the published
pycaffe code they stand for (fcn.berkeleyvision.org's voc_layers.py, net.py,
surgery.py, score.py and solve.py; DIGITS' FCN-AlexNet), against files the
tests write.
"""
import runpy
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import caffe
import protonet
from caffe import layers as L, params as P
from protonet.io import parse_net, read_net
from protonet.proto import caffe_pb2

from parity import SHARED


def write(folder, name, text):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def write_png(path, array):
    """An 8-bit gray (H x W) or RGB (H x W x 3) PNG."""
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(str(path))


# -- a VOC-style dataset and data layer ---------------------------------------------------

MEAN = (104.00699, 116.66877, 122.67892)
TRAIN_SIZES = [(20, 24), (27, 19), (24, 32), (16, 16), (22, 26)]
VAL_SIZES = [(18, 22), (25, 21)]


def make_voc(root, seed=0):
    """JPEGImages/ (PNG files here), SegmentationClass/ and ImageSets/Segmentation/{train,val}.txt.

    Three classes: background 0, a bright square 1 and a dark square 2; a
    border of 255 (void) around the objects, as VOC marks uncertain pixels.
    """
    r = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    images = {}
    for split, sizes in (("train", TRAIN_SIZES), ("val", VAL_SIZES)):
        names = []
        for i, (h, w) in enumerate(sizes):
            name = "%s_%04d" % (split, i)
            img = r.integers(90, 140, (h, w, 3)).astype(np.uint8)
            label = np.zeros((h, w), np.uint8)
            for cls, value in ((1, 240), (2, 10)):
                y, x = r.integers(0, h - 7), r.integers(0, w - 7)
                img[y:y + 6, x:x + 6] = value
                label[max(y - 1, 0):y + 7, max(x - 1, 0):x + 7] = 255
                label[y:y + 6, x:x + 6] = cls
            write_png(root / "JPEGImages" / (name + ".png"), img)
            write_png(root / "SegmentationClass" / (name + ".png"), label)
            images[name] = (img, label)
            names.append(name)
        (root / "ImageSets" / "Segmentation" / (split + ".txt")).write_text("\n".join(names) + "\n")
    return images


VOC_LAYERS = '''
import random

import numpy as np

import caffe


class VOCSegDataLayer(caffe.Layer):
    """
    Load (input image, label image) pairs from PASCAL VOC
    one-at-a-time while reshaping the net to preserve dimensions.

    Use this to feed data to a fully convolutional network.
    """

    def setup(self, bottom, top):
        """
        Setup data layer according to parameters:

        - voc_dir: path to PASCAL VOC year dir
        - split: train / val / test
        - mean: tuple of mean values to subtract
        - randomize: load in random order (default: True)
        - seed: seed for randomization (default: None / current time)
        """
        # config
        params = eval(self.param_str)
        self.voc_dir = params['voc_dir']
        self.split = params['split']
        self.mean = np.array(params['mean'])
        self.random = params.get('randomize', True)
        self.seed = params.get('seed', None)

        # two tops: data and label
        if len(top) != 2:
            raise Exception("Need to define two tops: data and label.")
        # data layers have no bottoms
        if len(bottom) != 0:
            raise Exception("Do not define a bottom.")

        # load indices for images and labels
        split_f = '{}/ImageSets/Segmentation/{}.txt'.format(self.voc_dir, self.split)
        self.indices = open(split_f, 'r').read().splitlines()
        self.idx = 0

        # make eval deterministic
        if 'train' not in self.split:
            self.random = False

        # randomization: seed and pick
        if self.random:
            random.seed(self.seed)
            self.idx = random.randint(0, len(self.indices) - 1)

    def reshape(self, bottom, top):
        # load image + label image pair
        self.data = self.load_image(self.indices[self.idx])
        self.label = self.load_label(self.indices[self.idx])
        # reshape tops to fit (leading 1 is for batch dimension)
        top[0].reshape(1, *self.data.shape)
        top[1].reshape(1, *self.label.shape)

    def forward(self, bottom, top):
        # assign output
        top[0].data[...] = self.data
        top[1].data[...] = self.label

        # pick next input
        if self.random:
            self.idx = random.randint(0, len(self.indices) - 1)
        else:
            self.idx += 1
            if self.idx == len(self.indices):
                self.idx = 0

    def backward(self, top, propagate_down, bottom):
        pass

    def load_image(self, idx):
        """
        Load input image and preprocess for Caffe:
        - cast to float
        - switch channels RGB -> BGR
        - subtract mean
        - transpose to channel x height x width order
        """
        im = caffe.io.load_image('{}/JPEGImages/{}.png'.format(self.voc_dir, idx))
        in_ = np.array(im * 255, dtype=np.float32)
        in_ = in_[:, :, ::-1]
        in_ -= self.mean
        in_ = in_.transpose((2, 0, 1))
        return in_

    def load_label(self, idx):
        """
        Load label image as 1 x height x width integer array of label indices.
        The leading singleton dimension is required by the loss.
        """
        im = caffe.io.load_image('{}/SegmentationClass/{}.png'.format(self.voc_dir, idx),
                                 color=False)
        label = np.array(np.round(im[:, :, 0] * 255), dtype=np.uint8)
        label = label[np.newaxis, ...]
        return label
'''

# fcn.berkeleyvision.org's net.py, shrunk: two conv stages, a 1x1 classifier,
# learned-free bilinear upsampling and a Crop computed by coord_map.
NET_PY = '''
import caffe
from caffe import layers as L, params as P
from caffe.coord_map import crop


def conv_relu(bottom, nout, ks=3, stride=1, pad=1):
    conv = L.Convolution(bottom, kernel_size=ks, stride=stride,
        num_output=nout, pad=pad,
        param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)],
        weight_filler=dict(type='gaussian', std=0.1))
    return conv, L.ReLU(conv, in_place=True)


def max_pool(bottom, ks=2, stride=2):
    return L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=ks, stride=stride)


def fcn(split, voc_dir):
    n = caffe.NetSpec()
    pydata_params = dict(split=split, mean=(104.00699, 116.66877, 122.67892),
            seed=1337, voc_dir=voc_dir, randomize=False)
    n.data, n.label = L.Python(module='voc_layers', layer='VOCSegDataLayer',
            ntop=2, param_str=str(pydata_params))

    n.conv1_1, n.relu1_1 = conv_relu(n.data, 8)
    n.pool1 = max_pool(n.relu1_1)
    n.conv2_1, n.relu2_1 = conv_relu(n.pool1, 8)
    n.score_fr = L.Convolution(n.relu2_1, num_output=3, kernel_size=1, pad=0,
        param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)],
        weight_filler=dict(type='gaussian', std=0.1))
    n.upscore = L.Deconvolution(n.score_fr,
        convolution_param=dict(num_output=3, kernel_size=4, stride=2,
            bias_term=False),
        param=[dict(lr_mult=0)])
    n.score = crop(n.upscore, n.data)
    n.loss = L.SoftmaxWithLoss(n.score, n.label,
            loss_param=dict(normalize=False, ignore_label=255))
    return n.to_proto()


def make_net(voc_dir):
    with open('train.prototxt', 'w') as f:
        f.write(str(fcn('train', voc_dir)))
    with open('val.prototxt', 'w') as f:
        f.write(str(fcn('val', voc_dir)))


if __name__ == '__main__':
    import sys
    make_net(sys.argv[1])
'''

SOLVER = """
train_net: "train.prototxt"
test_net: "val.prototxt"
test_iter: 2
# make test net, but don't invoke it from the solver itself
test_interval: 999999999
display: 0
average_loss: 5
lr_policy: "fixed"
# lr for unnormalized softmax
base_lr: 1e-5
# high momentum
momentum: 0.9
# no gradient accumulation
iter_size: 1
max_iter: 100000
weight_decay: 0.0005
snapshot: 0
test_initialization: false
"""


def expected_input(img):
    """The VOC layer's preprocessing, written out: BGR, minus the mean, C x H x W."""
    return (img[:, :, ::-1].astype(np.float32) - np.array(MEAN, np.float32)).transpose(2, 0, 1)


@pytest.fixture
def voc(tmp_path, monkeypatch):
    """A VOC folder, voc_layers.py and net.py's train/val prototxts; cwd = tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    images = make_voc(tmp_path / "voc")
    write(tmp_path, "voc_layers.py", VOC_LAYERS)
    write(tmp_path, "net.py", NET_PY)
    namespace = runpy.run_path(str(tmp_path / "net.py"))
    namespace["make_net"](str(tmp_path / "voc"))
    write(tmp_path, "solver.prototxt", SOLVER)
    yield images
    for name in ("voc_layers", "surgery", "score"):
        sys.modules.pop(name, None)


def test_voc_data_layer_reshapes_every_iteration_and_trains(voc, tmp_path):
    text = (tmp_path / "train.prototxt").read_text()
    assert 'crop_param {\n    axis: 2\n    offset: 1\n  }' in text   # computed by coord_map
    caffe.set_random_seed(0)
    solver = caffe.SGDSolver("solver.prototxt")
    assert isinstance(solver.net, caffe.Net) and isinstance(solver.test_nets[0], caffe.Net)
    net = solver.net
    # FCN's bilinear initialisation of the (fixed, lr_mult 0) upsampling, as surgery.interp does.
    f = 1 - abs(np.arange(4) - 1.5) / 2
    net.params["upscore"][0].data[range(3), range(3)] = f[:, None] * f[None, :]
    names = (tmp_path / "voc" / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    w0 = net.params["conv1_1"][0].data.copy()
    shapes, losses = [], []
    for it in range(8):
        solver.step(1)
        name = names[it % len(names)]
        img, label = voc[name]
        shapes.append(net.blobs["data"].data.shape)
        np.testing.assert_allclose(net.blobs["data"].data[0], expected_input(img), atol=1e-4)
        np.testing.assert_array_equal(net.blobs["label"].data[0, 0], label)
        assert net.blobs["score"].data.shape == (1, 3) + img.shape[:2]
        losses.append(float(net.blobs["loss"].data))
    assert shapes[:5] == [(1, 3) + s for s in TRAIN_SIZES]
    assert all(a != b for a, b in zip(shapes, shapes[1:]))
    assert np.isfinite(losses).all() and solver.iter == 8
    assert not np.array_equal(net.params["conv1_1"][0].data, w0)

    # The test net shares the weights once told (FCN's scripts call share_with, since Caffe's
    # test net takes the trained weights only when the solver tests) and walks the val split in order.
    val = solver.test_nets[0]
    assert not np.shares_memory(val.params["conv1_1"][0].data, net.params["conv1_1"][0].data)
    val.share_with(net)
    assert np.shares_memory(val.params["conv1_1"][0].data, net.params["conv1_1"][0].data)
    for h, w in VAL_SIZES * 2:
        out = val.forward()
        assert val.blobs["data"].data.shape == (1, 3, h, w)
        assert val.blobs["score"].data.shape == (1, 3, h, w)
        assert np.isfinite(out["loss"])

    # Training on the varying inputs lowers the loss over the training set.
    def train_loss():
        probe = caffe.Net("train.prototxt", caffe.TEST)
        probe.share_with(net)
        return sum(float(probe.forward()["loss"]) for _ in names)
    before = train_loss()
    solver.step(40)
    assert train_loss() < 0.5 * before


SURGERY_PY = '''
from __future__ import division
import caffe
import numpy as np


def transplant(new_net, net, suffix=''):
    """
    Transfer weights by copying matching parameters, coercing parameters of
    incompatible shape, and dropping unmatched parameters.
    """
    for p in net.params:
        p_new = p + suffix
        if p_new not in new_net.params:
            print('dropping', p)
            continue
        for i in range(len(net.params[p])):
            if i > (len(new_net.params[p_new]) - 1):
                print('dropping', p, i)
                break
            if net.params[p][i].data.shape != new_net.params[p_new][i].data.shape:
                print('coercing', p, i, 'from', net.params[p][i].data.shape, 'to', new_net.params[p_new][i].data.shape)
            else:
                print('copying', p, ' -> ', p_new, i)
            new_net.params[p_new][i].data.flat = net.params[p][i].data.flat


def upsample_filt(size):
    """
    Make a 2D bilinear kernel suitable for upsampling of the given (h, w) size.
    """
    factor = (size + 1) // 2
    if size % 2 == 1:
        center = factor - 1
    else:
        center = factor - 0.5
    og = np.ogrid[:size, :size]
    return (1 - abs(og[0] - center) / factor) * \\
           (1 - abs(og[1] - center) / factor)


def interp(net, layers):
    """
    Set weights of each layer in layers to bilinear kernels for interpolation.
    """
    for l in layers:
        m, k, h, w = net.params[l][0].data.shape
        if m != k and k != 1:
            print('input + output channels need to be the same or |output| == 1')
            raise
        if h != w:
            print('filters need to be square')
            raise
        filt = upsample_filt(h)
        net.params[l][0].data[range(m), range(k), :, :] = filt
'''

SCORE_PY = '''
from __future__ import division
import caffe
import numpy as np
import os
import sys
from datetime import datetime


def fast_hist(a, b, n):
    k = (a >= 0) & (a < n)
    return np.bincount(n * a[k].astype(int) + b[k], minlength=n**2).reshape(n, n)


def compute_hist(net, save_dir, dataset, layer='score', gt='label'):
    n_cl = net.blobs[layer].channels
    if save_dir:
        os.mkdir(save_dir)
    hist = np.zeros((n_cl, n_cl))
    loss = 0
    for idx in dataset:
        net.forward()
        hist += fast_hist(net.blobs[gt].data[0, 0].flatten(),
                                net.blobs[layer].data[0].argmax(0).flatten(),
                                n_cl)

        if save_dir:
            np.save(os.path.join(save_dir, idx + '.npy'), net.blobs[layer].data[0].argmax(0).astype(np.uint8))
        # compute the loss as well
        loss += net.blobs['loss'].data.flat[0]
    return hist, loss / len(dataset)


def seg_tests(solver, save_format, dataset, layer='score', gt='label'):
    print('>>>', datetime.now(), 'Begin seg tests')
    solver.test_nets[0].share_with(solver.net)
    return do_seg_tests(solver.test_nets[0], solver.iter, save_format, dataset, layer, gt)


def do_seg_tests(net, iter, save_format, dataset, layer='score', gt='label'):
    n_cl = net.blobs[layer].channels
    if save_format:
        save_format = save_format.format(iter)
    hist, loss = compute_hist(net, save_format, dataset, layer, gt)
    # mean loss
    print('>>>', datetime.now(), 'Iteration', iter, 'loss', loss)
    # overall accuracy
    acc = np.diag(hist).sum() / hist.sum()
    print('>>>', datetime.now(), 'Iteration', iter, 'overall accuracy', acc)
    # per-class accuracy
    acc = np.diag(hist) / hist.sum(1)
    print('>>>', datetime.now(), 'Iteration', iter, 'mean accuracy', np.nanmean(acc))
    # per-class IU
    iu = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
    print('>>>', datetime.now(), 'Iteration', iter, 'mean IU', np.nanmean(iu))
    freq = hist.sum(1) / hist.sum()
    print('>>>', datetime.now(), 'Iteration', iter, 'fwavacc', \\
            (freq[freq > 0] * iu[freq > 0]).sum())
    return hist
'''

SOLVE_PY = '''
import caffe
import surgery, score

import numpy as np
import os
import sys

try:
    import setproctitle
    setproctitle.setproctitle(os.path.basename(os.getcwd()))
except:
    pass

weights = 'base-fcn.caffemodel'

# init
caffe.set_mode_cpu()

solver = caffe.SGDSolver('solver.prototxt')
solver.net.copy_from(weights)

# surgeries
interp_layers = [k for k in solver.net.params.keys() if 'up' in k]
surgery.interp(solver.net, interp_layers)

# scoring
val = np.loadtxt('voc/ImageSets/Segmentation/val.txt', dtype=str)

hists = []
for _ in range(3):
    solver.step(4)
    hists.append(score.seg_tests(solver, 'seg_{}', val, layer='score'))
'''

BASE_NET = """
name: "base"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1_1" type: "Convolution" bottom: "data" top: "conv1_1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "conv2_1" type: "Convolution" bottom: "conv1_1" top: "conv2_1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
"""


def test_classic_fcn_solve_script_runs_unchanged(voc, tmp_path, capsys):
    # The "pre-trained" model whose conv layers the script copies.
    base = caffe.Net(write(tmp_path, "base.prototxt", BASE_NET), caffe.TEST)
    r = np.random.default_rng(0)
    for blobs in base.params.values():
        for b in blobs:
            b.data[...] = r.normal(0, 0.05, b.shape)
    base.save("base-fcn.caffemodel")
    write(tmp_path, "surgery.py", SURGERY_PY)
    write(tmp_path, "score.py", SCORE_PY)
    write(tmp_path, "solve.py", SOLVE_PY)
    # FCN's tiny rate for its unnormalized loss: the copied weights stay recognisable.
    write(tmp_path, "solver.prototxt", SOLVER.replace("base_lr: 1e-5", "base_lr: 1e-8"))

    g = runpy.run_path("solve.py", run_name="__main__")
    solver, hists = g["solver"], g["hists"]
    printed = capsys.readouterr().out
    assert printed.count("mean IU") == 3 and printed.count("Begin seg tests") == 3
    assert solver.iter == 12
    assert sorted(p.name for p in tmp_path.glob("seg_*")) == ["seg_12", "seg_4", "seg_8"]

    # copy_from took the base conv weights (then 12 updates moved them a little).
    np.testing.assert_allclose(solver.net.params["conv1_1"][0].data, base.params["conv1_1"][0].data,
                               atol=1e-3)
    assert not np.array_equal(solver.net.params["conv1_1"][0].data, base.params["conv1_1"][0].data)
    # interp surgery: bilinear kernels on the diagonal, lr_mult 0 kept them through training.
    up = solver.net.params["upscore"][0].data
    f = (1 - abs(np.arange(4) - 1.5) / 2)
    kernel = f[:, None] * f[None, :]
    for i in range(3):
        for j in range(3):
            np.testing.assert_allclose(up[i, j], kernel if i == j else 0, atol=0)
    # share_with: the test net computes with the train net's parameters.
    test_net = solver.test_nets[0]
    for name in solver.net.params:
        for a, b in zip(test_net.params[name], solver.net.params[name]):
            assert np.shares_memory(a.data, b.data)

    # The script's histograms, recounted: forward each val image, compare pixel by pixel.
    hist = np.zeros((3, 3))
    for name in ("val_0000", "val_0001"):
        test_net.forward()
        gt = test_net.blobs["label"].data[0, 0]
        pred = test_net.blobs["score"].data[0].argmax(0)
        np.testing.assert_array_equal(gt, voc[name][1])
        for y in range(gt.shape[0]):
            for x in range(gt.shape[1]):
                if gt[y, x] < 3:
                    hist[int(gt[y, x]), pred[y, x]] += 1
    np.testing.assert_array_equal(hists[-1], hist)
    labelled = sum((voc[n][1] < 3).sum() for n in ("val_0000", "val_0001"))
    assert hists[-1].sum() == labelled
    saved = np.load(tmp_path / "seg_12" / "val_0001.npy")
    np.testing.assert_array_equal(saved, pred)


# -- NetSpec: FCN-AlexNet as DIGITS publishes it --------------------------------------------

FCN_ALEXNET_PY = '''
import caffe
from caffe import layers as L, params as P
from caffe.coord_map import crop


def conv_relu(bottom, nout, ks, stride=1, pad=0, group=1):
    conv = L.Convolution(bottom, num_output=nout, pad=pad, kernel_size=ks, group=group,
                         stride=stride)
    return conv, L.ReLU(conv, in_place=True)


def max_pool(bottom, ks=3, stride=2):
    return L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=ks, stride=stride)


def lrn(bottom):
    return L.LRN(bottom, local_size=5, alpha=1e-4, beta=0.75)


def data_layers(phase):
    n = caffe.NetSpec()
    for name in ("data", "label"):
        n[name] = L.Data(include=dict(phase=phase),
                         data_param=dict(batch_size=1, backend=P.Data.LMDB))
    return n


def fcn_alexnet(num_classes=21):
    n = data_layers(caffe.TRAIN)
    # Use Power layer in deploy phase for input scaling
    n.data_preprocessed = L.Power(n.data, name="shift", power_param=dict(shift=-116.0))
    n.conv1, n.relu1 = conv_relu(n.data_preprocessed, 96, 11, stride=4, pad=100)
    n.pool1 = max_pool(n.relu1)
    n.norm1 = lrn(n.pool1)
    n.conv2, n.relu2 = conv_relu(n.norm1, 256, 5, pad=2, group=2)
    n.pool2 = max_pool(n.relu2)
    n.norm2 = lrn(n.pool2)
    n.conv3, n.relu3 = conv_relu(n.norm2, 384, 3, pad=1)
    n.conv4, n.relu4 = conv_relu(n.relu3, 384, 3, pad=1, group=2)
    n.conv5, n.relu5 = conv_relu(n.relu4, 256, 3, pad=1, group=2)
    n.pool5 = max_pool(n.relu5)
    n.fc6, n.relu6 = conv_relu(n.pool5, 4096, 6)
    n.drop6 = L.Dropout(n.relu6, dropout_ratio=0.5, in_place=True)
    n.fc7, n.relu7 = conv_relu(n.drop6, 4096, 1)
    n.drop7 = L.Dropout(n.relu7, dropout_ratio=0.5, in_place=True)
    n.score_fr = L.Convolution(n.drop7, num_output=num_classes, pad=0, kernel_size=1,
                               param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)])
    n.upscore = L.Deconvolution(n.score_fr, param=[dict(lr_mult=0)],
                                convolution_param=dict(num_output=num_classes, group=num_classes,
                                                       bias_term=False, kernel_size=63, stride=32,
                                                       weight_filler=dict(type="bilinear")))
    n.score = crop(n.upscore, n.data)
    n.loss = L.SoftmaxWithLoss(n.score, n.label, loss_param=dict(ignore_label=255, normalize=True),
                               exclude=dict(stage="deploy"))
    n.accuracy = L.Accuracy(n.score, n.label, include=dict(stage="val"), ignore_label=255)
    net = n.to_proto()
    # Train and test data layers share their names: splice the TEST pair in after the TRAIN pair.
    layers = list(net.layer)
    del net.layer[:]
    net.layer.extend(layers[:2] + list(data_layers(caffe.TEST).to_proto().layer) + layers[2:])
    return net


if __name__ == "__main__":
    with open("fcn_alexnet.prototxt", "w") as f:
        f.write(str(fcn_alexnet()))
'''


def test_netspec_generates_published_fcn_alexnet(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "make_fcn_alexnet.py", FCN_ALEXNET_PY)
    runpy.run_path("make_fcn_alexnet.py", run_name="__main__")
    generated = read_net(str(tmp_path / "fcn_alexnet.prototxt"))
    published = read_net(str(SHARED / "models" / "digits" / "fcn_alexnet.prototxt"))
    assert [l.name for l in generated.layer] == [l.name for l in published.layer]
    for mine, theirs in zip(generated.layer, published.layer):
        assert mine == theirs, "layer %s differs:\n%s\nvs published\n%s" % (mine.name, mine, theirs)
    assert generated == published
    crop_layer = [l for l in generated.layer if l.name == "score"][0]
    assert crop_layer.crop_param.axis == 2 and list(crop_layer.crop_param.offset) == [18]


def test_netspec_naming_rules():
    n = caffe.NetSpec()
    n.data, n.label = L.Input(ntop=2, input_param=dict(shape=[dict(dim=[1, 3, 8, 8]),
                                                             dict(dim=[1, 1, 8, 8])]))
    n.conv1 = L.Convolution(n.data, kernel_size=3, num_output=4,
                            weight_filler=dict(type="xavier"), param=[dict(lr_mult=1)])
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    hidden = L.Pooling(n.relu1, pool=P.Pooling.AVE, kernel_size=2)     # never named
    n.out = L.InnerProduct(hidden, num_output=2, include=dict(phase=caffe.TEST),
                           loss_weight=[1])
    n.silence = L.Silence(n.label, ntop=0)
    proto = n.to_proto()
    by_name = {l.name: l for l in proto.layer}
    assert [l.name for l in proto.layer] == ["data", "conv1", "relu1", "Pooling1", "out", "silence"]
    assert list(by_name["data"].top) == ["data", "label"]
    assert list(by_name["relu1"].top) == ["conv1"] and list(by_name["relu1"].bottom) == ["conv1"]
    assert list(by_name["Pooling1"].top) == ["Pooling1"]
    assert by_name["Pooling1"].pooling_param.pool == caffe_pb2.PoolingParameter.AVE
    assert by_name["conv1"].convolution_param.weight_filler.type == "xavier"
    assert list(by_name["conv1"].convolution_param.kernel_size) == [3]
    assert by_name["conv1"].param[0].lr_mult == 1
    assert by_name["out"].include[0].phase == caffe.TEST
    assert list(by_name["out"].loss_weight) == [1]
    assert list(by_name["silence"].top) == [] and list(by_name["silence"].bottom) == ["label"]
    # The text round-trips and builds.
    net = caffe.Net(parse_net(str(proto)), caffe.TEST)
    assert net.blobs["out"].data.shape == (1, 2)
    # caffe.to_proto pulls in everything upstream of the tops it is given, autonaming them.
    top = L.ReLU(L.Convolution(L.Input(input_param=dict(shape=dict(dim=[1, 1, 4, 4]))),
                               kernel_size=1, num_output=1))
    assert [l.name for l in caffe.to_proto(top).layer] == ["Input1", "Convolution1", "ReLU1"]
    with pytest.raises(TypeError, match="Convolution input 0 is not a Top"):
        L.Convolution("data", kernel_size=1)


# -- caffe.Net --------------------------------------------------------------------------------

SMALL_NET = """
name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
layer { name: "extra" type: "Power" bottom: "ip" top: "extra" include { stage: "extra" } }
"""


def test_net_pycaffe_interface(tmp_path):
    path = write(tmp_path, "net.prototxt", SMALL_NET)
    caffe.set_mode_cpu()
    caffe.set_random_seed(0)
    net = caffe.Net(path, caffe.TEST)
    assert net._layer_names == ["data", "conv", "relu", "ip", "prob"]
    assert [l.type for l in net.layers] == ["Input", "Convolution", "ReLU", "InnerProduct", "Softmax"]
    assert list(net.blobs) == ["data", "conv", "ip", "prob"] == net._blob_names
    assert list(net.params) == ["conv", "ip"] and len(net.params["conv"]) == 2
    assert len(net.layers[1].blobs) == 2 and net.layer_dict["ip"] is net.layers[3]
    assert net.inputs == ["data"] and net.outputs == ["prob"]
    assert net._inputs == [0] and net._outputs == [3]
    assert net.top_names["relu"] == ["conv"] and net.bottom_names["ip"] == ["conv"]
    assert list(net.top_names.keys()) == net._layer_names and "ip" in net.top_names
    assert dict(net.bottom_names.items())["prob"] == ["ip"]
    assert net._blob_loss_weights == [0, 0, 0, 0] and list(net.blob_loss_weights) == net._blob_names
    blob = net.blobs["data"]
    assert (blob.num, blob.channels, blob.height, blob.width, blob.count) == (2, 3, 6, 6, 216)

    x = np.random.default_rng(0).normal(0, 1, (2, 3, 6, 6)).astype(np.float32)
    out = net.forward(data=x)
    assert list(out) == ["prob"] and out["prob"].shape == (2, 4)
    assert out["prob"] is net.blobs["prob"].data            # the blob itself, as pycaffe
    out = {"prob": out["prob"].copy()}
    np.testing.assert_allclose(out["prob"].sum(1), 1, rtol=1e-5)
    part = net.forward(start="ip", end="ip", blobs=["conv"])
    assert set(part) == {"ip", "conv"}

    # forward_all: 5 items through a batch-2 net, last batch padded, padding dropped.
    items = np.concatenate([x, x, x[:1]])
    all_out = net.forward_all(data=items)
    assert all_out["prob"].shape == (5, 4)
    np.testing.assert_allclose(all_out["prob"][:2], out["prob"], rtol=1e-5)
    np.testing.assert_allclose(all_out["prob"][4], out["prob"][0], rtol=1e-5)
    # Without inputs: one pass over what the input blob holds (the zero-padded last batch).
    np.testing.assert_allclose(net.forward_all()["prob"], [out["prob"][0], [0.25] * 4], rtol=1e-5)
    # forward_backward_all returns data and input diffs per item.
    fb_out, fb_diff = net.forward_backward_all(data=items, prob=np.ones((5, 4), np.float32))
    assert fb_out["prob"].shape == (5, 4) and fb_diff["data"].shape == (5, 3, 6, 6)

    # backward from explicit top diffs reaches the input when the net asks for it
    # (force_backward, as Caffe: a net without a loss needs no gradients otherwise).
    assert not np.abs(net.backward(prob=np.ones((2, 4), np.float32))["data"]).any()
    fb = caffe.Net(write(tmp_path, "fb.prototxt", "force_backward: true\n" + SMALL_NET), caffe.TEST)
    fb.share_with(net)
    fb.forward(data=x)
    grads = fb.backward(prob=np.eye(4, dtype=np.float32)[[0, 1]], diffs=["conv"])
    assert set(grads) == {"data", "conv"} and np.abs(grads["data"]).sum() > 0

    # save / copy_from and both constructor forms, with stages.
    model = str(tmp_path / "w.caffemodel")
    net.save(model)
    for other in (caffe.Net(path, model, caffe.TEST),
                  caffe.Net(path, caffe.TEST, weights=model, stages=["extra"], level=0)):
        np.testing.assert_array_equal(other.params["ip"][0].data, net.params["ip"][0].data)
    assert "extra" in caffe.Net(path, caffe.TEST, stages=["extra"]).blobs
    # share_with: one set of parameter blobs.
    twin = caffe.Net(path, caffe.TEST)
    twin.share_with(net)
    assert np.shares_memory(twin.params["conv"][0].data, net.params["conv"][0].data)


def test_blob_views_are_writable(tmp_path):
    net = caffe.Net(write(tmp_path, "net.prototxt", SMALL_NET), caffe.TEST)
    data = net.blobs["data"]
    assert type(data.data) is np.ndarray and data.data.flags.writeable
    data.data.flat = np.arange(data.count)
    assert data.data[1, 2, 5, 5] == data.count - 1
    data.data[0, :, 0, 0] = -1
    assert (net.blobs["data"].data[0, :, 0, 0] == -1).all()
    w = net.params["conv"][0].data
    w[...] = 0
    w[range(3), range(3), 1, 1] = 1                  # identity kernel by fancy indexing
    net.params["conv"][1].data.flat = [0, 0, 0]
    net.forward()
    np.testing.assert_array_equal(net.blobs["conv"].data, np.maximum(net.blobs["data"].data, 0))
    net.blobs["conv"].diff[...] = 1
    assert (net.blobs["conv"].diff == 1).all()
    # Reshape an input, then the net, as pycaffe scripts do.
    data.reshape(1, 3, 6, 6)
    net.reshape()
    assert net.blobs["prob"].data.shape == (1, 4)
    out = net.forward(data=np.zeros((1, 3, 6, 6), np.float32))
    np.testing.assert_allclose(out["prob"], 0.25, rtol=1e-6)


def test_set_input_arrays(tmp_path):
    text = """
    layer { name: "data" type: "MemoryData" top: "data" top: "label"
            memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 } }
    layer { name: "flat" type: "Flatten" bottom: "data" top: "flat" }
    """
    net = caffe.Net(write(tmp_path, "net.prototxt", text), caffe.TEST)
    data = np.arange(16, dtype=np.float32).reshape(4, 1, 2, 2)
    net.set_input_arrays(data, np.array([5, 6, 7, 8], np.float32))
    net.forward()
    np.testing.assert_array_equal(net.blobs["flat"].data, data[:2].reshape(2, 4))
    np.testing.assert_array_equal(net.blobs["label"].data.ravel(), [5, 6])
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data.ravel(), [7, 8])
    other = caffe.Net(write(tmp_path, "plain.prototxt", SMALL_NET), caffe.TEST)
    with pytest.raises(RuntimeError, match="first layer is a MemoryData"):
        other.set_input_arrays(data, np.zeros(4, np.float32))


def test_solvers_and_module_surface(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "net.prototxt", """
        layer { name: "data" type: "Input" top: "x" top: "y"
                input_param { shape { dim: 4 dim: 2 } shape { dim: 4 dim: 1 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
                inner_product_param { num_output: 1 } }
        layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "y" top: "loss" }
    """)
    for type_name, cls in (("SGD", caffe.SGDSolver), ("Nesterov", caffe.NesterovSolver),
                           ("AdaGrad", caffe.AdaGradSolver), ("RMSProp", caffe.RMSPropSolver),
                           ("AdaDelta", caffe.AdaDeltaSolver), ("Adam", caffe.AdamSolver)):
        momentum = "" if type_name in ("AdaGrad", "RMSProp") else "momentum: 0.9"
        path = write(tmp_path, "solver_%s.prototxt" % type_name, """
            net: "net.prototxt"
            type: "%s"
            base_lr: 0.01
            lr_policy: "fixed"
            %s
            display: 0
        """ % (type_name, momentum))
        direct, picked = cls(path), caffe.get_solver(path)
        assert type(picked) is cls and issubclass(cls, protonet.solver.Solver)
        for s in (direct, picked):
            assert isinstance(s.net, caffe.Net)
            s.step(2)
            assert s.iter == 2 and np.isfinite(s.net.blobs["loss"].data).all()
        twin = caffe.Net("net.prototxt", caffe.TEST)
        direct.share_weights(twin)
        assert np.shares_memory(twin.params["ip"][0].data, direct.net.params["ip"][0].data)

    assert caffe.Layer is protonet.Layer and (caffe.TRAIN, caffe.TEST) == (0, 1)
    assert caffe.proto.caffe_pb2 is caffe_pb2
    from caffe.proto import caffe_pb2 as pb2
    msg = pb2.NetParameter(name="x")
    assert isinstance(msg, caffe_pb2.NetParameter)
    types = caffe.layer_type_list()
    assert {"Convolution", "Python", "Data", "SoftmaxWithLoss"} <= set(types)
    assert "CONVOLUTION" not in types
    assert caffe.__version__ == "1.0.0"


# -- caffe.io -------------------------------------------------------------------------------

def test_io_proto_round_trips(tmp_path):
    r = np.random.default_rng(0)
    arr = r.normal(0, 1, (2, 3, 4, 5))
    blob = caffe.io.array_to_blobproto(arr, diff=arr * 2)
    assert list(blob.shape.dim) == [2, 3, 4, 5]
    back = caffe.io.blobproto_to_array(blob)
    assert back.dtype == np.float64 and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr.astype(np.float32))
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob, return_diff=True),
                                  (arr * 2).astype(np.float32))
    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3, data=range(6))
    assert caffe.io.blobproto_to_array(legacy).shape == (1, 2, 1, 3)
    vec = caffe.io.arraylist_to_blobprotovector_str([arr, arr[0, 0]])
    arrays = caffe.io.blobprotovector_str_to_arraylist(vec)
    assert [a.shape for a in arrays] == [(2, 3, 4, 5), (4, 5)]
    assert caffe.io.arraylist_to_blobprotovecor_str is caffe.io.arraylist_to_blobprotovector_str

    img = r.integers(0, 256, (3, 4, 5)).astype(np.uint8)
    datum = caffe.io.array_to_datum(img, label=7)
    assert datum.data == img.tobytes() and datum.label == 7 and not datum.float_data
    np.testing.assert_array_equal(caffe.io.datum_to_array(datum), img)
    floats = caffe.io.array_to_datum(arr[0])
    assert len(floats.float_data) == 60 and not floats.HasField("label")
    np.testing.assert_allclose(caffe.io.datum_to_array(floats), arr[0], rtol=1e-6)
    with pytest.raises(ValueError, match="3-d"):
        caffe.io.array_to_datum(arr)
    # Encoded Datums decode as Caffe's data layers do (BGR).
    png = tmp_path / "e.png"
    write_png(png, img.transpose(1, 2, 0))
    encoded = caffe_pb2.Datum(data=png.read_bytes(), encoded=True, label=1)
    np.testing.assert_array_equal(caffe.io.datum_to_array(encoded), img[::-1])
    # Datums written with caffe.io read back through protonet's own reader.
    from protonet.data.datum import datum_to_array as engine_datum_to_array
    np.testing.assert_array_equal(engine_datum_to_array(datum), img)


def test_io_transformer_round_trip():
    r = np.random.default_rng(1)
    t = caffe.io.Transformer({"data": (1, 3, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([104.0, 117.0, 123.0]))
    t.set_input_scale("data", 0.5)
    img = r.random((4, 5, 3)).astype(np.float32)
    pre = t.preprocess("data", img)
    expected = (img.transpose(2, 0, 1)[::-1] * 255 - np.array([104, 117, 123.0])[:, None, None]) * 0.5
    assert pre.dtype == np.float32 and pre.shape == (3, 4, 5)
    np.testing.assert_allclose(pre, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(t.deprocess("data", pre), img, atol=1e-5)
    # A differently sized image is resized to the input's H x W first.
    assert t.preprocess("data", r.random((8, 10, 3))).shape == (3, 4, 5)
    with pytest.raises(Exception, match="not one of the net inputs"):
        t.preprocess("label", img)
    with pytest.raises(ValueError, match="Mean channels"):
        t.set_mean("data", np.zeros(4))


def test_io_images(tmp_path):
    r = np.random.default_rng(2)
    rgb = r.integers(0, 256, (7, 9, 3)).astype(np.uint8)
    gray = r.integers(0, 256, (7, 9)).astype(np.uint8)
    write_png(tmp_path / "rgb.png", rgb)
    write_png(tmp_path / "gray.png", gray)
    im = caffe.io.load_image(str(tmp_path / "rgb.png"))
    assert im.dtype == np.float32 and im.shape == (7, 9, 3)
    np.testing.assert_allclose(im, rgb / 255.0, rtol=1e-6)
    g = caffe.io.load_image(str(tmp_path / "gray.png"))
    assert g.shape == (7, 9, 3) and (g[:, :, 0] == g[:, :, 2]).all()
    g1 = caffe.io.load_image(str(tmp_path / "gray.png"), color=False)
    assert g1.shape == (7, 9, 1)
    np.testing.assert_allclose(g1[:, :, 0], gray / 255.0, rtol=1e-6)
    lum = caffe.io.load_image(str(tmp_path / "rgb.png"), color=False)
    np.testing.assert_allclose(lum[:, :, 0], rgb @ [0.2125, 0.7154, 0.0721] / 255.0, rtol=1e-5)
    # PPM/PGM, 16-bit gray (scaled by 65535, as scikit-image does) and bilevel.
    (tmp_path / "a.ppm").write_bytes(b"P6\n# comment\n9 7\n255\n" + rgb.tobytes())
    np.testing.assert_allclose(caffe.io.load_image(str(tmp_path / "a.ppm")), rgb / 255.0, rtol=1e-6)
    (tmp_path / "a.pgm").write_bytes(b"P5 9 7 255\n" + gray.tobytes())
    np.testing.assert_allclose(caffe.io.load_image(str(tmp_path / "a.pgm"), color=False)[:, :, 0],
                               gray / 255.0, rtol=1e-6)
    deep = r.integers(0, 65536, (7, 9)).astype(np.uint16)
    (tmp_path / "d.pgm").write_bytes(b"P5 9 7 65535\n" + deep.astype(">u2").tobytes())
    Image.fromarray(deep).save(str(tmp_path / "d.png"))
    for name in ("d.pgm", "d.png"):
        np.testing.assert_allclose(caffe.io.load_image(str(tmp_path / name), color=False)[:, :, 0],
                                   deep / 65535.0, rtol=1e-6)
    (tmp_path / "b.pbm").write_bytes(b"P1 2 2\n0 1 1 0\n")            # 1 is black
    np.testing.assert_array_equal(caffe.io.load_image(str(tmp_path / "b.pbm"))[:, :, 0],
                                  [[1, 0], [0, 1]])
    Image.fromarray(rgb).save(str(tmp_path / "p.png"), optimize=True)    # adaptive row filters
    np.testing.assert_array_equal(caffe.io.load_image(str(tmp_path / "p.png")), im)
    Image.fromarray(rgb).convert("P").save(str(tmp_path / "pal.png"))
    pal = np.asarray(Image.open(str(tmp_path / "pal.png")).convert("RGB")) / 255.0
    np.testing.assert_allclose(caffe.io.load_image(str(tmp_path / "pal.png")), pal, rtol=1e-6)
    Image.fromarray(np.dstack([rgb, gray])).save(str(tmp_path / "rgba.png"))
    np.testing.assert_allclose(caffe.io.load_image(str(tmp_path / "rgba.png")), im, rtol=1e-6)
    Image.fromarray(rgb).save(str(tmp_path / "q.jpg"), quality=95)      # other formats: Pillow
    jpg = np.asarray(Image.open(str(tmp_path / "q.jpg")).convert("RGB")) / 255.0
    np.testing.assert_allclose(caffe.io.load_image(str(tmp_path / "q.jpg")), jpg, rtol=1e-6)
    (tmp_path / "cut.png").write_bytes((tmp_path / "p.png").read_bytes()[:60])
    with pytest.raises(IOError, match="cut.png: cannot decode as an image"):
        caffe.io.load_image(str(tmp_path / "cut.png"))


def test_io_16_bit_png_as_older_pillow_opens_it(tmp_path, monkeypatch):
    # Pillow before 10.x opened 16-bit gray PNGs as mode "I" (int32): still scaled by 65535
    deep = np.random.default_rng(4).integers(0, 65536, (5, 6)).astype(np.uint16)
    Image.fromarray(deep).save(str(tmp_path / "d.png"))
    real_open = Image.open

    def open_as_int32(*args, **kwargs):
        img = real_open(*args, **kwargs)
        img.load()
        wide = img.convert("I")
        wide.format = img.format
        return wide
    monkeypatch.setattr(Image, "open", open_as_int32)
    got = caffe.io.load_image(str(tmp_path / "d.png"), color=False)[:, :, 0]
    np.testing.assert_allclose(got, deep / 65535.0, rtol=1e-6)


def test_io_resize_and_oversample():
    r = np.random.default_rng(3)
    im = r.random((6, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(caffe.io.resize_image(im, (6, 8)), im, rtol=1e-6)
    up = caffe.io.resize_image(im, (12, 16))
    assert up.shape == (12, 16, 3) and up.dtype == np.float32
    # Doubling with pixel-centre geometry: output 1 sits a quarter pixel right of and below
    # input 0 (the border rows, which also read outside the image, are tested in
    # test_pycaffe_api.py).
    np.testing.assert_allclose(up[1, 1], 0.5625 * im[0, 0] + 0.1875 * (im[0, 1] + im[1, 0])
                               + 0.0625 * im[1, 1], rtol=1e-5)
    assert up.min() >= im.min() - 1e-6 and up.max() <= im.max() + 1e-6
    const = np.full((4, 4, 1), 0.3, np.float32)
    np.testing.assert_array_equal(caffe.io.resize_image(const, (3, 5)), np.full((3, 5, 1), 0.3,
                                                                               np.float32))
    assert caffe.io.resize_image(r.random((4, 4, 5)), (8, 2)).shape == (8, 2, 5)
    crops = caffe.io.oversample([im, im], (4, 4))
    assert crops.shape == (20, 4, 4, 3)
    np.testing.assert_array_equal(crops[0], im[:4, :4])
    np.testing.assert_array_equal(crops[4], im[1:5, 2:6])           # the centre crop
    np.testing.assert_array_equal(crops[5], im[:4, :4][:, ::-1])     # its mirror


# -- coord_map and draw ---------------------------------------------------------------------

def test_coord_map_crop_matches_the_geometry():
    from caffe.coord_map import coord_map_from_to, crop
    n = caffe.NetSpec()
    n.data = L.Input(input_param=dict(shape=dict(dim=[1, 1, 30, 30])))
    n.conv = L.Convolution(n.data, kernel_size=5, pad=10, stride=2, num_output=2)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.up = L.Deconvolution(n.pool, convolution_param=dict(num_output=2, kernel_size=7, stride=4,
                                                           bias_term=False))
    n.score = crop(n.up, n.data)
    layer = [l for l in n.to_proto().layer if l.name == "score"][0]
    ax, a, b = coord_map_from_to(n.up, n.data)
    assert layer.crop_param.axis == 2 and list(layer.crop_param.offset) == [int(-b[0])]
    # Check the offset against the net itself: a one-hot input pixel shows up, after the
    # crop, at the same place it was put (the upsampled response peaks there).
    net = caffe.Net(parse_net(str(n.to_proto())), caffe.TEST)
    net.params["conv"][0].data[...] = 0
    net.params["conv"][0].data[:, 0, 2, 2] = 1           # centre tap: conv is a strided identity
    up = net.params["up"][0].data
    up[...] = 0
    f = 1 - abs(np.arange(7) - 3) / 4
    up[0, 0] = f[:, None] * f[None, :]
    x = np.zeros((1, 1, 30, 30), np.float32)
    x[0, 0, 14, 18] = 1                                  # a pixel the stride-2 conv samples
    net.forward(data=x)
    score = net.blobs["score"].data[0, 0]
    assert score.shape == (30, 30)
    peak = np.unravel_index(np.argmax(score), score.shape)
    assert list(layer.crop_param.offset) == [10]
    # The pooling window (2 wide) leaves one pixel of slack.
    assert abs(peak[0] - 14) <= 1 and abs(peak[1] - 18) <= 1
    with pytest.raises(AssertionError, match="scale mismatch"):
        crop(n.pool, n.data)


def test_draw(tmp_path, monkeypatch):
    import caffe.draw
    net = read_net(str(SHARED / "models" / "digits" / "fcn_alexnet.prototxt"))
    dot = caffe.draw.get_dot_source(net, "LR", phase=caffe.TRAIN)
    assert dot.startswith("digraph") and '"conv1_Convolution"' in dot
    assert '"data_blob" -> "shift_Power";' in dot and '"conv1_Convolution" -> "conv1_blob" [label="96"]' in dot
    assert dot.count('"data_Data" [') == 1                  # only the TRAIN pair of data layers
    assert "accuracy" not in dot and "accuracy" in caffe.draw.get_dot_source(net, "LR")
    path = tmp_path / "net.dot"
    caffe.draw.draw_net_to_file(net, str(path), "TB")
    assert path.read_text().startswith("digraph")
    # without pydot, images come from Graphviz's dot program (.ci/run installs graphviz)
    monkeypatch.setitem(sys.modules, "pydot", None)
    caffe.draw.draw_net_to_file(net, str(tmp_path / "net.png"))
    assert (tmp_path / "net.png").read_bytes().startswith(b"\x89PNG")
    import shutil
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(RuntimeError, match="apt-get install graphviz"):
        caffe.draw.draw_net_to_file(net, str(tmp_path / "net2.png"))


# -- pycaffe scripts in GPU mode: host arrays, synced as Caffe's SyncedMemory ----------------
# (the `device` fixture: tests/fakecupy.py, or a real GPU with PROTONET_TEST_DEVICE=cupy)
_SYNC_NET = """
name: "sync" force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 2 dim: 6 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3
          weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


def _pycaffe_script(proto, weights, image):
    """What a pycaffe user writes: host arrays in, host arrays out, surgery on params."""
    net = caffe.Net(str(proto), str(weights), caffe.TEST)
    net.blobs["data"].reshape(1, 2, 6, 6)
    net.blobs["data"].data[...] = image
    out = net.forward()
    first = out["prob"].copy()
    top = net.blobs["prob"].data.argmax()
    net.params["conv"][0].data[...] *= 0          # surgery: the conv's output is its bias alone
    net.params["conv"][1].data[...] = 0.25
    net.forward()
    second = net.blobs["prob"].data.copy()
    net.blobs["prob"].diff[...] = 1.0 / 4
    diffs = net.backward()
    return first, top, second, net.blobs["pool"].data.copy(), diffs["data"].copy(), net


def test_pycaffe_script_runs_unchanged_on_the_device(device, tmp_path):
    proto = tmp_path / "net.prototxt"
    proto.write_text(_SYNC_NET)
    caffe.set_mode_cpu()
    cpu_net = caffe.Net(str(proto), caffe.TEST)
    weights = tmp_path / "w.caffemodel"
    cpu_net.save(str(weights))
    image = np.random.default_rng(3).standard_normal((1, 2, 6, 6)).astype(np.float32)
    cpu = _pycaffe_script(proto, weights, image)
    caffe.set_mode_gpu()
    gpu = _pycaffe_script(proto, weights, image)
    net = gpu[-1]
    assert isinstance(net._blob_dict["data"].data, device.ndarray)      # the engine is on the device
    for a, b in zip(cpu[:-1], gpu[:-1]):
        assert isinstance(b, (np.ndarray, np.integer)), type(b)
        # convolution and InnerProduct GEMMs, softmax's exp: device.tol loosens on real CuPy only
        np.testing.assert_allclose(b, a, **device.tol(1e-5, 1e-6))
    np.testing.assert_allclose(gpu[3], 0.25)        # the edited weights reached the device
    assert not np.allclose(cpu[0], cpu[2])           # the surgery changed the output
    np.testing.assert_array_equal(net.params["conv"][0].data, 0)
    assert net.blobs["data"].shape == (1, 2, 6, 6) and net.blobs["data"].num == 1


def test_pycaffe_mirrors_follow_caffe_syncing(device, tmp_path):
    proto = tmp_path / "net.prototxt"
    proto.write_text(_SYNC_NET)
    # seeded: with some weights (about 1 draw in 9) every ReLU is off and both runs agree
    caffe.set_random_seed(2)
    net = caffe.Net(str(proto), caffe.TEST)
    data = net.blobs["data"].data
    data[...] = 1.0
    out = net.forward()["prob"].copy()
    kept = data                                      # a reference held past the run is not re-read...
    kept[...] = 2.0
    net.forward()
    np.testing.assert_allclose(net.blobs["prob"].data, out)     # ...as in Caffe: the write is not seen
    net.blobs["data"].data[...] = 2.0                # touched again: the next run sees it
    second = net.forward()["prob"]
    assert not np.allclose(second, out)
    assert second is net.blobs["prob"].data          # one host array per blob, as Caffe's CPU copy
    # a solver's test net that shares the train net's weights (as after a test, or FCN's
    # share_with call): an edit through one reaches the other
    solver_txt = tmp_path / "solver.prototxt"
    solver_txt.write_text('net: "%s" base_lr: 0.1 lr_policy: "fixed" max_iter: 1 display: 0 '
                          'snapshot_after_train: false test_iter: 1 test_interval: 1000' % proto)
    solver = caffe.SGDSolver(str(solver_txt))
    solver.test_nets[0].share_with(solver.net)
    solver.net.params["ip"][0].data[...] = 0
    solver.net.params["ip"][1].data[...] = 0          # uniform scores: the loss is log 3
    solver.test_nets[0].forward()
    np.testing.assert_allclose(solver.test_nets[0].blobs["prob"].data, 0.25, rtol=1e-6)
    assert isinstance(solver.test_nets[0].blobs["prob"].data, np.ndarray)


_SPLIT_NET = """
name: "s"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 } } }
layer { name: "a" type: "InnerProduct" bottom: "data" top: "a"
        inner_product_param { num_output: 2 weight_filler { type: "constant" value: 1 } } }
layer { name: "b" type: "InnerProduct" bottom: "data" top: "b"
        inner_product_param { num_output: 2 weight_filler { type: "constant" value: 1 } } }
"""


def test_pycaffe_mirrors_of_aliased_blobs_are_one(device, tmp_path):
    # data feeds two layers: its split tops view its memory, so reading them must not
    # push their old values back over the next input (one SyncedMemory in Caffe)
    proto = tmp_path / "net.prototxt"
    proto.write_text(_SPLIT_NET)
    net = caffe.Net(str(proto), caffe.TEST)
    results = []
    for value in (1.0, 2.0, 3.0):
        net.blobs["data"].data[...] = value
        net.forward()
        every = {k: b.data.copy() for k, b in net.blobs.items()}    # a script dumping all blobs
        results.append((every["a"][0, 0], every["b"][0, 1]))
    assert results == [(3.0, 3.0), (6.0, 6.0), (9.0, 9.0)]
    assert any(name != "data" and np.shares_memory(b.data, net.blobs["data"].data)
               for name, b in net.blobs.items())


def _loss_solver(tmp_path, fmt="BINARYPROTO"):
    proto = tmp_path / "loss.prototxt"
    proto.write_text("""
name: "t" force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "constant" value: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
""")
    s = tmp_path / ("solver_%s.prototxt" % fmt)
    s.write_text('net: "%s" base_lr: 0.5 lr_policy: "fixed" max_iter: 10 display: 0 '
                 'snapshot_after_train: false test_iter: 1 test_interval: 1000 '
                 'snapshot_prefix: "%s/snap" snapshot_format: %s' % (proto, tmp_path, fmt))
    solver = caffe.SGDSolver(str(s))
    r = np.random.default_rng(0)
    for net in [solver.net] + list(solver.test_nets):
        net.blobs["data"].data[...] = r.standard_normal((4, 3)).astype(np.float32)
        net.blobs["label"].data[...] = [0, 1, 2, 1]
    return solver


def test_pycaffe_solver_callbacks_and_snapshots_see_the_mirrors(device, tmp_path):
    plain = _loss_solver(tmp_path)
    plain.step(3)
    seen = []
    solver = _loss_solver(tmp_path)
    # a callback that only reads the weights must not undo the updates
    solver.add_callback(on_start=None, on_gradients_ready=lambda: seen.append(
        solver.net.params["ip"][0].data.copy()))
    solver.step(3)
    np.testing.assert_array_equal(solver.net.params["ip"][0].data, plain.net.params["ip"][0].data)
    assert len(seen) == 3 and not np.array_equal(seen[0], seen[2])
    # an edit through the train net reaches the test net that shares its weights,
    # even when the test net's view was read before
    _ = solver.test_nets[0].params["ip"][0].data
    solver.net.params["ip"][0].data[...] = 0
    solver.net.params["ip"][1].data[...] = 0          # uniform scores: the loss is log 3
    solver.test_nets[0].forward()
    np.testing.assert_allclose(solver.test_nets[0].blobs["loss"].data, np.log(3), rtol=1e-6)
    # HDF5 snapshots carry an edit, and a restore is not overwritten by an older one
    import h5py
    h5 = _loss_solver(tmp_path, "HDF5")
    h5.net.params["ip"][0].data[...] = 3.0
    model, state = h5.snapshot()
    with h5py.File(model) as f:
        np.testing.assert_array_equal(f["data/ip/0"][()], 3.0)
    h5.net.params["ip"][0].data[...] = -1.0
    h5.restore(state)
    h5.net.forward()
    np.testing.assert_array_equal(h5.net.params["ip"][0].data, 3.0)


def test_pycaffe_layer_blobs_and_pending_writes_on_the_device(device, tmp_path):
    proto = tmp_path / "net.prototxt"
    proto.write_text(_SYNC_NET)
    a = caffe.Net(str(proto), caffe.TEST)
    b = caffe.Net(str(proto), caffe.TEST)
    # net.layers / layer_dict blobs are host arrays too, and edits through them count
    conv = a.layer_dict["conv"]
    assert isinstance(conv.blobs[0].data, np.ndarray) and conv.type == "Convolution"
    conv.blobs[1].data[...] = 7.0
    a.blobs["data"].data[...] = 0.0
    a.forward()
    np.testing.assert_allclose(a.blobs["conv"].data, 7.0)
    # another net's run does not drop a write pending for this one
    d = a.blobs["data"].data
    b.forward()
    d[...] = 1.0
    a.forward()
    assert not np.allclose(a.blobs["conv"].data, 7.0)
