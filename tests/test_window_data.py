"""WindowData (R-CNN's data layer): window file, geometry, warp, mean, mirror, sampling.

Expected batches come from a reference written here from Caffe 1.0's
window_data_layer.cpp (float32 box arithmetic with C rounding, explicit
index placement), anchored by boxes worked out by hand.
"""
import cv2
import numpy as np
import pytest
from PIL import Image

import protonet
from protonet import backend, rng
from protonet.data.transform import resize_bilinear
from protonet.io import write_blobproto
from protonet.layers.window_data import window_geometry
from protonet.net import NetError


# -- helpers ----------------------------------------------------------------

def bgr_image(h, w, seed):
    """Random BGR pixels in 1..255, so a 0 in a batch can only be padding."""
    return np.random.default_rng(seed).integers(1, 256, (h, w, 3), dtype=np.uint8)


def save_png(path, bgr):
    Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]), "RGB").save(path)


def write_windows(path, blocks):
    """blocks: [(image path, (height, width), [(class, overlap, x1, y1, x2, y2), ...])]."""
    lines = []
    for i, (name, (h, w), windows) in enumerate(blocks):
        lines += ["# %d" % i, name, "3 %d %d" % (h, w), str(len(windows))]
        lines += ["%d %s %d %d %d %d" % win for win in windows]
    path.write_text("\n".join(lines) + "\n")
    return path


def window_layer(source, batch, crop, params="", transform="", root=""):
    return ('layer { name: "win" type: "WindowData" top: "data" top: "label" '
            'transform_param { crop_size: %d %s } '
            'window_data_param { source: "%s" root_folder: "%s" batch_size: %d %s } }\n'
            % (crop, transform, source, root, batch, params))


def make_net(tmp_path, text, phase=protonet.TRAIN):
    path = tmp_path / "net.prototxt"
    path.write_text('name: "w"\n' + text)
    return protonet.Net(str(path), phase)


def forward(net):
    net.forward()
    return np.array(net.blobs["data"].data), np.array(net.blobs["label"].data)


def one_image(tmp_path, h, w, windows, seed=0, name="a.png"):
    img = bgr_image(h, w, seed)
    save_png(tmp_path / name, img)
    source = write_windows(tmp_path / "w.txt", [(str(tmp_path / name), (h, w), windows)])
    return img, source


def c_round(v):
    """C's round() of a float32 value: halves away from zero."""
    v = float(v)
    return int(np.sign(v) * np.floor(abs(v) + 0.5))


def reference_box(box, img_h, img_w, crop, pad=0, square=False, mirror=False):
    """(rows, cols of the image to warp, (warp_h, warp_w), (pad_h, pad_w)), from the .cpp."""
    x1, y1, x2, y2 = box
    if pad == 0 and not square:
        return slice(y1, y2 + 1), slice(x1, x2 + 1), (crop, crop), (0, 0)
    f = np.float32
    grow = f(crop) / f(crop - 2 * pad)
    hh, hw = f((y2 - y1 + 1) / 2.0), f((x2 - x1 + 1) / 2.0)
    cx, cy = f(x1) + hw, f(y1) + hh
    if square:
        hh = hw = hh if hh > hw else hw
    ex1, ex2 = c_round(cx - hw * grow), c_round(cx + hw * grow)
    ey1, ey2 = c_round(cy - hh * grow), c_round(cy + hh * grow)
    sx, sy = f(crop) / f(ex2 - ex1 + 1), f(crop) / f(ey2 - ey1 + 1)
    out_left, out_top = max(0, -ex1), max(0, -ey1)
    out_right = max(0, ex2 - (img_w - 1))
    cx1, cx2 = ex1 + out_left, ex2 - out_right
    cy1, cy2 = ey1 + out_top, min(ey2, img_h - 1)
    pad_h = c_round(f(out_top) * sy)
    pad_w = c_round(f(out_right if mirror else out_left) * sx)
    warp_h = min(c_round(f(cy2 - cy1 + 1) * sy), crop - pad_h)
    warp_w = min(c_round(f(cx2 - cx1 + 1) * sx), crop - pad_w)
    return slice(cy1, cy2 + 1), slice(cx1, cx2 + 1), (warp_h, warp_w), (pad_h, pad_w)


