"""protonet infer and protonet.viz: a hand-set 1x1 convolution whose prediction is a known
threshold of the input, run on PNG, JPEG, DICOM, folder and LMDB inputs."""
import argparse
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from protonet import TEST, Net, infer, viz
from protonet.data import array_to_datum, write_lmdb
from protonet.data.synth import write_dicom

THRESHOLD = 100.0

DEPLOY = """name: "thresh"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: %d dim: 32 dim: 32 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "score"
  convolution_param { num_output: 2 kernel_size: 1 } }
"""

# The same net as DIGITS writes it: data layers, a loss the deploy stage drops, a val-only metric.
TRAIN_VAL = """name: "thresh"
layer { name: "data" type: "Data" top: "data" include { phase: TRAIN } data_param { batch_size: 1 } }
layer { name: "label" type: "Data" top: "label" include { phase: TRAIN } data_param { batch_size: 1 } }
layer { name: "data" type: "Data" top: "data" include { phase: TEST } data_param { batch_size: 1 } }
layer { name: "label" type: "Data" top: "label" include { phase: TEST } data_param { batch_size: 1 } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "score"
  convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
  exclude { stage: "deploy" } }
layer { name: "accuracy" type: "Accuracy" bottom: "score" bottom: "label" top: "accuracy"
  include { stage: "val" } }
"""


def _save_weights(tmp_path, channel_weights, name):
    """A caffemodel for DEPLOY: score0 = THRESHOLD, score1 = sum_c w_c x_c, so class 1 iff
    sum_c w_c x_c > THRESHOLD."""
    c = len(channel_weights)
    proto = tmp_path / ("deploy%d.prototxt" % c)
    proto.write_text(DEPLOY % c)
    net = Net(str(proto), TEST)
    w = np.zeros((2, c, 1, 1), np.float32)
    w[1, :, 0, 0] = channel_weights
    net.params["conv"][0].data[...] = w
    net.params["conv"][1].data[...] = [THRESHOLD, 0.0]
    path = tmp_path / name
    net.save(str(path))
    return str(proto), str(path)


