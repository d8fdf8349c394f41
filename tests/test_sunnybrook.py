"""Sunnybrook preparation: OpenCV-exact contour fill, DICOM reading, synth -> DIGITS dataset."""
import argparse
import glob
import json
import os
import shutil

import numpy as np
import pytest

from protonet.data import datum_to_array, open_db
from protonet.data import sunnybrook, synth
from protonet.io import read_blobproto
from protonet.proto import caffe_pb2

import cv2


def _cv2_fill(points, shape):
    ref = np.zeros(shape, np.uint8)
    cv2.fillPoly(ref, [np.int32(points)], 1)
    return ref


# -- rasterisation --------------------------------------------------------------

def test_fill_poly_matches_opencv_on_random_polygons():
    rng = np.random.default_rng(0)
    for it in range(1500):
        h, w = (int(v) for v in rng.integers(1, 120, 2))
        n = int(rng.integers(1, 40))
        kind = it % 5
        if kind == 0:    # inside the image, self-intersecting
            pts = np.stack([rng.integers(0, w, n), rng.integers(0, h, n)], 1)
        elif kind == 1:  # crossing the borders (clipped edges)
            pts = np.stack([rng.integers(-30, w + 30, n), rng.integers(-30, h + 30, n)], 1)
        elif kind == 2:  # star-shaped contour from float points, truncated like the tutorial
            c = rng.uniform(0, [w, h])
            r = rng.uniform(1, max(h, w) / 2, n)
            t = np.sort(rng.uniform(0, 2 * np.pi, n))
            pts = np.trunc(np.stack([c[0] + r * np.cos(t), c[1] + r * np.sin(t)], 1))
        elif kind == 3:  # far outside
            pts = np.stack([rng.integers(-3000, 3000, n), rng.integers(-3000, 3000, n)], 1)
        else:            # collinear and repeated points
            a, b = rng.integers(0, max(h, w), (2, 2))
            pts = a + np.outer(rng.integers(0, 4, n), b - a) // 3
        pts = np.asarray(pts, np.int64)
        got = sunnybrook.fill_poly((h, w), pts)
        ref = _cv2_fill(pts, (h, w))
        assert np.array_equal(got, ref), "polygon %d %s on %dx%d: %d pixels differ" % (
            it, pts.tolist(), h, w, int((got != ref).sum()))


def test_contour_label_truncates_like_the_tutorial():
    pts = np.array([[10.9, 10.9], [30.5, 12.2], [28.99, 40.7], [12.1, 35.5]])
    expected = _cv2_fill(pts.astype(np.int32), (64, 64))  # astype truncates toward zero
    assert np.array_equal(sunnybrook.contour_label(pts, (64, 64)), expected)


def test_normalize_case():
    assert sunnybrook.normalize_case("SC-HF-I-01") == "SC-HF-I-1"
    assert sunnybrook.normalize_case("SC-HYP-40") == "SC-HYP-40"
    assert sunnybrook.normalize_case("SC-N-03") == "SC-N-3"


# -- DICOM ------------------------------------------------------------------------

def test_read_dicom_mr_small_gives_stored_pixels():
    import pydicom
    from pydicom.data import get_testdata_file
    path = get_testdata_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    arr = sunnybrook.read_dicom(path)
    assert arr.dtype == np.float32 and arr.shape == (64, 64)
    np.testing.assert_array_equal(arr, ds.pixel_array.astype(np.float32))
    assert sunnybrook.read_dicom(path, dtype=None).dtype == ds.pixel_array.dtype


# -- synth -> convert -------------------------------------------------------------

@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    info = synth.synth_sunnybrook(str(out), cases=4, seed=3, images_per_case=4)
    assert info["images_written"] == 16
    return str(out)


def _read_split(dataset, split):
    feats = dict(open_db(os.path.join(dataset, split, "features")).items())
    labels = dict(open_db(os.path.join(dataset, split, "labels")).items())
    return feats, labels


def test_synth_layout_and_dicom_headers(synth_dir):
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
    cases = sorted(os.listdir(os.path.join(synth_dir, "images", "challenge_training")))
    assert cases == sorted(synth.case_names(4))
    # contour folders name cases with two-digit numbers, as the challenge's do
    assert os.path.isdir(os.path.join(synth_dir, "contours", "TrainingDataContours", "SC-HF-I-01",
                                      "contours-manual", "IRCCI-expert"))
    dcm = sorted(glob.glob(os.path.join(synth_dir, "images", "*", "SC-HF-I-1", "IM-0004-*.dcm")))
    assert len(dcm) == 4  # SC-HF-I-1 is in SAX_SERIES as series 0004
    ds = pydicom.dcmread(dcm[0])
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPClassUID == MRImageStorage and ds.Modality == "MR"
    assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.PixelRepresentation) == (256, 256, 16, 0)
    assert ds.PhotometricInterpretation == "MONOCHROME2" and len(ds.PixelSpacing) == 2
    assert ds.SeriesNumber == 4 and ds.pixel_array.dtype == np.uint16
    lines = open(glob.glob(os.path.join(synth_dir, "contours", "*", "SC-HF-I-01", "*", "*",
                                        "*.txt"))[0]).read().splitlines()
    assert len(lines) > 40 and all(len(line.split()) == 2 for line in lines)