def expected_item(img, box, crop, pad=0, square=False, mirror=False, mean=None,
                  mean_values=None, scale=1.0):
    """One window as Caffe's load_batch writes it: C x crop x crop, zeros around the warp."""
    rows, cols, (h, w), (ph, pw) = reference_box(box, img.shape[0], img.shape[1], crop, pad,
                                                 square, mirror)
    warped = resize_bilinear(img[rows, cols], h, w).astype(np.float32)
    r = np.arange(h)[:, None]
    c = np.arange(w)[None, :]
    src_c = w - 1 - c if mirror else c
    pix = warped[r, src_c].transpose(2, 0, 1)               # 3 x h x w, flipped if mirrored
    if mean is not None:
        off = (mean.shape[-1] - crop) // 2
        pix = pix - mean[:, r + off + ph, c + off + pw]    # at the output position
    elif mean_values is not None:
        pix = pix - np.asarray(mean_values, np.float32)[:, None, None]
    out = np.zeros((3, crop, crop), np.float32)
    out[:, r + ph, c + pw] = pix * np.float32(scale)
    return out


# -- crop geometry ----------------------------------------------------------

# Worked by hand from the .cpp. Context: 10x12 image (h x w), window x 0..5,
# y 2..7, crop 10, context_pad 2: scale 10/6 grows the 6x6 box to x -2..8,
# y 0..10 (11 x 11); 2 columns lie left of the image and 1 row below it, so
# x 0..8, y 0..9 is cut, warped to round(9*10/11)=8 wide, round(10*10/11)=9
# high, and placed after round(2*10/11)=2 zero columns (mirrored: the right
# margin, 0, goes left). Square: window x 3..6, y 1..10 in a 14x12 image,
# crop 8: the 4x10 box becomes 10x10 around (5, 6), i.e. x 0..10, y 1..11
# (11 x 11 after rounding), all inside, warped to 8x8. Overshoot: window
# x 1..7, y 3..6 in a 10x12 image, crop 6, context_pad 1: scale 1.5 grows
# x to round(-0.75)=-1 .. round(9.75)=10 (12 wide, scale 0.5) and y to 2..8
# (7 high); x 0..10 warps to round(5.5)=6 after round(0.5)=1 zero column:
# 7 > 6, so the warp is cut to 5 wide (mirrored: margin round(0)=0, 6 wide).
HAND_CASES = [
    (((0, 2, 5, 7), 10, 12, 10, 2, False, False), ((0, 0, 8, 9), (9, 8), (0, 2))),
    (((0, 2, 5, 7), 10, 12, 10, 2, False, True), ((0, 0, 8, 9), (9, 8), (0, 0))),
    (((3, 1, 6, 10), 14, 12, 8, 0, True, False), ((0, 1, 10, 11), (8, 8), (0, 0))),
    (((2, 3, 9, 6), 16, 20, 6, 0, False, False), ((2, 3, 9, 6), (6, 6), (0, 0))),
    (((1, 3, 7, 6), 10, 12, 6, 1, False, False), ((0, 2, 10, 8), (6, 5), (0, 1))),
    (((1, 3, 7, 6), 10, 12, 6, 1, False, True), ((0, 2, 10, 8), (6, 6), (0, 0))),
]


@pytest.mark.parametrize("args,expected", HAND_CASES)
def test_geometry_worked_by_hand(args, expected):
    box, h, w, crop, pad, square, mirror = args
    assert window_geometry(box, h, w, crop, pad, square, mirror) == expected
    rows, cols, size, offset = reference_box(box, h, w, crop, pad, square, mirror)
    (x1, y1, x2, y2), _, _ = expected
    assert (rows, cols, size, offset) == ((slice(y1, y2 + 1), slice(x1, x2 + 1)) + expected[1:])


