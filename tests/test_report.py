"""infer's browsable report (index.html) in a real headless browser, and what feeds it:
inputs named by case and image, Dice from Sunnybrook contour files, areas in mm².

The browser is Debian's chromium driven by selenium (.ci/run installs both); without it
these tests fail: the report is a promised output and must be checked."""
import base64
import csv
import glob
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from protonet import TEST, Net, viz
from protonet.data.sunnybrook import contour_label, convert, read_contour, read_dicom
from protonet.data.synth import synth_sunnybrook
from protonet.infer import InferError, infer

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
THRESHOLD = 400.0     # the synthetic LV blood pool is brighter, but so is some of the rest
SPACING = 1.367       # the synthetic DICOMs' PixelSpacing

DEPLOY = """name: "thresh"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 32 dim: 32 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "score"
  convolution_param { num_output: 2 kernel_size: 1 } }
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two synthetic cases (a localizer and 3 contoured SAX images each), a threshold net
    (class 1 iff value > THRESHOLD), and infer's run on the DICOM folders with --contours."""
    root = tmp_path_factory.mktemp("report")
    synth = synth_sunnybrook(str(root / "synth"), cases=2, images_per_case=3, seed=0)
    proto = root / "deploy.prototxt"
    proto.write_text(DEPLOY)
    net = Net(str(proto), TEST)
    net.params["conv"][0].data[...] = np.array([0.0, 1.0], np.float32).reshape(2, 1, 1, 1)
    net.params["conv"][1].data[...] = [THRESHOLD, 0.0]
    weights = root / "thresh.caffemodel"
    net.save(str(weights))
    folders = sorted(glob.glob(os.path.join(synth["images"], "challenge_training", "*")))
    out = root / "pred"
    summary = infer(str(proto), str(weights), folders, str(out), contours=synth["contours"],
                    echo=None)
    return {"root": root, "synth": synth, "model": str(proto), "weights": str(weights),
            "folders": folders, "out": out, "summary": summary}


def _truth(synth, case, image_no):
    case_dir = {"SC-HF-I-1": "SC-HF-I-01", "SC-HF-NI-1": "SC-HF-NI-01"}[case]
    path = os.path.join(synth["contours"], "TrainingDataContours", case_dir, "contours-manual",
                        "IRCCI-expert", "IM-0001-%04d-icontour-manual.txt" % image_no)
    return path, contour_label(read_contour(path), (256, 256)) != 0


# -- what the page shows ----------------------------------------------------------

def test_dicoms_are_named_by_case_and_image_and_scored_against_their_contours(setup):
    summary, out, synth = setup["summary"], setup["out"], setup["synth"]
    names = [r["name"] for r in summary["images"]]
    # SC-HF-I-1's SAX series is 0004 (SAX_SERIES); SC-HF-NI-1 is not listed: the largest series
    assert names == ["SC-HF-I-1_IM-0001-0001", "SC-HF-I-1_IM-0004-0001",
                     "SC-HF-I-1_IM-0004-0008", "SC-HF-I-1_IM-0004-0021",
                     "SC-HF-NI-1_IM-0001-0001", "SC-HF-NI-1_IM-1117-0001",
                     "SC-HF-NI-1_IM-1117-0008", "SC-HF-NI-1_IM-1117-0021"]
    for r in summary["images"]:
        assert os.path.isfile(out / (r["name"] + "_overlay.png"))
        mask = np.asarray(Image.open(out / r["mask"])) == 255
        assert np.array_equal(mask, read_dicom(r["file"]) > THRESHOLD)
        assert r["case"] == r["name"].split("_")[0] and r["image"] == r["name"].split("_")[1]
        assert r["slice"] == int(r["image"][-4:])
        assert r["pixel_spacing"] == [SPACING, SPACING]
        assert r["pred_lv_mm2"] == pytest.approx(r["pred_lv_pixels"] * SPACING ** 2)
        if "IM-0001-" in r["name"]:
            # the localizer shares image number 1 with the SAX series: not its contour
            assert r["dice"] is None and r["truth"] is None
            continue
        contour, true = _truth(synth, r["case"], r["slice"])
        assert r["truth"] == contour
        assert r["true_lv_pixels"] == int(true.sum())
        assert r["dice"] == pytest.approx(viz.dice(mask, true), abs=1e-12)
    dices = [r["dice"] for r in summary["images"] if r["dice"] is not None]
    assert len(dices) == 6 and len(set(dices)) == 6 and 0 < min(dices) < max(dices) < 1
    assert summary["mean_dice"] == pytest.approx(np.mean(dices))
    assert summary["report"] == str(out / "index.html") and summary["report_embedded"]
    html = (out / "index.html").read_text()
    assert "SC-HF-NI-1_IM-1117-0008" in html and "http://" not in html and "https://" not in html
    assert not (out / "report").exists()          # everything embedded