def _disk(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _image(h=32, w=32, cy=16, cx=15, r=8, inside=200, outside=40, seed=0):
    rng = np.random.default_rng(seed)
    img = np.where(_disk(h, w, cy, cx, r), inside, outside) + rng.integers(-20, 20, (h, w))
    return img.clip(0, 255).astype(np.uint8)


def _run(argv):
    parser = argparse.ArgumentParser(prog="protonet infer")
    infer.add_arguments(parser)
    return infer.run(parser.parse_args(argv))


def _read_png(path):
    with Image.open(path) as img:
        img.load()
        return np.asarray(img)


def _summary(out):
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


@pytest.fixture
def gray_net(tmp_path):
    return _save_weights(tmp_path, [1.0], "gray.caffemodel")


# -- viz --------------------------------------------------------------------------

def test_dice_counts_and_the_empty_case():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert viz.dice(a, b) == 1.0
    a[0, :2] = True
    assert viz.dice(a, b) == 0.0
    b[0, 1:3] = True
    assert viz.dice(a, b) == pytest.approx(2 * 1 / 4)
    with pytest.raises(ValueError, match="shape"):
        viz.dice(a, b[:2])


def test_mask_boundary_is_mask_minus_its_erosion():
    m = np.zeros((7, 7), bool)
    m[1:6, 1:6] = True
    edge = viz.mask_boundary(m)
    expected = m.copy()
    expected[2:5, 2:5] = False
    assert np.array_equal(edge, expected)
    full = np.ones((3, 3), bool)            # the image border is a boundary
    assert viz.mask_boundary(full).sum() == 8
    assert viz.mask_boundary(m, thickness=2).sum() == 25 - 1


@pytest.mark.parametrize("thickness", [1, 2, 3])
def test_mask_boundary_is_within_thickness_steps_of_the_background(thickness):
    # straight from the definition: a mask pixel is boundary when some pixel at
    # 4-neighbour (city-block) distance <= thickness is background, outside the image included
    y, x = np.mgrid[:20, :24]
    disc = (y - 9) ** 2 + (x - 10) ** 2 <= 49
    hole = (y - 9) ** 2 + (x - 10) ** 2 <= 2
    m = (disc & ~hole) | ((y >= 14) & (x >= 15))            # a ring and a block on the border
    t = thickness
    p = np.pad(m, t, constant_values=False)
    all_in = np.ones_like(m)
    for dy in range(-t, t + 1):
        for dx in range(-t + abs(dy), t - abs(dy) + 1):
            all_in &= p[t + dy:t + dy + m.shape[0], t + dx:t + dx + m.shape[1]]
    expected = m & ~all_in
    assert 0 < expected.sum() < m.sum()
    np.testing.assert_array_equal(viz.mask_boundary(m.astype(np.uint8), thickness=t), expected)


def test_window_image_is_robust_to_hot_pixels():
    img = np.tile(np.linspace(0, 1000, 100), (100, 1))
    img[0, 0] = 1e6
    win = viz.window_image(img)
    assert win.dtype == np.uint8 and win.shape == img.shape
    assert win[50, 50] not in (0, 255) and win[0, 0] == 255
    assert np.all(viz.window_image(np.full((5, 5), 7.0)) == 0)


def test_overlay_tints_and_draws_both_contours():
    img = np.zeros((20, 30))
    pred = np.zeros((20, 30), bool)
    pred[5:15, 5:15] = True
    true = np.zeros((20, 30), bool)
    true[5:15, 15:25] = True
    out = viz.overlay(img, pred, true)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert tuple(out[10, 10]) == (89, 0, 0)                 # 0.35 * red over black
    assert tuple(out[5, 8]) == viz.PRED_CONTOUR
    assert tuple(out[5, 20]) == viz.TRUE_CONTOUR
    assert tuple(out[0, 0]) == (0, 0, 0)
    with pytest.raises(ValueError, match="mask is 2x2"):
        viz.overlay(img, pred[:2, :2])


def test_contact_sheet_grid_and_captions():
    tiles = [np.full((40, 20, 3), 255, np.uint8)] * 5
    sheet = viz.contact_sheet(tiles, ["a", "b\nDice 0.5", None, "d", "e"], thumb=32, per_row=3,
                              pad=2)
    assert sheet.shape == (2 + 2 * 34, 2 + 3 * 34, 3)
    assert sheet[40, 19].tolist() == [255, 255, 255]        # tile 4 (no caption) is centred
    assert sheet[3, 3].tolist() != [255, 255, 255]          # a caption box in tile 1


# -- protonet infer -------------------------------------------------------------

def test_png_jpeg_dicom_inputs_write_every_promised_file(tmp_path, gray_net, capsys):
    model, weights = gray_net
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_image()).save(src / "a.png")
    Image.fromarray(_image(40, 48, cy=20, cx=30, r=10, seed=1)).save(src / "b.png")
    rgb = np.stack([_image(seed=2), np.full((32, 32), 90, np.uint8), _image(seed=2)], axis=2)
    Image.fromarray(rgb).save(src / "c.jpg", quality=100)
    dcm = (_disk(32, 32, 10, 12, 6) * 1500 + 30).astype(np.uint16)
    write_dicom(str(src / "IM-0001-0001.dcm"), dcm, "SC-X", "0001", 1, 0)
    (src / "notes.txt").write_text("not an image")          # a folder skips other files
    out = tmp_path / "out"
    assert _run(["--model", model, "--weights", weights, str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out / "contact_sheet.png") in printed and "summary.json" in printed

    summary = _summary(out)
    names = [r["name"] for r in summary["images"]]
    # sorted folder listing; a DICOM named IM-SSSS-NNNN is named by its case folder
    assert names == ["in_IM-0001-0001", "a", "b", "c"]
    sizes = {"a": (32, 32), "b": (40, 48), "c": (32, 32), "in_IM-0001-0001": (32, 32)}
    for r in summary["images"]:
        overlay = _read_png(out / r["overlay"])
        mask = _read_png(out / r["mask"])
        assert overlay.shape == sizes[r["name"]] + (3,)
        assert mask.shape == sizes[r["name"]] and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        assert r["pred_lv_pixels"] == int((mask == 255).sum())
        assert r["dice"] is None and r["true_lv_pixels"] is None
    dicom, png = summary["images"][0], summary["images"][1]
    assert (dicom["case"], dicom["image"], dicom["slice"]) == ("in", "IM-0001-0001", 1)
    assert dicom["pixel_spacing"] == [1.367, 1.367]          # the DICOM's PixelSpacing
    assert dicom["pred_lv_mm2"] == pytest.approx(dicom["pred_lv_pixels"] * 1.367 ** 2)
    assert dicom["pred_lv_pixels"] > 0
    assert (png["case"], png["pixel_spacing"], png["pred_lv_mm2"]) == (None, None, None)
    assert summary["mean_dice"] is None

    # the prediction is the known threshold of what was fed
    mask = lambda n: _read_png(out / (n + "_mask.png")) == 255
    assert np.array_equal(mask("a"), _image() > THRESHOLD)
    assert np.array_equal(mask("in_IM-0001-0001"), dcm.astype(np.float32) > THRESHOLD)
    with Image.open(src / "c.jpg") as img:                  # colour averaged for a 1-channel net
        decoded = np.asarray(img.convert("RGB"), np.float32)
    assert np.array_equal(mask("c"), decoded.mean(axis=2, dtype=np.float32) > THRESHOLD)

    sheet = _read_png(out / "contact_sheet.png")
    assert sheet.ndim == 3 and sheet.shape[1] > 4 * 128
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == names + ["MEAN"]
    assert rows[0]["pred_lv_pixels"] == str(summary["images"][0]["pred_lv_pixels"])
    assert (rows[0]["case"], rows[0]["slice"]) == ("in", "1")
    assert float(rows[0]["pred_lv_mm2"]) == pytest.approx(dicom["pred_lv_mm2"], abs=1e-3)
    assert rows[1]["pred_lv_mm2"] == ""
    assert (out / "index.html").is_file() and str(out / "index.html") in printed


def test_bgr_order_and_gray_replicated_for_a_3_channel_net(tmp_path):
    # class 1 iff the *blue* channel (Caffe's channel 0) exceeds the threshold
    model, weights = _save_weights(tmp_path, [1.0, 0.0, 0.0], "bgr.caffemodel")
    blue = _image(seed=3)
    rgb = np.stack([255 - blue, np.zeros_like(blue), blue], axis=2)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    Image.fromarray(_image(seed=4)).save(tmp_path / "gray.png")
    out = tmp_path / "out"
    assert _run(["--model", model, "--weights", weights, str(tmp_path / "colour.png"),
                 str(tmp_path / "gray.png"), "--out", str(out), "--quiet"]) == 0
    assert np.array_equal(_read_png(out / "colour_mask.png") == 255, blue > THRESHOLD)
    assert np.array_equal(_read_png(out / "gray_mask.png") == 255, _image(seed=4) > THRESHOLD)


def _lmdb_pair(tmp_path, n=4):
    feats, labels, truth = [], [], []
    for i in range(n):
        img = _image(seed=10 + i, r=4 + i).astype(np.float32) * 3   # float_data records
        if i == n - 1:
            img[:] = 10                                              # nothing predicted ...
        lab = _disk(32, 32, 16, 15 + (i % 2), 4 + i).astype(np.uint8)
        if i == n - 1:
            lab[:] = 0                                               # ... nothing labelled
        key = "%09d" % i
        feats.append((key, array_to_datum(img[None])))
        labels.append((key, array_to_datum(lab[None])))
        truth.append((key, img, lab))
    write_lmdb(str(tmp_path / "features"), feats)
    write_lmdb(str(tmp_path / "labels"), labels)
    return truth


def test_lmdb_with_labels_dice_matches_the_saved_masks(tmp_path, gray_net, capsys):
    model, weights = gray_net
    truth = _lmdb_pair(tmp_path)
    out = tmp_path / "out"
    assert _run(["--model", model, "--weights", weights, str(tmp_path / "features"),
                 "--labels", str(tmp_path / "labels"), "--out", str(out)]) == 0
    assert "mean Dice" in capsys.readouterr().out
    summary = _summary(out)
    assert len(summary["images"]) == len(truth)
    dices = []
    for r, (key, img, lab) in zip(summary["images"], truth):
        assert r["key"] == key and r["name"] == key
        mask = _read_png(out / r["mask"]) == 255
        assert np.array_equal(mask, img > THRESHOLD)
        inter = np.logical_and(mask, lab).sum()
        total = mask.sum() + lab.sum()
        expected = 1.0 if total == 0 else 2.0 * inter / total
        assert r["dice"] == pytest.approx(expected, abs=1e-12)
        assert r["true_lv_pixels"] == int(lab.sum())
        assert _read_png(out / r["overlay"]).shape == (32, 32, 3)
        dices.append(expected)
    assert dices[-1] == 1.0 and min(dices) < 1.0
    assert summary["mean_dice"] == pytest.approx(np.mean(dices), abs=1e-12)
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["dice"]) == pytest.approx(np.mean(dices), abs=1e-6)
    assert [float(r["dice"]) for r in rows[:-1]] == pytest.approx(dices, abs=1e-6)