def test_geometry_refuses_what_opencv_would_abort_on():
    with pytest.raises(ValueError, match="not inside the 12x10 image"):
        window_geometry((5, 2, 12, 7), 10, 12, 8, 0, False, False)
    with pytest.raises(ValueError, match="outside the 12x10 image"):
        window_geometry((30, 2, 40, 7), 10, 12, 8, 1, False, False)


# -- values -----------------------------------------------------------------

def test_warp_without_context(tmp_path):
    img, source = one_image(tmp_path, 16, 20, [(3, 0.8, 2, 3, 9, 6)])
    data, label = forward(make_net(tmp_path, window_layer(source, 3, 6, "fg_fraction: 1")))
    assert data.shape == (3, 3, 6, 6) and data.dtype == np.float32
    want = expected_item(img, (2, 3, 9, 6), 6)
    for item in data:
        np.testing.assert_array_equal(item, want)
    np.testing.assert_array_equal(label, [3, 3, 3])
    # The warp is OpenCV's INTER_LINEAR (its fixed point may differ by 1).
    ocv = cv2.resize(img[3:7, 2:10], (6, 6), interpolation=cv2.INTER_LINEAR)
    assert np.abs(data[0] - ocv.transpose(2, 0, 1)).max() <= 1


def test_context_pad_at_the_border_leaves_zeros(tmp_path):
    img, source = one_image(tmp_path, 10, 12, [(1, 0.9, 0, 2, 5, 7)])
    net = make_net(tmp_path, window_layer(source, 2, 10, "fg_fraction: 1 context_pad: 2"))
    data, _ = forward(net)
    want = expected_item(img, (0, 2, 5, 7), 10, pad=2)
    np.testing.assert_array_equal(data[0], want)
    np.testing.assert_array_equal(data[1], want)
    # By hand (see HAND_CASES): the image's x 0..8, y 0..9 warped to 9x8 at column 2.
    np.testing.assert_array_equal(
        data[0][:, :9, 2:], resize_bilinear(img[0:10, 0:9], 9, 8).transpose(2, 0, 1))
    assert not data[0][:, :, :2].any() and not data[0][:, 9, :].any()
    assert data[0][:, :9, 2:].min() > 0


def test_square_mode_with_and_without_context(tmp_path):
    img, source = one_image(tmp_path, 14, 12, [(2, 1.0, 3, 1, 6, 10)])
    data, _ = forward(make_net(tmp_path, window_layer(source, 1, 8,
                                                      'fg_fraction: 1 crop_mode: "square"')))
    np.testing.assert_array_equal(data[0], resize_bilinear(img[1:12, 0:11], 8, 8)
                                  .transpose(2, 0, 1).astype(np.float32))
    net = make_net(tmp_path, window_layer(source, 1, 8,
                                          'fg_fraction: 1 crop_mode: "square" context_pad: 1'))
    data, _ = forward(net)
    np.testing.assert_array_equal(data[0], expected_item(img, (3, 1, 6, 10), 8, pad=1,
                                                         square=True))
    assert not data[0][:, :, 0].any()            # the grown square sticks out on the left