def test_lmdb_of_a_sunnybrook_dataset_is_named_from_its_summary(setup, tmp_path, capsys):
    synth = setup["synth"]
    dataset = tmp_path / "dataset"
    data = convert(synth["images"], synth["contours"], str(dataset), val_pct=50, seed=1,
                   progress=False)
    val = [e for e in data["entries"] if e["split"] == "val"]
    out = tmp_path / "pred"
    summary = infer(setup["model"], setup["weights"], [str(dataset / "val_db")], str(out),
                    echo=None)
    records = summary["images"]
    assert [r["key"] for r in records] == [e["key"] for e in val]
    for r, e in zip(records, val):
        image = os.path.splitext(os.path.basename(e["dicom"]))[0]
        # the converter's slice: the cine series holds 20 phases a slice
        assert e["slice"] == (int(image[-4:]) - 1) // 20 + 1
        assert (r["case"], r["image"], r["slice"]) == (e["case"], image, e["slice"])
        assert r["name"] == "%s_%s" % (e["case"], image)
        assert os.path.isfile(out / ("%s_%s_mask.png" % (e["case"], image)))
        assert r["pred_lv_mm2"] == pytest.approx(r["pred_lv_pixels"] * SPACING ** 2)
        assert r["dice"] is not None           # the labels LMDB beside the features
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["case"] for row in rows[:-1]] == [e["case"] for e in val]

    # fields another version of the converter may add ("slice", "pixel_spacing") are used
    meta = json.loads((dataset / "summary.json").read_text())
    for e in meta["entries"]:
        e["slice"], e["pixel_spacing"] = 7, [2.0, 0.5]
    (dataset / "summary.json").write_text(json.dumps(meta))
    again = infer(setup["model"], setup["weights"], [str(dataset / "val_db" / "features")],
                  str(tmp_path / "pred2"), echo=None)
    assert {r["slice"] for r in again["images"]} == {7}
    assert [r["pred_lv_mm2"] for r in again["images"]] == [r["pred_lv_pixels"] * 1.0
                                                           for r in again["images"]]

    # a summary of another conversion (not one entry per record): keys, and a warning
    meta["entries"] = [e for e in meta["entries"] if e["key"] != val[0]["key"]]
    (dataset / "summary.json").write_text(json.dumps(meta))
    stale = infer(setup["model"], setup["weights"], [str(dataset / "val_db")],
                  str(tmp_path / "pred4"), echo=None)
    assert [r["name"] for r in stale["images"]] == [e["key"] for e in val]
    assert "lists 2 records of %s, which holds 3" % (dataset / "val_db" / "features") \
        in capsys.readouterr().err

    # no summary.json: the records keep their keys as names
    os.remove(dataset / "summary.json")
    plain = infer(setup["model"], setup["weights"], [str(dataset / "val_db")],
                  str(tmp_path / "pred3"), echo=None)
    assert [r["name"] for r in plain["images"]] == [e["key"] for e in val]
    assert all(r["case"] is None and r["pred_lv_mm2"] is None for r in plain["images"])


def test_contour_problems_are_named(setup, tmp_path, capsys):
    with pytest.raises(InferError, match="--contours .*nowhere: no such folder"):
        infer(setup["model"], setup["weights"], setup["folders"], str(tmp_path / "a"),
              contours=str(tmp_path / "nowhere"), echo=None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InferError, match="no contour files IM-0001-NNNN-icontour-manual.txt"):
        infer(setup["model"], setup["weights"], setup["folders"], str(tmp_path / "b"),
              contours=str(tmp_path / "empty"), echo=None)
    contours = tmp_path / "contours"
    shutil.copytree(setup["synth"]["contours"], contours)
    bad, _ = _truth({"contours": str(contours)}, "SC-HF-I-1", 8)
    with open(bad, "a") as f:
        f.write("12.5 not-a-number\n")
    summary = infer(setup["model"], setup["weights"], setup["folders"], str(tmp_path / "c"),
                    contours=str(contours), echo=None)
    assert len(summary["images"]) == 7 and len(summary["skipped"]) == 1
    reason = summary["skipped"][0]["reason"]
    assert reason.startswith(bad + ":") and "expected one point" in reason
    assert "IM-0004-0008.dcm" in summary["skipped"][0]["input"]
    assert bad in capsys.readouterr().err