def test_digits_split_folder_and_limit(tmp_path, gray_net):
    model, weights = gray_net
    split = tmp_path / "val_db"
    split.mkdir()
    _lmdb_pair(split)
    out = tmp_path / "out"
    assert _run(["--model", model, "--weights", weights, str(split), "--out", str(out),
                 "--limit", "2", "--quiet"]) == 0
    summary = _summary(out)
    assert [r["key"] for r in summary["images"]] == ["000000000", "000000001"]
    assert all(r["dice"] is not None for r in summary["images"])   # labels found beside features


def test_deploy_net_derived_from_a_train_val_prototxt(tmp_path, gray_net):
    _, weights = gray_net
    train_val = tmp_path / "train_val.prototxt"
    train_val.write_text(TRAIN_VAL)
    dcm = (_disk(24, 20, 12, 10, 5) * 900 + 50).astype(np.uint16)
    write_dicom(str(tmp_path / "x.dcm"), dcm, "SC-X", "0001", 1, 0)
    out = tmp_path / "out"
    assert _run(["--model", str(train_val), "--weights", weights, str(tmp_path / "x.dcm"),
                 "--out", str(out)]) == 0
    summary = _summary(out)
    assert summary["deploy"] == str(out / "deploy.prototxt") and summary["output_blob"] == "score"
    text = (out / "deploy.prototxt").read_text()
    assert "Input" in text and "SoftmaxWithLoss" not in text and "Accuracy" not in text
    assert np.array_equal(_read_png(out / "x_mask.png") == 255, dcm > THRESHOLD)