def test_mean_file_mean_values_and_scale(tmp_path):
    img, source = one_image(tmp_path, 10, 12, [(1, 0.9, 0, 2, 5, 7)])
    mean = np.random.default_rng(5).uniform(0, 255, (1, 3, 13, 14)).astype(np.float32)
    write_blobproto(str(tmp_path / "mean.binaryproto"), mean)
    params = "fg_fraction: 1 context_pad: 2 scale: 0.25"
    net = make_net(tmp_path, window_layer(source, 1, 10, params,
                                          'mean_file: "%s"' % (tmp_path / "mean.binaryproto")))
    data, _ = forward(net)
    # offset (14 - 10) // 2 = 2 on both axes (Caffe uses the width's for the rows too)
    want = expected_item(img, (0, 2, 5, 7), 10, pad=2, mean=mean[0], scale=0.25)
    np.testing.assert_allclose(data[0], want, rtol=0, atol=1e-5)
    assert not data[0][:, :, :2].any()          # padding is 0, not -mean
    for values in ([10, 20, 30], [7]):
        transform = " ".join("mean_value: %g" % v for v in values)
        data, _ = forward(make_net(tmp_path, window_layer(source, 1, 10, params, transform)))
        want = expected_item(img, (0, 2, 5, 7), 10, pad=2,
                             mean_values=np.broadcast_to(values, (3,)), scale=0.25)
        np.testing.assert_allclose(data[0], want, rtol=0, atol=1e-5)


def test_mirror_gives_plain_or_mirrored_items(tmp_path):
    img, source = one_image(tmp_path, 10, 12, [(4, 0.9, 0, 2, 5, 7)])
    mean = np.random.default_rng(2).uniform(0, 255, (1, 3, 12, 12)).astype(np.float32)
    write_blobproto(str(tmp_path / "mean.binaryproto"), mean)
    rng.set_random_seed(11)
    net = make_net(tmp_path, window_layer(
        source, 8, 10, "fg_fraction: 1 context_pad: 2",
        'mirror: true mean_file: "%s"' % (tmp_path / "mean.binaryproto")))
    data, label = forward(net)
    plain = expected_item(img, (0, 2, 5, 7), 10, pad=2, mean=mean[0])
    flipped = expected_item(img, (0, 2, 5, 7), 10, pad=2, mean=mean[0], mirror=True)
    seen = set()
    for item in data:
        if np.allclose(item, plain, rtol=0, atol=1e-4):
            seen.add("plain")
        else:
            np.testing.assert_allclose(item, flipped, rtol=0, atol=1e-4)
            seen.add("mirrored")
    assert seen == {"plain", "mirrored"}
    np.testing.assert_array_equal(label, [4] * 8)
    # The mirrored padding sits on the other side: the margin was on the left.
    assert not flipped[:, :, 8:].any() and flipped[:, :9, :8].all()


# -- sampling ---------------------------------------------------------------

def mt19937(seed):
    """The 32-bit Mersenne Twister (boost::mt19937 = std::mt19937), written out."""
    mt = [seed & 0xFFFFFFFF]
    for i in range(1, 624):
        mt.append((1812433253 * (mt[-1] ^ (mt[-1] >> 30)) + i) & 0xFFFFFFFF)
    while True:
        for i in range(624):
            y = (mt[i] & 0x80000000) | (mt[(i + 1) % 624] & 0x7FFFFFFF)
            mt[i] = mt[(i + 397) % 624] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
        for y in mt:
            y ^= y >> 11
            y ^= (y << 7) & 0x9D2C5680
            y ^= (y << 15) & 0xEFC60000
            yield y ^ (y >> 18)


def test_reference_mersenne_twister_meets_the_cpp_standard():
    gen = mt19937(5489)
    for _ in range(9999):
        next(gen)
    assert next(gen) == 4123659995        # [rand.predef]: the 10000th draw of default mt19937