def test_past_the_embedding_budget_layers_become_files(setup, tmp_path):
    out = tmp_path / "pred"
    # about 0.1 MB: the first images are embedded, then every layer is moved to files
    summary = infer(setup["model"], setup["weights"], setup["folders"], str(out),
                    contours=setup["synth"]["contours"], echo=None, embed_mb=0.1)
    assert not summary["report_embedded"]
    html = (out / "index.html").read_text()
    assert "data:image/png" not in html and '"contact_sheet.png"' in html
    for r in summary["images"]:
        for role in ("image", "pred") + (("true",) if r["dice"] is not None else ()):
            rel = "report/%s_%s.png" % (r["name"], role)
            assert ('"%s"' % rel) in html
            assert Image.open(out / rel).size == (256, 256)
        assert not (out / "report" / ("%s_true.png" % r["name"])).exists() or r["dice"] is not None
    layer = np.asarray(Image.open(out / "report" / "SC-HF-I-1_IM-0004-0001_true.png"))
    _, true = _truth(setup["synth"], "SC-HF-I-1", 1)
    assert layer.shape == (256, 256, 4)
    assert np.array_equal(layer[..., 3] == 255, viz.mask_boundary(true))   # the contour only
    assert np.all(layer[layer[..., 3] == 255][:, :3] == viz.TRUE_CONTOUR)


# -- the page in chromium ------------------------------------------------------------

@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    assert os.path.isfile(CHROMIUM) and os.path.isfile(CHROMEDRIVER), (
        "the report tests need Debian's chromium and chromedriver "
        "(apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # offline: nothing may try the network (the machine has none)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1200,900",
                "--user-data-dir=%s" % tmp_path_factory.mktemp("chromium-profile")):
        options.add_argument(arg)
    # an explicit driver path: selenium-manager is not run (it would try to download)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _by(driver, css, many=False):
    from selenium.webdriver.common.by import By
    return (driver.find_elements if many else driver.find_element)(By.CSS_SELECTOR, css)


