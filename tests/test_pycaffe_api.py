"""pycaffe 1.0's interface beyond the basics: Classifier, Detector, the by-layer name
dicts, forward/backward return keys, Net callbacks, HDF5 weights, Timer, NCCL, and
caffe.io.resize_image's border handling.

Expected values are computed here with NumPy from the hand-set weights and the
preprocessing Caffe documents (transpose, channel swap, raw scale, mean, input
scale; crops; pixel-centre bilinear resizing with 0 beyond the border).
"""
import collections
import math
import sys
import time
import types

import h5py
import numpy as np
import pytest
from PIL import Image

import caffe
import caffe.classifier
import caffe.detector
from logcapture import captured_log


def write(folder, name, text):
    path = folder / name
    path.write_text(text)
    return str(path)


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def bilinear_zero_border(img, out_h, out_w):
    """Resize an H x W array: output centre i samples input (i + 0.5) * H / out_h - 0.5,
    bilinearly, reading 0 outside the image (scikit-image's resize, mode='constant')."""
    h, w = img.shape

    def px(r, c):
        return float(img[r, c]) if 0 <= r < h and 0 <= c < w else 0.0
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        y = (i + 0.5) * h / out_h - 0.5
        y0 = math.floor(y)
        dy = y - y0
        for j in range(out_w):
            x = (j + 0.5) * w / out_w - 0.5
            x0 = math.floor(x)
            dx = x - x0
            out[i, j] = ((1 - dy) * ((1 - dx) * px(y0, x0) + dx * px(y0, x0 + 1))
                         + dy * ((1 - dx) * px(y0 + 1, x0) + dx * px(y0 + 1, x0 + 1)))
    return out


def caffe_resize(im, out_h, out_w):
    """Caffe 1.0's resize_image for 1/3 channels: to [0, 1] over the whole image, resize, back."""
    lo, hi = float(im.min()), float(im.max())
    std = (im.astype(np.float64) - lo) / (hi - lo)
    out = np.stack([bilinear_zero_border(std[:, :, k], out_h, out_w)
                    for k in range(im.shape[2])], axis=-1)
    return out * (hi - lo) + lo


def block_means(im, k):
    """Means of k x k blocks: a k-fold bilinear shrink in pixel-centre geometry."""
    h, w, c = im.shape
    return im.reshape(h // k, k, w // k, k, c).mean(axis=(1, 3))


# -- a tiny classifier: Input 2x3x4x4 -> InnerProduct(3) -> Softmax ------------------------

CLS_NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: %d } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""

MEAN_BGR = np.array([100.0, 110.0, 120.0])       # per channel, in the net's (BGR, x255) space


def tiny_model(tmp_path, outputs=3, seed=0):
    """The prototxt and a .caffemodel with hand-set weights; returns (proto, model, W, b)."""
    proto = write(tmp_path, "tiny.prototxt", CLS_NET % outputs)
    r = np.random.default_rng(seed)
    W = (r.standard_normal((outputs, 48)) * 0.01).astype(np.float32)
    b = np.linspace(-0.2, 0.3, outputs).astype(np.float32)
    net = caffe.Net(proto, caffe.TEST)
    net.params["ip"][0].data[...] = W
    net.params["ip"][1].data[...] = b
    model = str(tmp_path / "tiny.caffemodel")
    net.save(model)
    return proto, model, W, b


def expected_probs(crops, W, b, input_scale=0.5):
    """Softmax(W x + b) for H x W x 3 RGB crops in [0, 1], preprocessed as the tests set up:
    to 3 x H x W, RGB -> BGR, x 255, minus MEAN_BGR, x input_scale."""
    x = np.stack([c.transpose(2, 0, 1)[::-1] * 255.0 - MEAN_BGR[:, None, None] for c in crops])
    x = x * input_scale
    return softmax(x.reshape(len(crops), -1) @ W.T.astype(np.float64) + b)


def make_classifier(proto, model, **kwargs):
    return caffe.Classifier(proto, model, mean=MEAN_BGR, raw_scale=255, channel_swap=(2, 1, 0),
                            input_scale=0.5, **kwargs)