def test_sampling_follows_caffes_prefetch_rand(tmp_path):
    """Per item: draw % len(windows) picks the window, then (mirror) draw % 2 flips it;
    background items first. The generator is seeded with ``prefetch_seed``."""
    imgs = [bgr_image(12, 14, 1), bgr_image(9, 11, 2)]
    for i, img in enumerate(imgs):
        save_png(tmp_path / ("i%d.png" % i), img)
    blocks = [("i0.png", (12, 14), [(5, "0.75", 1, 1, 8, 9), (2, "0.1", 0, 0, 13, 11),
                                    (7, "0.5", 2, 2, 5, 5)]),
              ("i1.png", (9, 11), [(6, "0.9", 3, 2, 10, 8), (1, "0", 4, 4, 6, 6),
                                   (3, "0.29", 0, 1, 7, 8)])]
    source = write_windows(tmp_path / "w.txt", blocks)
    rng.set_random_seed(4)
    net = make_net(tmp_path, window_layer(
        source, 6, 7, "fg_fraction: 0.5 fg_threshold: 0.6 bg_threshold: 0.3 context_pad: 1",
        "mirror: true", root="%s/" % tmp_path))
    layer = net.layers[0]
    # fg: overlap >= 0.6; bg: overlap < 0.3 (label 0); the 0.5 window is dropped.
    fg = [(0, 5, (1, 1, 8, 9)), (1, 6, (3, 2, 10, 8))]
    bg = [(0, 0, (0, 0, 13, 11)), (1, 0, (4, 4, 6, 6)), (1, 0, (0, 1, 7, 8))]
    assert len(layer.fg_windows) == 2 and len(layer.bg_windows) == 3
    # Caffe's set-up draws: the transformer's InitRand (mirror), prefetch_rng_'s seed,
    # InitRand again, the prefetch thread's seed
    assert layer.prefetch_seed == int(rng.Mt19937(4).raw(2)[1])
    assert rng.get_rng().draws == 4
    draws = mt19937(layer.prefetch_seed)
    for _ in range(3):
        data, label = forward(net)
        for i in range(6):
            table = bg if i < 3 else fg
            image, cls, box = table[next(draws) % len(table)]
            flip = next(draws) % 2 == 1
            assert label[i] == cls
            np.testing.assert_array_equal(
                data[i], expected_item(imgs[image], box, 7, pad=1, mirror=flip))


def test_fg_fraction_rounds_down_and_background_comes_first(tmp_path):
    windows = [(9, 0.8, 0, 0, 3, 3), (8, 0.6, 1, 1, 4, 4), (4, 0.2, 2, 0, 5, 3)]
    _, source = one_image(tmp_path, 8, 8, windows)
    rng.set_random_seed(0)
    net = make_net(tmp_path, window_layer(source, 7, 4, "fg_fraction: 0.5"))
    for _ in range(3):
        _, label = forward(net)
        np.testing.assert_array_equal(label[:4], 0)                  # int(7 * 0.5) = 3 fg
        assert set(label[4:]) <= {8, 9} and len(label) == 7
    _, label = forward(make_net(tmp_path, window_layer(source, 3, 4, "fg_fraction: 0")))
    np.testing.assert_array_equal(label, 0)
    # Same seed, same batches (the prefetch seed is drawn from protonet's generator).
    rng.set_random_seed(3)
    a = forward(make_net(tmp_path, window_layer(source, 5, 4, "", "mirror: true")))
    rng.set_random_seed(3)
    b = forward(make_net(tmp_path, window_layer(source, 5, 4, "", "mirror: true")))
    np.testing.assert_array_equal(a[0], b[0])


def test_cache_images_gives_the_same_batches(tmp_path):
    img, source = one_image(tmp_path, 10, 12, [(1, 0.9, 0, 2, 5, 7), (0, 0.1, 3, 3, 9, 8)])
    batches = []
    for cache in ("false", "true"):
        rng.set_random_seed(8)
        net = make_net(tmp_path, window_layer(source, 4, 6, "context_pad: 1 cache_images: %s"
                                              % cache, "mirror: true"))
        if cache == "true":
            (tmp_path / "a.png").unlink()       # read at setup: no longer needed
        batches.append([forward(net) for _ in range(2)])
    for (d0, l0), (d1, l1) in zip(*batches):
        np.testing.assert_array_equal(d0, d1)
        np.testing.assert_array_equal(l0, l1)


def test_on_device(device, tmp_path):
    img, source = one_image(tmp_path, 10, 12, [(1, 0.9, 0, 2, 5, 7)])
    net = make_net(tmp_path, window_layer(source, 2, 10, "fg_fraction: 1 context_pad: 2"))
    net.forward()
    data = backend.to_host(net.blobs["data"].data)
    np.testing.assert_array_equal(data[1], expected_item(img, (0, 2, 5, 7), 10, pad=2))