def _png(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def _canvas(driver):
    """The viewer canvas' pixels at full resolution (readable: the layers are embedded)."""
    url = driver.execute_script("return document.getElementById('view').toDataURL('image/png')")
    return _png(base64.b64decode(url.split(",", 1)[1]))


def _wait_drawn(driver, expected):
    from selenium.webdriver.support.ui import WebDriverWait
    view = _by(driver, "#view")
    WebDriverWait(driver, 10).until(lambda d: view.get_attribute("data-drawn") == expected)


def _column(driver, index):
    return [tr.find_elements("css selector", "td")[index].text
            for tr in _by(driver, "#results tbody tr", many=True)]


def test_the_page_sorts_draws_layers_and_toggles_them(setup, browser):
    summary, out = setup["summary"], setup["out"]
    browser.get((out / "index.html").as_uri())
    assert browser.title == "protonet infer: pred"
    records = summary["images"]
    assert _column(browser, 2) == [r["image"] for r in records]     # input order at first
    page = _png(browser.get_screenshot_as_png())
    assert page.std() > 20                                          # not a blank page

    # sort by Dice: ascending, the inputs without truth last; again: descending
    _by(browser, 'th[data-key="dice"]').click()
    dices = sorted(r["dice"] for r in records if r["dice"] is not None)
    assert _column(browser, 4) == ["%.4f" % d for d in dices] + ["\u2014"] * 2
    _by(browser, 'th[data-key="dice"]').click()
    assert _column(browser, 4) == ["%.4f" % d for d in dices[::-1]] + ["\u2014"] * 2
    by_area = sorted(records, key=lambda r: r["pred_lv_pixels"])
    _by(browser, 'th[data-key="pred_px"]').click()
    assert _column(browser, 0) == [str(records.index(r) + 1) for r in by_area]

    # open the worst-scored image: image, prediction and truth drawn on the canvas
    _by(browser, 'th[data-key="dice"]').click()
    worst = min((r for r in records if r["dice"] is not None), key=lambda r: r["dice"])
    _by(browser, "#results tbody tr", many=True)[0].click()
    _wait_drawn(browser, worst["name"] + "+pred+true@100")
    assert worst["name"] in _by(browser, "#vtitle").text
    full = _canvas(browser)
    gray = viz.window_image(read_dicom(worst["file"]))
    pred = read_dicom(worst["file"]) > THRESHOLD
    true = _truth(setup["synth"], worst["case"], worst["slice"])[1]
    fill_only = pred & ~viz.mask_boundary(pred) & ~viz.mask_boundary(true)
    true_edge = viz.mask_boundary(true) & ~viz.mask_boundary(pred)
    outside = ~pred & ~viz.mask_boundary(true)
    assert full.shape == (256, 256, 3) and full.std() > 20
    assert np.all(full[true_edge] == viz.TRUE_CONTOUR)
    assert np.all(full[viz.mask_boundary(pred) & ~viz.mask_boundary(true)] == viz.PRED_CONTOUR)
    red = 0.65 * gray[fill_only] + 0.35 * 255
    assert np.abs(full[fill_only][:, 0] - red).max() <= 2            # tinted red
    assert np.abs(full[outside] - gray[outside][:, None]).max() <= 1  # gray elsewhere
    shot = _png(_by(browser, "#view").screenshot_as_png)
    assert shot.std() > 20

    # prediction off: its pixels are gray again, the truth stays
    _by(browser, "#show-pred").click()
    _wait_drawn(browser, worst["name"] + "+true@100")
    no_pred = _canvas(browser)
    assert np.abs(no_pred[fill_only] - gray[fill_only][:, None]).max() <= 1
    assert np.all(no_pred[true_edge] == viz.TRUE_CONTOUR)
    assert np.abs(_png(_by(browser, "#view").screenshot_as_png) - shot).sum() > 0

    # truth off too (key t): the plain image; opacity 0 with both on: the plain image too
    from selenium.webdriver.common.keys import Keys
    _by(browser, "body").send_keys("t")
    _wait_drawn(browser, worst["name"] + "@100")
    plain = _canvas(browser)
    assert np.abs(plain - gray[:, :, None]).max() <= 1
    _by(browser, "#show-pred").click()
    _by(browser, "#show-true").click()
    browser.execute_script("var o = document.getElementById('opacity'); o.value = 0;"
                           "o.dispatchEvent(new Event('input'));")
    _wait_drawn(browser, worst["name"] + "+pred+true@0")
    assert np.array_equal(_canvas(browser), plain)

    # next image (arrow key) in the table's order; Escape closes
    _by(browser, "body").send_keys(Keys.ARROW_RIGHT)
    second = sorted((r for r in records if r["dice"] is not None), key=lambda r: r["dice"])[1]
    _wait_drawn(browser, second["name"] + "+pred+true@0")
    _by(browser, "body").send_keys(Keys.ESCAPE)
    assert not _by(browser, "#viewer").is_displayed()


def test_a_contact_sheet_tile_opens_its_image(setup, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    out, records = setup["out"], setup["summary"]["images"]
    browser.get((out / "index.html").as_uri())
    sheet = _by(browser, "#sheet")
    natural = browser.execute_script("return arguments[0].naturalWidth", sheet)
    assert natural == np.asarray(Image.open(out / "contact_sheet.png")).shape[1]
    scale = sheet.size["width"] / natural
    tile = 5                                  # one row of 8: tile 5 is the 6th image
    x = (4 + tile * (128 + 4) + 64) * scale - sheet.size["width"] / 2
    y = (4 + 64) * scale - sheet.size["height"] / 2
    ActionChains(browser).move_to_element_with_offset(sheet, int(x), int(y)).click().perform()
    _wait_drawn(browser, records[tile]["name"] + "+pred+true@100")


def test_the_page_with_referenced_pictures_works_from_disk(setup, browser, tmp_path):
    out = tmp_path / "pred"
    infer(setup["model"], setup["weights"], setup["folders"][:1], str(out),
          contours=setup["synth"]["contours"], echo=None, embed_mb=0)
    browser.get((out / "index.html").as_uri())
    assert browser.execute_script("return document.getElementById('sheet').naturalWidth") > 0
    _by(browser, "#results tbody tr", many=True)[1].click()
    _wait_drawn(browser, "SC-HF-I-1_IM-0004-0001+pred+true@100")
    shot = _png(_by(browser, "#view").screenshot_as_png)
    assert shot.std() > 20
    reds = (shot[..., 0] > 200) & (shot[..., 1] < 120)
    greens = (shot[..., 1] > 200) & (shot[..., 0] < 80)
    assert reds.sum() > 50 and greens.sum() > 20        # both masks drawn from the files
    _by(browser, "#show-pred").click()
    _wait_drawn(browser, "SC-HF-I-1_IM-0004-0001+true@100")
    after = _png(_by(browser, "#view").screenshot_as_png)
    assert ((after[..., 0] > 200) & (after[..., 1] < 120)).sum() < reds.sum() / 10