def ten_crops(im, size):
    """Corners (top-left, top-right, bottom-left, bottom-right), centre, then their mirrors."""
    h, w = im.shape[:2]
    cy, cx = (h - size) // 2, (w - size) // 2
    five = [im[:size, :size], im[:size, w - size:], im[h - size:, :size], im[h - size:, w - size:],
            im[cy:cy + size, cx:cx + size]]
    return five + [c[:, ::-1] for c in five]


def test_classifier_oversamples_and_center_crops(tmp_path):
    proto, model, W, b = tiny_model(tmp_path)
    clf = make_classifier(proto, model, image_dims=(6, 6))
    assert isinstance(clf, caffe.Net) and caffe.classifier.Classifier is caffe.Classifier
    assert list(clf.crop_dims) == [4, 4] and tuple(clf.image_dims) == (6, 6)
    np.testing.assert_array_equal(clf.params["ip"][0].data, W)       # the pretrained weights
    r = np.random.default_rng(1)
    images = [r.random((6, 6, 3)).astype(np.float32) for _ in range(3)]
    # already 6x6: the resize to image_dims maps every pixel centre onto itself
    probs = clf.predict(images)
    assert probs.shape == (3, 3)
    for im, p in zip(images, probs):
        np.testing.assert_allclose(p, expected_probs(ten_crops(im, 4), W, b).mean(0), rtol=1e-5)
    centre = clf.predict(images, oversample=False)
    np.testing.assert_allclose(centre, expected_probs([im[1:5, 1:5] for im in images], W, b),
                               rtol=1e-5)
    assert not np.allclose(centre, probs)