# -- V1 nets ----------------------------------------------------------------

def test_v1_window_data_upgrades_and_builds(tmp_path, caplog):
    img, source = one_image(tmp_path, 16, 20, [(3, 0.8, 2, 3, 9, 6)])
    (tmp_path / "net.prototxt").write_text(
        'name: "v1"\nlayers { name: "win" type: WINDOW_DATA top: "data" top: "label" '
        'window_data_param { source: "%s" batch_size: 2 crop_size: 6 mirror: false '
        'fg_fraction: 1 scale: 0.5 } }\n' % source)
    with caplog.at_level("WARNING", logger="protonet"):
        net = protonet.Net(str(tmp_path / "net.prototxt"), protonet.TRAIN)
    assert net.layers[0].type == "WindowData"
    assert net.layers[0].layer_param.transform_param.crop_size == 6
    data, label = forward(net)
    assert data.shape == (2, 3, 6, 6)
    # The upgrade moves scale to transform_param, which Caffe's WindowData never reads.
    np.testing.assert_array_equal(data[0], expected_item(img, (2, 3, 9, 6), 6))
    np.testing.assert_array_equal(label, [3, 3])
    assert any("transform_param.scale 0.5 is ignored" in r.getMessage() for r in caplog.records)


# -- errors -----------------------------------------------------------------

BAD_FILES = [
    ("", r"window file .*w.txt is empty"),
    ("0\nimg.png\n", r"w.txt:1: expected '#' to start the block of image 0, got '0'"),
    ("# 1\nimg.png\n3 8 8\n0\n", r"w.txt:1: image index 1, expected 0"),
    ("# 0\nimg.png\n1 8 8\n0\n", r"w.txt:3: image .*img.png has 1 channels"),
    ("# 0\nimg.png\n3 8 8\n2\n1 0.9 0 0 3 3\n", r"w.txt: the file ends \(after line 5\) where "
                                                r"the class index of window 2 of 2 for image 0"),
    ("# 0\nimg.png\n3 8 8\n3\n1 0.9 0 0 3 3\n1 0.9 0 0 3 3\n# 1\nimg.png\n3 8 8\n0\n",
     r"w.txt:7: expected the class index of window 3 of 3 for image 0 \(an integer\), got '#'"),
    ("# 0\nimg.png\n3 8 8\n1\n1 0.9 0 1.5 3 3\n",
     r"w.txt:5: expected coordinate y1 of window 1 of 1 for image 0 \(an integer\), got '1.5'"),
    ("# 0\nimg.png\n3 8 8\n1\n1 0.9 0 1_0 3 3\n", r"w.txt:5: expected coordinate y1 .*'1_0'"),
    ("# 0\nimg.png\n3 8 8\n1\n1 high 0 1 3 3\n", r"w.txt:5: expected the overlap of window 1 "
                                                  r"of 1 for image 0 \(a number\), got 'high'"),
    ("# 0\nimg.png\n3 8 8\n1\n1 0.9 0 0 3 9999999999\n",
     r"w.txt:5: a value of window 1 of 1 for image 0 does not fit a 32-bit integer"),
    ("# 0\nimg.png\n3 8 8\nmany\n", r"w.txt:4: expected the number of windows \(an integer\)"),
    ("# 0\nimg.png\n3 8 8\n1\n0 0.9 0 0 3 3\n", r"w.txt:5: foreground window .* has class 0"),
    ("# 0\nimg.png\n3 8 8\n1\n1 0.1 0 0 3 3\n", r"each batch takes 1 foreground windows but "
                                                r"the window file .*w.txt has none"),
    ("# 0\nimg.png\n3 8 8\n1\n1 0.9 0 0 3 3\n# 1\n", r"w.txt: the file ends \(after line 6\) "
                                                     r"where the image path was expected"),
]