@pytest.mark.parametrize("channels", ["gray", "rgb"])
def test_convert_counts_shapes_labels_and_keys(synth_dir, tmp_path, channels, capsys):
    out = str(tmp_path / "ds")
    parser = sunnybrook.add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--images", os.path.join(synth_dir, "images"),
                              "--contours", os.path.join(synth_dir, "contours"),
                              "--out", out, "--channels", channels, "--val-pct", "25",
                              "--seed", "7"])
    assert sunnybrook.run(args) == 0
    printed = capsys.readouterr().out
    assert "train    12 entries" in printed and "val       4 entries" in printed
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["ok"] and summary["written"] == 16 and not summary["skipped"]
    assert summary["splits"]["train"]["entries"] == 12  # floor(16 * 25 / 100) = 4 for val
    assert summary["splits"]["val"]["entries"] == 4
    nch = 3 if channels == "rgb" else 1
    import pydicom
    entries = {(e["split"], e["key"]): e for e in summary["entries"]}
    train_sum = np.zeros((nch, 256, 256))
    lv = []
    for split, n in (("train_db", 12), ("val_db", 4)):
        feats, labels = _read_split(out, split)
        assert len(feats) == len(labels) == n
        assert sorted(feats) == sorted(labels) == [b"%09d" % i for i in range(n)]
        for key in feats:
            f = caffe_pb2.Datum.FromString(feats[key])
            lab = caffe_pb2.Datum.FromString(labels[key])
            assert (f.channels, f.height, f.width) == (nch, 256, 256) and len(f.float_data)
            assert (lab.channels, lab.height, lab.width) == (1, 256, 256) and not lab.float_data
            feature, label = datum_to_array(f), datum_to_array(lab)
            assert label.dtype == np.uint8 and set(np.unique(label)) <= {0, 1}
            entry = entries[(split[:-3], key.decode())]
            # the label is an independent cv2.fillPoly of that contour file
            ref = _cv2_fill(np.loadtxt(entry["contour"]).astype(np.int32), (256, 256))
            assert np.array_equal(label[0], ref)
            # the feature is the stored pixels of the DICOM of that contour, copied per channel
            pixels = pydicom.dcmread(entry["dicom"]).pixel_array.astype(np.float32)
            for c in range(nch):
                np.testing.assert_array_equal(feature[c], pixels)
            assert "/IM-0001-" not in entry["dicom"].replace(os.sep, "/")  # not the localizer
            if split == "train_db":
                train_sum += feature
            lv.append(label.mean())
    assert all(f > 0 for f in lv) and 0.005 < np.mean(lv) < 0.04
    mean = read_blobproto(os.path.join(out, "mean.binaryproto"))
    assert mean.shape == (1, nch, 256, 256)
    np.testing.assert_allclose(mean[0], train_sum / 12, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(read_blobproto(os.path.join(out, "train_db",
                                                              "mean.binaryproto")), mean)
    # unmapped cases were found by image number (SC-HF-NI-1 is not in SAX_SERIES)
    assert "SC-HF-NI-1" not in sunnybrook.SAX_SERIES and summary["series"]["SC-HF-NI-1"]
    assert summary["series"]["SC-HF-I-1"] == ["0004"]


def test_split_by_image_is_digits_seeded_and_by_percent(synth_dir, tmp_path):
    images, contours = os.path.join(synth_dir, "images"), os.path.join(synth_dir, "contours")
    kw = dict(progress=False, val_by="image", preview=False)
    a = sunnybrook.convert(images, contours, str(tmp_path / "a"), seed=1, **kw)
    b = sunnybrook.convert(images, contours, str(tmp_path / "b"), seed=1, **kw)
    c = sunnybrook.convert(images, contours, str(tmp_path / "c"), seed=2, val_pct=50, **kw)
    assert a["splits"]["val"]["entries"] == 1  # floor(16 * 10 / 100)
    assert [e["contour"] for e in a["entries"]] == [e["contour"] for e in b["entries"]]
    assert c["splits"]["val"]["entries"] == 8 and c["splits"]["train"]["entries"] == 8
    assert [e["contour"] for e in a["entries"]] != [e["contour"] for e in c["entries"]]
    # by image, a patient's slices land on both sides: what --val-by case is for
    sides = {}
    for e in c["entries"]:
        sides.setdefault(e["case"], set()).add(e["split"])
    assert any(len(s) == 2 for s in sides.values())
    with pytest.raises(sunnybrook.SunnybrookError, match="--overwrite"):
        sunnybrook.convert(images, contours, str(tmp_path / "a"), progress=False)
    sunnybrook.convert(images, contours, str(tmp_path / "a"), progress=False, overwrite=True)


def test_choose_val_cases_is_close_to_the_share_and_seeded():
    counts = {"A-1": 10, "A-2": 12, "A-3": 8, "A-4": 30, "A-5": 20, "A-6": 20}   # 100 images
    for seed in range(6):
        val = sunnybrook.choose_val_cases(counts, 20, seed)
        assert val == sunnybrook.choose_val_cases(counts, 20, seed)
        assert abs(sum(counts[c] for c in val) - 20) <= 4, (seed, val)
    assert len({frozenset(sunnybrook.choose_val_cases(counts, 20, s)) for s in range(6)}) > 1
    # a share below one case still validates on one case; a share near 100 keeps one to train
    assert len(sunnybrook.choose_val_cases(counts, 1, 0)) == 1
    assert len(sunnybrook.choose_val_cases(counts, 99, 0)) == 5
    assert sunnybrook.choose_val_cases(counts, 0, 0) == set()
    assert sunnybrook.choose_val_cases(counts, 100, 0) == set(counts)


def test_split_by_case_keeps_patients_whole_and_previews(synth_dir, tmp_path, capsys):
    images, contours = os.path.join(synth_dir, "images"), os.path.join(synth_dir, "contours")
    out = str(tmp_path / "d")
    args = sunnybrook.add_arguments(argparse.ArgumentParser()).parse_args(
        ["--images", images, "--contours", contours, "--out", out, "--val-pct", "50",
         "--seed", "4"])
    assert args.val_by == "case"                       # the default
    assert sunnybrook.run(args) == 0
    printed = capsys.readouterr().out
    d = json.load(open(os.path.join(out, "summary.json")))
    sides = {}
    for e in d["entries"]:
        sides.setdefault(e["case"], set()).add(e["split"])
    assert all(len(s) == 1 for s in sides.values()) and len(sides) == 4
    assert d["val_by"] == "case" and len(d["val_cases"]) == 2          # 4 cases x 4 images
    assert {c for c, s in sides.items() if s == {"val"}} == set(d["val_cases"])
    assert d["splits"]["val"]["entries"] == 8 and "2 of 4 cases, 50.0%" in printed
    # each entry names its image number and slice (20 cine phases a slice), as the DICOM says
    for e in d["entries"]:
        number = int(os.path.basename(e["dicom"])[8:12])
        assert e["image"] == number and e["slice"] == (number - 1) // 20 + 1
        assert e["contour"].endswith("IM-0001-%04d-icontour-manual.txt" % number)
        assert e["slice_location"] == -10.0 * (e["slice"] - 1)    # synth: 10 mm apart
    assert d["cases"]["SC-HF-I-1"]["train"] + d["cases"]["SC-HF-I-1"]["val"] == 4
    # the preview: one sheet of 16 tiles (8 a row, 192 px + 4 px gaps) and the counts
    from PIL import Image
    sheet = np.asarray(Image.open(os.path.join(out, "preview", "contact_sheet.png")))
    assert sheet.shape == (4 + 2 * 196, 4 + 8 * 196, 3)
    s = sheet.astype(int)
    green = (s[..., 1] > s[..., 0] + 80) & (s[..., 1] > s[..., 2] + 80)
    for k in range(16):                                  # every tile shows its contour
        top, left = 4 + (k // 8) * 196, 4 + (k % 8) * 196
        assert green[top:top + 192, left:left + 192].sum() > 40, k
    assert not green[:4].any() and not green[:, :4].any()    # the gaps are background
    counts = open(os.path.join(out, "preview", "counts.txt")).read().splitlines()
    assert counts[0].split() == ["case", "train", "val", "skipped", "slices"]
    assert counts[-1].split() == ["total", "8", "8", "0"]
    assert os.path.join(out, "preview", "contact_sheet.png") in printed
    # --val-by case is deterministic for a seed
    again = sunnybrook.convert(images, contours, str(tmp_path / "e"), val_pct=50, seed=4,
                               progress=False, preview=False)
    assert again["val_cases"] == d["val_cases"] and again["preview"] == []
    assert [e["contour"] for e in again["entries"]] == [e["contour"] for e in d["entries"]]


def test_problems_are_reported_and_the_rest_is_written(synth_dir, tmp_path, capsys):
    from pydicom.data import get_testdata_file
    root = tmp_path / "broken"
    shutil.copytree(synth_dir, str(root))
    images, contours = str(root / "images"), str(root / "contours")
    case_dir = os.path.join(images, "challenge_training", "SC-HF-I-1")
    ctr_dir = os.path.join(contours, "TrainingDataContours", "SC-HF-I-01", "contours-manual",
                           "IRCCI-expert")
    numbers = sorted(int(f[8:12]) for f in os.listdir(ctr_dir))
    # 1: the DICOM of a contour is missing
    os.remove(os.path.join(case_dir, "IM-0004-%04d.dcm" % numbers[0]))
    # 2: a malformed contour line
    bad = os.path.join(ctr_dir, "IM-0001-%04d-icontour-manual.txt" % numbers[1])
    lines = open(bad).read().splitlines()
    lines[4] = "101.25 oops"
    open(bad, "w").write("\n".join(lines) + "\n")
    # 3: an image of the wrong size (pydicom's 64x64 MR test file)
    small = os.path.join(case_dir, "IM-0004-%04d.dcm" % numbers[2])
    shutil.copyfile(get_testdata_file("MR_small.dcm"), small)
    # 4: contours of a case without an image folder
    orphan = os.path.join(contours, "TrainingDataContours", "SC-HYP-99", "contours-manual",
                          "IRCCI-expert")
    os.makedirs(orphan)
    shutil.copy(os.path.join(ctr_dir, "IM-0001-%04d-icontour-manual.txt" % numbers[3]), orphan)

    out = str(tmp_path / "ds")
    args = sunnybrook.add_arguments(argparse.ArgumentParser()).parse_args(
        ["--images", images, "--contours", contours, "--out", out, "--val-pct", "0"])
    assert sunnybrook.run(args) == 1
    captured = capsys.readouterr()
    assert "%s:5:" % bad in captured.err and "'101.25 oops'" in captured.err
    assert "missing DICOM: no IM-0004-%04d.dcm" % numbers[0] in captured.err
    assert "is 64x64 pixels, expected 256x256" in captured.err
    assert "skipped 1 contour(s) of case SC-HYP-99: no folder named SC-HYP-99" in captured.err
    assert "SKIPPED 4" in captured.out
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert not summary["ok"] and summary["written"] == 13 and len(summary["skipped"]) == 4
    feats, labels = _read_split(out, "train_db")
    assert len(feats) == len(labels) == 13
    assert not os.path.exists(os.path.join(out, "val_db"))  # 0 % validation: no val DB


def test_nothing_to_convert_is_an_error(synth_dir, tmp_path, capsys):
    (tmp_path / "img").mkdir()
    (tmp_path / "ctr").mkdir()
    parser = sunnybrook.add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--images", str(tmp_path / "img"), "--contours",
                              str(tmp_path / "ctr"), "--out", str(tmp_path / "out")])
    assert sunnybrook.run(args) == 2
    assert "no contour files" in capsys.readouterr().err
    # contours, but --images points at a folder without the cases
    args = parser.parse_args(["--images", str(tmp_path / "img"), "--contours",
                              os.path.join(synth_dir, "contours"), "--out", str(tmp_path / "out")])
    assert sunnybrook.run(args) == 2
    assert "has a folder of IM-SSSS-NNNN.dcm files" in capsys.readouterr().err
    assert not os.path.exists(str(tmp_path / "out"))


def test_synth_is_deterministic_and_refuses_to_overwrite(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    synth.synth_sunnybrook(a, cases=2, seed=5, images_per_case=2)
    synth.synth_sunnybrook(b, cases=2, seed=5, images_per_case=2)
    files = sorted(os.path.relpath(p, a) for p in glob.glob(os.path.join(a, "**", "*.*"),
                                                             recursive=True))
    assert len(files) == 2 * (2 + 1 + 2)  # per case: 2 SAX images, 1 localizer, 2 contours
    for rel in files:
        assert open(os.path.join(a, rel), "rb").read() == open(os.path.join(b, rel), "rb").read()
    with pytest.raises(FileExistsError, match="--overwrite"):
        synth.synth_sunnybrook(a, cases=1, seed=5)
    synth.synth_sunnybrook(a, cases=1, seed=5, images_per_case=1, overwrite=True)
    assert len(os.listdir(os.path.join(a, "images", "challenge_training"))) == 1