def test_classifier_resizes_to_image_dims(tmp_path):
    proto, model, W, b = tiny_model(tmp_path)
    r = np.random.default_rng(2)
    small = r.random((3, 3, 3)).astype(np.float32)
    clf = make_classifier(proto, model, image_dims=(6, 6))
    # enlarged 3x3 -> 6x6 with 0 beyond the border (in [0, 1] units), then the centre 4x4
    scaled = caffe_resize(small, 6, 6)
    np.testing.assert_allclose(clf.predict([small], oversample=False),
                               expected_probs([scaled[1:5, 1:5]], W, b), rtol=1e-5)
    # default image_dims: the net's 4x4 input; an 8x8 image halves into 2x2-block means
    whole = make_classifier(proto, model)
    big = r.random((8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(whole.predict([big], oversample=False),
                               expected_probs([block_means(big, 2)], W, b), rtol=1e-5)
    with pytest.raises(ValueError, match="at least the net's input size"):
        make_classifier(proto, model, image_dims=(3, 6))
    with pytest.raises(ValueError, match="H x W x K images"):
        clf.predict([np.zeros((6, 6))])


def test_classifier_on_the_device(device, tmp_path):
    caffe.set_mode_cpu()
    proto, model, W, b = tiny_model(tmp_path)
    caffe.set_mode_gpu()
    clf = make_classifier(proto, model, image_dims=(6, 6))
    assert isinstance(clf._blob_dict["data"].data, device.ndarray)
    im = np.random.default_rng(3).random((6, 6, 3)).astype(np.float32)
    probs = clf.predict([im])
    assert isinstance(probs, np.ndarray)
    np.testing.assert_allclose(probs[0], expected_probs(ten_crops(im, 4), W, b).mean(0),
                               **device.tol(1e-5, 1e-7))


# -- Detector ------------------------------------------------------------------------------

def write_rgb(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(str(path))
    return str(path)


@pytest.fixture
def scenes(tmp_path):
    """Two 8x8 RGB PNGs and their values as load_image gives them (/ 255)."""
    r = np.random.default_rng(4)
    pixels = [r.integers(0, 256, (8, 8, 3)) for _ in range(2)]
    files = [write_rgb(tmp_path / ("scene%d.png" % i), p) for i, p in enumerate(pixels)]
    return files, [p / 255.0 for p in pixels]


def test_detector_windows(tmp_path, scenes):
    files, images = scenes
    proto, model, W, b = tiny_model(tmp_path, outputs=2)
    det = caffe.Detector(proto, model, mean=MEAN_BGR, raw_scale=255, channel_swap=(2, 1, 0),
                         input_scale=0.5)
    assert isinstance(det, caffe.Net) and caffe.detector.Detector is caffe.Detector
    assert list(det.crop_dims) == [4, 4, 3] and det.context_pad is None
    windows = [(0, 0, 4, 4), (2, 3, 6, 7), (0, 0, 8, 8)]
    found = det.detect_windows(iter([(files[0], windows), (files[1], [(1, 1, 5, 5)])]))
    assert [(d["filename"], d["window"]) for d in found] == \
        [(files[0], w) for w in windows] + [(files[1], (1, 1, 5, 5))]
    # 4x4 windows go in as they are; the whole 8x8 image is warped to 4x4 (2x2-block means)
    crops = [images[0][0:4, 0:4], images[0][2:6, 3:7], block_means(images[0], 2),
             images[1][1:5, 1:5]]
    np.testing.assert_allclose(np.array([d["prediction"] for d in found]),
                               expected_probs(crops, W, b), rtol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        det.detect_windows([(files[0], [(3, 3, 3, 6)])])


def test_detector_context_pad_crops_as_rcnn(tmp_path, scenes):
    files, images = scenes
    proto, model, W, b = tiny_model(tmp_path, outputs=2)
    det = caffe.Detector(proto, model, mean=MEAN_BGR, raw_scale=255, channel_swap=(2, 1, 0),
                         input_scale=0.5, context_pad=1)
    # the mean taken back to image space: BGR -> RGB, / raw_scale
    np.testing.assert_allclose(det.crop_mean.reshape(3), MEAN_BGR[::-1] / 255.0, rtol=1e-6)
    im = images[0].astype(np.float32)
    # Window (0,0,3,3), 4-pixel input, pad 1: scale 4/2 = 2, half size 2, centre (2,2), grown
    # box (-2,-2,6,6) of 9 pixels -> 4/9 per pixel; 2 pixels above/left of the image become
    # round(2*4/9) = 1 row/column of mean; the clipped box (0,0,6,6) spans 7 -> round(28/9) = 3
    # pixels, filled from im[0:6, 0:6] halved (2x2-block means).
    crop = det.crop(im, (0, 0, 3, 3))
    want = np.empty((4, 4, 3))
    want[...] = MEAN_BGR[::-1] / 255.0
    want[1:4, 1:4] = block_means(images[0][0:6, 0:6], 2)
    np.testing.assert_allclose(crop, want, rtol=1e-5)
    # Window (2,2,5,5): grown box (0,0,8,8) lies inside the image: all of it, halved.
    np.testing.assert_allclose(det.crop(im, (2, 2, 5, 5)), block_means(images[0], 2), rtol=1e-5)
    found = det.detect_windows([(files[0], [(0, 0, 3, 3), (2, 2, 5, 5)])])
    np.testing.assert_allclose(np.array([d["prediction"] for d in found]),
                               expected_probs([want, block_means(images[0], 2)], W, b), rtol=1e-5)
    # no mean: the context beyond the image is 0
    plain = caffe.Detector(proto, model, context_pad=1)
    assert plain.crop(im, (0, 0, 3, 3))[0].max() == 0
    with pytest.raises(ValueError, match="context_pad 2 leaves no window"):
        caffe.Detector(proto, model, context_pad=2)


def test_detector_selective_search(tmp_path, scenes, monkeypatch):
    files, images = scenes
    proto, model, W, b = tiny_model(tmp_path, outputs=2)
    det = caffe.Detector(proto, model, mean=MEAN_BGR, raw_scale=255, channel_swap=(2, 1, 0),
                         input_scale=0.5)
    monkeypatch.setitem(sys.modules, "selective_search_ijcv_with_python", None)   # not installed
    with pytest.raises(ImportError, match="selective_search_ijcv_with_python.*detect_windows"):
        det.detect_selective_search(files)
    calls = []

    def get_windows(fnames, cmd):
        calls.append((list(fnames), cmd))
        return [np.array([[0, 0, 4, 4], [4, 4, 8, 8]]) for _ in fnames]
    monkeypatch.setitem(sys.modules, "selective_search_ijcv_with_python",
                        types.SimpleNamespace(get_windows=get_windows))
    monkeypatch.chdir(tmp_path)
    found = det.detect_selective_search(["scene0.png"])
    assert calls == [([files[0]], "selective_search_rcnn")]         # absolute paths, R-CNN's command
    assert [d["filename"] for d in found] == [files[0]] * 2
    np.testing.assert_allclose(np.array([d["prediction"] for d in found]),
                               expected_probs([images[0][:4, :4], images[0][4:, 4:]], W, b),
                               rtol=1e-5)


# -- top_names / bottom_names / _top_ids / _bottom_ids -------------------------------------

NAMES_NET = """
name: "names" force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" inner_product_param { num_output: 2 } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "fc" type: "InnerProduct" bottom: "ip1" top: "score" inner_product_param { num_output: 2 } }
layer { name: "prob" type: "Softmax" bottom: "score" top: "prob" }
layer { name: "aux" type: "InnerProduct" bottom: "data" top: "aux" inner_product_param { num_output: 1 } }
"""
# data feeds two layers, so Caffe inserts a split layer after the input, named as Caffe names it
TOPS = collections.OrderedDict([
    ("data", ["data"]), ("data_data_0_split", ["data_data_0_split_0", "data_data_0_split_1"]),
    ("ip1", ["ip1"]), ("relu", ["ip1"]), ("fc", ["score"]), ("prob", ["prob"]), ("aux", ["aux"])])
BOTTOMS = collections.OrderedDict([
    ("data", []), ("data_data_0_split", ["data"]), ("ip1", ["data_data_0_split_0"]),
    ("relu", ["ip1"]), ("fc", ["ip1"]), ("prob", ["score"]), ("aux", ["data_data_0_split_1"])])
W1 = np.array([[1.0, -2.0, 0.5], [-1.0, 1.0, 1.0]], np.float32)
W2 = np.array([[2.0, -1.0], [0.5, 3.0]], np.float32)
B2 = np.array([0.25, -0.5], np.float32)
X = np.array([[1.0, 0.5, -1.0], [-2.0, 1.0, 3.0]], np.float32)


def names_net(tmp_path):
    net = caffe.Net(write(tmp_path, "names.prototxt", NAMES_NET), caffe.TEST)
    net.params["ip1"][0].data[...] = W1
    net.params["ip1"][1].data[...] = 0
    net.params["fc"][0].data[...] = W2
    net.params["fc"][1].data[...] = B2
    net.params["aux"][0].data[...] = 1
    net.blobs["data"].data[...] = X
    return net


def test_top_and_bottom_names_are_ordered_dicts_by_layer(tmp_path):
    net = names_net(tmp_path)
    assert net.top_names == TOPS and net.bottom_names == BOTTOMS
    assert list(net.top_names) == list(TOPS) == net._layer_names
    assert [net.top_names[name][0] for name in net.top_names] == \
        ["data", "data_data_0_split_0", "ip1", "ip1", "score", "prob", "aux"]
    assert list(net.top_names.keys()) == list(TOPS.keys())
    assert list(net.top_names.values()) == list(TOPS.values())
    assert list(net.bottom_names.items()) == list(BOTTOMS.items())
    assert len(net.top_names) == 7 and list(reversed(net.top_names))[0] == "aux"
    assert "relu" in net.top_names and "score" not in net.top_names and 0 not in net.top_names
    assert dict(net.bottom_names)["fc"] == ["ip1"] and net.top_names.get("nope") is None
    with pytest.raises(KeyError):
        net.top_names["nope"]
    # _blob_names: data, the split's two tops, ip1 (relu writes in place), score, prob, aux
    assert net._blob_names == ["data", "data_data_0_split_0", "data_data_0_split_1", "ip1",
                               "score", "prob", "aux"]
    assert [net._top_ids(i) for i in range(7)] == [[0], [1, 2], [3], [3], [4], [5], [6]]
    assert [net._bottom_ids(i) for i in range(7)] == [[], [0], [1], [3], [3], [4], [2]]
    with pytest.raises(IndexError, match="out of range: net names has 7 layers"):
        net._top_ids(7)


def test_solver_nets_have_the_name_dicts(tmp_path):
    write(tmp_path, "names.prototxt", NAMES_NET)
    solver = caffe.SGDSolver(write(tmp_path, "solver.prototxt",
                                   'net: "%s/names.prototxt" base_lr: 0.1 lr_policy: "fixed" '
                                   'display: 0' % tmp_path))
    assert list(solver.net.top_names) == list(TOPS) and solver.net.bottom_names["fc"] == ["ip1"]


# -- forward/backward keys as pycaffe's ----------------------------------------------------

def test_forward_and_backward_return_pycaffe_keys(tmp_path):
    net = names_net(tmp_path)
    out = net.forward()
    assert set(out) == {"prob", "aux"} and out["prob"] is net.blobs["prob"].data
    h = np.maximum(X @ W1.T, 0)
    np.testing.assert_allclose(out["prob"], softmax(h @ W2.T + B2), rtol=1e-6)
    np.testing.assert_allclose(out["aux"][:, 0], X.sum(1), rtol=1e-6)
    # with end, the end layer's tops (pycaffe 1.0: top_names[end] + blobs)
    assert set(net.forward(end="data")) == {"data"}
    assert set(net.forward(end="ip1")) == {"ip1"}
    part = net.forward(end="relu")
    assert set(part) == {"ip1"}
    np.testing.assert_allclose(part["ip1"], h, rtol=1e-6)
    assert set(net.forward(end="fc", blobs=["data"])) == {"score", "data"}
    with pytest.raises(KeyError, match="'nope' is not a blob"):
        net.forward(blobs=["nope"])
    with pytest.raises(KeyError, match="no layer named 'nope'"):
        net.forward(end="nope")

    net.forward()
    g = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    # with end, the end layer's bottoms (pycaffe 1.0: bottom_names[end] + diffs)
    diffs = net.backward(start="fc", end="fc", score=g)
    assert set(diffs) == {"ip1"} and diffs["ip1"] is net.blobs["ip1"].diff
    np.testing.assert_allclose(diffs["ip1"], g @ W2, rtol=1e-6)
    back = net.backward(start="fc", end="relu", score=g)         # relu works in place on ip1
    assert set(back) == {"ip1"}
    np.testing.assert_allclose(back["ip1"], (g @ W2) * (X @ W1.T > 0), rtol=1e-6)
    assert set(net.backward(start="fc", end="ip1", diffs=["score"])) == \
        {"data_data_0_split_0", "score"}
    assert set(net.backward()) == {"data"}
    with pytest.raises(KeyError, match="'nope' is not a blob"):
        net.backward(diffs=["nope"])


# -- Net callbacks ----------------------------------------------------------------------------

def _run_with_callbacks(net):
    """Record the callbacks and what they read; zero ip1 before fc runs (a callback's write)."""
    calls, seen = [], {}
    index = {name: i for i, name in enumerate(net._layer_names)}

    def before_forward(i):
        calls.append(("bf", i))
        if i == index["fc"]:
            net.blobs["ip1"].data[...] = 0

    def after_forward(i):
        calls.append(("af", i))
        if i in (index["ip1"], index["relu"]):
            seen[i] = net.blobs["ip1"].data.copy()

    net.before_forward(before_forward)
    net.after_forward(after_forward)
    net.before_backward(lambda i: calls.append(("bb", i)))
    net.after_backward(lambda i: calls.append(("ab", i)))
    net.blobs["data"].data[...] = X
    out = {k: v.copy() for k, v in net.forward().items()}
    forward_calls = list(calls)
    del calls[:]
    net.backward()
    return forward_calls, list(calls), seen, out, index


def _check_callbacks(net, tol):
    forward_calls, backward_calls, seen, out, index = _run_with_callbacks(net)
    assert forward_calls == [(k, i) for i in range(7) for k in ("bf", "af")]
    # every layer, last to first, whether or not it needs a backward pass (as Caffe)
    assert backward_calls == [(k, i) for i in range(6, -1, -1) for k in ("bb", "ab")]
    pre = X @ W1.T
    np.testing.assert_allclose(seen[index["ip1"]], pre, **tol)          # before the ReLU ran
    np.testing.assert_allclose(seen[index["relu"]], np.maximum(pre, 0), **tol)
    np.testing.assert_allclose(out["prob"], softmax(np.tile(B2, (2, 1))), **tol)   # ip1 zeroed


def test_net_callbacks(tmp_path):
    _check_callbacks(names_net(tmp_path), dict(rtol=1e-6))
    with pytest.raises(TypeError, match="needs a callable"):
        names_net(tmp_path).before_forward(3)


def test_net_callbacks_see_and_write_current_values_on_the_device(device, tmp_path):
    net = names_net(tmp_path)
    assert isinstance(net._blob_dict["ip1"].data, device.ndarray)
    _check_callbacks(net, device.tol(1e-6, 1e-7))


# -- HDF5 weights ----------------------------------------------------------------------------

def test_hdf5_weights(tmp_path):
    proto = write(tmp_path, "names.prototxt", NAMES_NET)
    r = np.random.default_rng(5)
    given = {"ip1": [r.standard_normal((2, 3)), r.standard_normal(2)],
             "fc": [r.standard_normal((2, 2)), r.standard_normal(2)],
             "elsewhere": [np.ones(4)]}                 # a layer this net lacks is ignored
    h5 = str(tmp_path / "given.caffemodel.h5")
    with h5py.File(h5, "w") as f:                       # Caffe's layout: /data/<layer>/<index>
        for layer, arrays in given.items():
            for j, a in enumerate(arrays):
                f.create_dataset("data/%s/%d" % (layer, j), data=a.astype(np.float32))

    def check(net):
        for layer in ("ip1", "fc"):
            for j in range(2):
                np.testing.assert_allclose(net.params[layer][j].data, given[layer][j], rtol=1e-6)

    check(caffe.Net(proto, h5, caffe.TEST))
    check(caffe.Net(proto, caffe.TEST, weights=h5))
    net = caffe.Net(proto, caffe.TEST)
    net.copy_from(h5)
    check(net)
    net = caffe.Net(proto, caffe.TEST)
    net.load_hdf5(h5)
    check(net)
    # detected by content, as Caffe's CopyTrainedLayersFrom: any file name
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes((tmp_path / "given.caffemodel.h5").read_bytes())
    check(caffe.Net(proto, str(renamed), caffe.TEST))

    # save_hdf5 writes every layer's blobs (no diffs), which load back
    net.params["aux"][0].data[...] = 7
    out = str(tmp_path / "saved.caffemodel.h5")
    net.save_hdf5(out)
    with h5py.File(out, "r") as f:
        assert "diff" not in f
        np.testing.assert_array_equal(f["data/aux/0"][()], np.full((1, 3), 7, np.float32))
        np.testing.assert_allclose(f["data/fc/1"][()], given["fc"][1], rtol=1e-6)
        assert len(f["data/relu"]) == 0 and len(f["data/data"]) == 0
    back = caffe.Net(proto, out, caffe.TEST)
    check(back)
    np.testing.assert_array_equal(back.params["aux"][0].data, 7)


def test_hdf5_weights_on_the_device(device, tmp_path):
    proto = write(tmp_path, "names.prototxt", NAMES_NET)
    net = caffe.Net(proto, caffe.TEST)
    net.params["fc"][0].data[...] = W2          # an edit in the host mirror is saved
    h5 = str(tmp_path / "w.caffemodel.h5")
    net.save_hdf5(h5)
    with h5py.File(h5, "r") as f:
        np.testing.assert_array_equal(f["data/fc/0"][()], W2)
    other = caffe.Net(proto, caffe.TEST)
    _ = other.params["fc"][0].data              # a mirror read before the load...
    other.load_hdf5(h5)
    np.testing.assert_array_equal(other.params["fc"][0].data, W2)    # ...shows the loaded values


# -- Timer and NCCL ----------------------------------------------------------------------------

def test_timer():
    timer = caffe.Timer()
    with captured_log() as log:
        assert timer.ms == 0.0
    assert "Timer has never been run before reading time." in log.getvalue()
    timer.start()
    time.sleep(0.03)
    timer.start()                       # a second start while running changes nothing, as Caffe
    time.sleep(0.02)
    timer.stop()
    ms = timer.ms
    assert 50.0 <= ms < 5000.0 and timer.ms == ms and timer.seconds == ms / 1000.0
    time.sleep(0.01)
    assert timer.ms == ms               # stopped: the reading stays
    timer.start()
    time.sleep(0.02)
    running = timer.ms                  # reading a running timer stops it
    assert running >= 20.0 and timer.ms == running


def test_timer_waits_for_the_device(device, monkeypatch):
    synced = []

    class CountingEvent(device.cuda.Event):
        def synchronize(self):
            synced.append(self)
            return super().synchronize()

    monkeypatch.setattr(device.cuda, "Event", CountingEvent)
    timer = caffe.Timer()
    timer.start()
    time.sleep(0.03)
    timer.stop()
    assert len(synced) == 1             # stop waited for its event, as Caffe's cudaEventSynchronize
    assert 30.0 <= timer.ms < 5000.0


NCCL_NET = """
name: "n"
layer { name: "data" type: "DummyData" top: "x" top: "y"
        dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
                           data_filler { type: "gaussian" } data_filler { type: "gaussian" } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "p"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }
"""


def nccl_solver(tmp_path):
    write(tmp_path, "n.prototxt", NCCL_NET)
    return caffe.SGDSolver(write(tmp_path, "solver.prototxt",
                                 'net: "%s/n.prototxt" base_lr: 0.1 lr_policy: "fixed" '
                                 'momentum: 0.9 display: 0 random_seed: 3' % tmp_path))


def test_nccl_with_one_solver_changes_nothing(tmp_path):
    # python/train.py with one GPU id: the NCCL object is there but has no one to talk to
    assert caffe.has_nccl() is False          # no CuPy with NCCL and a GPU here
    plain = nccl_solver(tmp_path)
    plain.step(3)
    solver = nccl_solver(tmp_path)
    nccl = caffe.NCCL(solver, caffe.NCCL.new_uid())
    nccl.bcast()
    solver.add_callback(nccl)
    if solver.param.layer_wise_reduce:
        solver.net.after_backward(nccl)
    solver.step(3)
    for a, b in zip(plain.net.params["ip"], solver.net.params["ip"]):
        np.testing.assert_array_equal(a.data, b.data)
    assert not np.array_equal(solver.net.params["ip"][0].data, nccl_solver(tmp_path).net.params["ip"][0].data)


def test_nccl_solver_count_must_match_the_mpi_world(tmp_path):
    solver = nccl_solver(tmp_path)
    caffe.set_solver_count(2)
    try:
        with pytest.raises(RuntimeError, match=r"solver rank 0 of 2 .* MPI rank 0 of 1; start the "
                                               r"script with mpirun -np 2"):
            caffe.NCCL(solver, caffe.NCCL.new_uid())
    finally:
        caffe.set_solver_count(1)
    assert caffe.solver_count() == 1 and caffe.solver_rank() == 0


# -- caffe.io.resize_image: Caffe 1.0's skimage resize, mode='constant' -----------------------

def test_resize_image_reads_zero_beyond_the_border():
    im = np.array([[0.0, 4.0], [8.0, 12.0]], np.float32)[:, :, None]
    up = caffe.io.resize_image(im, (4, 4))[:, :, 0]
    assert up.dtype == np.float32
    # In [0, 1] units the pixels are 0, 1/3, 2/3, 1. Output (1, 1) samples input (0.25, 0.25),
    # inside: the plain bilinear mix 3. Output (3, 3) samples (1.25, 1.25): 0.75 * 0.75 of
    # pixel (1, 1), the rest from outside (0): 0.5625 -> 6.75. Output (0, 3) samples
    # (-0.25, 1.25): 0.5625 of pixel (0, 1) = 0.1875 -> 2.25. Output (0, 0) is 0.
    assert up[1, 1] == pytest.approx(3.0) and up[3, 3] == pytest.approx(6.75)
    assert up[0, 3] == pytest.approx(2.25) and up[0, 0] == pytest.approx(0.0)
    # the whole picture against the direct formula, for mixed scales and three channels
    r = np.random.default_rng(6)
    rgb = (r.random((3, 5, 3)) * 200 - 50).astype(np.float32)
    np.testing.assert_allclose(caffe.io.resize_image(rgb, (7, 4)), caffe_resize(rgb, 7, 4),
                               rtol=1e-5, atol=1e-4)
    # shrinking by 2 never reaches past the border: 2x2-block means
    big = r.random((6, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(caffe.io.resize_image(big, (3, 4)), block_means(big, 2), rtol=1e-5)


def test_resize_image_rejects_bad_input():
    with pytest.raises(ValueError, match="H x W x K"):
        caffe.io.resize_image(np.zeros((4, 4)), (2, 2))
    with pytest.raises(ValueError, match="both sizes must be positive"):
        caffe.io.resize_image(np.zeros((4, 4, 3)), (0, 2))
    with pytest.raises(TypeError, match="new_dims"):
        caffe.io.resize_image(np.zeros((4, 4, 3)), 5)