@pytest.mark.parametrize("text,message", BAD_FILES)
def test_malformed_window_file(tmp_path, text, message):
    save_png(tmp_path / "img.png", bgr_image(8, 8, 0))
    (tmp_path / "w.txt").write_text(text)
    with pytest.raises(NetError, match=message):
        make_net(tmp_path, window_layer(tmp_path / "w.txt", 2, 4, "fg_fraction: 0.5",
                                        root="%s/" % tmp_path))


def test_windows_may_be_split_over_lines_like_cpp_streams(tmp_path):
    img = bgr_image(8, 8, 0)
    save_png(tmp_path / "img.png", img)
    (tmp_path / "w.txt").write_text("# 0 %s 3 8 8\n1 1 0.9\n0 1\n 3 4\n" % (tmp_path / "img.png"))
    data, _ = forward(make_net(tmp_path, window_layer(tmp_path / "w.txt", 1, 4, "fg_fraction: 1")))
    np.testing.assert_array_equal(data[0], expected_item(img, (0, 1, 3, 4), 4))


def test_missing_image_and_window_file(tmp_path):
    write_windows(tmp_path / "w.txt", [("missing.png", (8, 8), [(1, 0.9, 0, 0, 3, 3)])])
    for cache in ("false", "true"):
        with pytest.raises(NetError, match=r"w.txt:1: could not open or find the image file "
                                           r".*missing.png"):
            make_net(tmp_path, window_layer(tmp_path / "w.txt", 1, 4, "fg_fraction: 1 "
                                            "cache_images: %s" % cache, root="%s/" % tmp_path))
    with pytest.raises(NetError, match=r"window file .*nowhere.txt cannot be read"):
        make_net(tmp_path, window_layer(tmp_path / "nowhere.txt", 1, 4))


def test_window_outside_the_image_fails_naming_its_line(tmp_path):
    _, source = one_image(tmp_path, 8, 10, [(1, 0.9, 0, 0, 3, 3), (2, 0.9, 4, 2, 10, 5)])
    net = make_net(tmp_path, window_layer(source, 6, 4, "fg_fraction: 1"))
    with pytest.raises(NetError, match=r"w.txt:6: window \(4, 2, 10, 5\) of image .*a.png: "
                                       r"the box is not inside the 10x8 image"):
        for _ in range(20):             # each batch has 6 draws among the 2 windows
            net.forward()


@pytest.mark.parametrize("params,transform,message", [
    ("crop_size: 8", "", r"transform_param.crop_size must be positive.*window_data_param"
                         r".crop_size is not read"),
    ('crop_mode: "Square"', "crop_size: 8", r"crop_mode must be \"warp\" or \"square\""),
    ("context_pad: 4", "crop_size: 8", r"context_pad 4 leaves nothing of the 8-pixel crop"),
    ("fg_fraction: 1.5", "crop_size: 8", r"fg_fraction must lie in \[0, 1\]"),
    ("", "crop_size: 8 mean_value: 1 mean_value: 2", r"either 1 mean_value or 3"),
    ("", "crop_size: 8 mean_file: \"MEAN\"", r"mean_file .*mean.binaryproto is 3x9x7"),
])
def test_bad_settings(tmp_path, params, transform, message):
    _, source = one_image(tmp_path, 8, 8, [(1, 0.9, 0, 0, 3, 3), (0, 0.0, 1, 1, 4, 4)])
    write_blobproto(str(tmp_path / "mean.binaryproto"), np.zeros((1, 3, 9, 7), np.float32))
    transform = transform.replace("MEAN", str(tmp_path / "mean.binaryproto"))
    text = ('layer { name: "win" type: "WindowData" top: "data" top: "label" '
            'transform_param { %s } window_data_param { source: "%s" batch_size: 2 %s } }'
            % (transform, source, params))
    with pytest.raises(NetError, match=message):
        make_net(tmp_path, text)