def test_derived_net_takes_its_channels_from_the_weights(tmp_path):
    _, weights = _save_weights(tmp_path, [1 / 3.0] * 3, "rgb.caffemodel")
    train_val = tmp_path / "train_val.prototxt"
    train_val.write_text(TRAIN_VAL)
    Image.fromarray(_image(seed=5)).save(tmp_path / "g.png")       # gray into a 3-channel net
    out = tmp_path / "out"
    assert _run(["--model", str(train_val), "--weights", weights, str(tmp_path / "g.png"),
                 "--out", str(out), "--quiet"]) == 0
    assert "dim: 3" in (out / "deploy.prototxt").read_text()
    fed = np.float32(_image(seed=5))
    expected = (fed / np.float32(3) * 3) > THRESHOLD    # ~ x > THRESHOLD, up to float rounding
    assert (np.mean((_read_png(out / "g_mask.png") == 255) == expected)) > 0.99


def test_bad_input_is_skipped_and_named(tmp_path, gray_net, capsys):
    model, weights = gray_net
    Image.fromarray(_image()).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    (tmp_path / "notes.txt").write_text("hello")
    out = tmp_path / "out"
    status = _run(["--model", model, "--weights", weights, str(tmp_path / "good.png"),
                   str(tmp_path / "broken.png"), str(tmp_path / "notes.txt"), "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 1
    assert str(tmp_path / "broken.png") in err and "cannot read as a PNG/JPEG" in err
    assert str(tmp_path / "notes.txt") in err and "not a DICOM, PNG or JPEG" in err
    summary = _summary(out)
    assert [r["name"] for r in summary["images"]] == ["good"]
    assert len(summary["skipped"]) == 2

    # nothing readable: exit 2, the file named
    status = _run(["--model", model, "--weights", weights, str(tmp_path / "notes.txt"),
                   "--out", str(tmp_path / "out2")])
    err = capsys.readouterr().err
    assert status == 2 and str(tmp_path / "notes.txt") in err
    final = [l for l in err.splitlines() if "no input could be run" in l][0]
    assert final.count("notes.txt") == 1            # named once, not "notes.txt: notes.txt: ..."


@pytest.mark.parametrize("case, message", [
    ("missing_input", "missing.png: no such file or folder"),
    ("empty_folder", "a folder with no .dcm, .png or .jpg files"),
    ("labels_without_lmdb", "--labels goes with exactly one LMDB input"),
    ("foreign_weights", "holds weights for none of the layers"),
    ("output_blob", "--output-blob nope: no such blob"),
    ("bad_label_key", "has no record with key 000000000"),
])
def test_clear_errors(tmp_path, gray_net, capsys, case, message):
    model, weights = gray_net
    png = tmp_path / "a.png"
    Image.fromarray(_image()).save(png)
    argv = ["--model", model, "--weights", weights, "--out", str(tmp_path / "out")]
    if case == "missing_input":
        argv.append(str(tmp_path / "missing.png"))
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        argv.append(str(tmp_path / "empty"))
    elif case == "labels_without_lmdb":
        _lmdb_pair(tmp_path)
        argv += [str(png), "--labels", str(tmp_path / "labels")]
    elif case == "foreign_weights":
        other = tmp_path / "other.prototxt"
        other.write_text((DEPLOY % 1).replace('"conv"', '"conv_other"'))
        net = Net(str(other), TEST)
        net.save(str(tmp_path / "other.caffemodel"))
        argv[3] = str(tmp_path / "other.caffemodel")
        argv.append(str(png))
    elif case == "output_blob":
        argv += [str(png), "--output-blob", "nope"]
    elif case == "bad_label_key":
        _lmdb_pair(tmp_path)
        write_lmdb(str(tmp_path / "other_labels"),
                   [("k%d" % i, array_to_datum(np.zeros((1, 32, 32), np.uint8))) for i in range(4)])
        argv += [str(tmp_path / "features"), "--labels", str(tmp_path / "other_labels")]
    status = _run(argv)
    assert status in (1, 2)
    assert message in capsys.readouterr().err


def test_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        _run(["--help"])
    text = capsys.readouterr().out
    assert "example:" in text and "--labels" in text


def test_gpu_flag_without_a_gpu_is_a_clear_error(tmp_path, gray_net, capsys, monkeypatch):
    from protonet import backend
    # a machine without CuPy, on any machine: the backend remembers why `import cupy` failed
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_error", ImportError("No module named 'cupy'"))
    assert not backend.cupy_available()
    model, weights = gray_net
    Image.fromarray(_image()).save(tmp_path / "a.png")
    status = _run(["--model", model, "--weights", weights, str(tmp_path / "a.png"),
                   "--out", str(tmp_path / "out"), "--gpu", "0"])
    assert status == 2 and "CuPy" in capsys.readouterr().err
    assert backend.mode() == "cpu"


def test_gpu_matches_cpu(tmp_path, gray_net, device):   # weights saved before GPU mode
    # on the CuPy stand-in (or a real GPU with PROTONET_TEST_DEVICE=cupy, see conftest.py)
    from protonet import backend
    backend.set_mode_cpu()
    model, weights = gray_net
    _lmdb_pair(tmp_path)
    for flag, out in (("-1", "cpu"), ("0", "gpu")):
        assert _run(["--model", model, "--weights", weights, str(tmp_path / "features"),
                     "--labels", str(tmp_path / "labels"), "--out", str(tmp_path / out),
                     "--gpu", flag, "--quiet"]) == 0
    assert backend.mode() == "cpu"
    cpu, gpu = _summary(tmp_path / "cpu"), _summary(tmp_path / "gpu")
    assert [r["dice"] for r in cpu["images"]] == [r["dice"] for r in gpu["images"]]
