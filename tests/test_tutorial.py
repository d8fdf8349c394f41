"""The README's main command at reduced size: every promised file, and it learns."""
import json
import os

import numpy as np
from PIL import Image

from protonet.cli import main
from protonet.viz import dice


def test_tutorial_small_run_learns_and_writes_everything(tmp_path, capsys):
    out = tmp_path / "tut"
    # an earlier run's snapshot: --force deletes it, so it cannot pass for this run's
    (out / "train").mkdir(parents=True)
    (out / "train" / "snapshot_iter_999.caffemodel").write_bytes(b"stale")
    status = main(["tutorial", "--out", str(out), "--cases", "6", "--images-per-case", "6",
                   "--epochs", "4", "--seed", "3", "--force"])
    assert status == 0
    assert not (out / "train" / "snapshot_iter_999.caffemodel").exists()
    printed = capsys.readouterr().out
    assert "for 4 epochs" in printed and "1 val case" in printed
    assert (out / "dataset" / "preview" / "contact_sheet.png").exists()
    summary = json.loads((out / "summary.json").read_text())
    # every promised file exists and is readable
    for key in ("weights", "solver", "training_curve", "contact_sheet", "report"):
        assert os.path.getsize(summary[key]) > 0, key
        assert summary[key] in printed or key in ("weights", "solver")
    Image.open(summary["training_curve"]).verify()
    Image.open(summary["contact_sheet"]).verify()
    assert summary["report"] == str(out / "inference" / "index.html")
    assert (out / "train" / "train_val.prototxt").exists()
    assert list((out / "train").glob("snapshot_iter_*.solverstate"))
    inference = json.loads((out / "inference" / "summary.json").read_text())
    records = inference["images"]
    assert len(records) == summary["entries"]["val"] > 0
    # Dice in the summary equals Dice recomputed from the saved masks and the labels
    from protonet.data.db import LMDBReader
    from protonet.data.datum import datum_to_array
    from protonet.proto import caffe_pb2
    labels = {}
    reader = LMDBReader(str(out / "dataset" / "val_db" / "labels"))
    for key, value in reader.items():
        labels[key.decode()] = datum_to_array(caffe_pb2.Datum.FromString(value))[0] > 0
    reader.close()
    recomputed = []
    entries = {e["key"]: e for e in json.loads((out / "dataset" / "summary.json").read_text())
               ["entries"] if e["split"] == "val"}
    for rec in records:
        # named by case and image (the dataset's summary.json), not by LMDB key
        image = os.path.splitext(os.path.basename(entries[rec["key"]]["dicom"]))[0]
        assert rec["name"] == "%s_%s" % (entries[rec["key"]]["case"], image)
        assert rec["pred_lv_mm2"] is not None
        overlay = Image.open(out / "inference" / rec["overlay"])
        mask = np.asarray(Image.open(out / "inference" / rec["mask"])) > 0
        assert overlay.size == (256, 256) and mask.shape == (256, 256)
        d = dice(mask, labels[rec["key"]])
        assert abs(d - rec["dice"]) < 1e-6
        recomputed.append(d)
    assert abs(np.mean(recomputed) - inference["mean_dice"]) < 1e-6
    # it learns: all-background scores 0 on every image (each has an LV); a trained net far more
    assert summary["final_validation_dice"] > 0.5
    assert inference["mean_dice"] > 0.5
    # TensorBoard: it says how to look, and the events hold Dice, the overlays and the prototxts
    assert "tensorboard --logdir %s" % out in printed
    assert summary["tensorboard"] == str(out / "train")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(summary["tensorboard"], size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    dice_events = [(e.step, e.value) for e in acc.Scalars("test/dice")]
    assert [(s, v) for s, v in dice_events if s > 0] == \
        [(s, float(np.float32(v))) for s, v in summary["validation_dice_per_epoch"]]
    assert dice_events[0][0] == 0                   # DIGITS tests before training too
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(summary["iterations"]))
    shown = min(4, summary["entries"]["val"])      # the first 4 validation images, or all
    assert sorted(acc.Tags()["images"]) == ["test/overlay_%d" % j for j in range(shown)]
    for j in range(shown):
        shots = acc.Images("test/overlay_%d" % j)
        assert [e.step for e in shots] == [s for s, _ in dice_events]
        assert (shots[0].width, shots[0].height) == (256, 256)
    assert {"solver/text_summary", "net/text_summary"} <= set(acc.Tags()["tensors"])
    # the PNG curve's history, with the epoch known
    history = json.loads((out / "train" / "snapshot_curve.json").read_text())
    assert history["train"]["iter"] == list(range(summary["iterations"]))
    assert history["iters_per_epoch"] == summary["iterations"] / 4


def test_tutorial_runs_on_the_gpu_path(tmp_path, capsys, device):
    # --gpu 0 on the CuPy stand-in (a real GPU with PROTONET_TEST_DEVICE=cupy): the main job's
    # training and segmentation run on device arrays through the kernels
    from protonet import backend
    backend.set_mode_cpu()
    out = tmp_path / "tut"
    status = main(["tutorial", "--out", str(out), "--cases", "5", "--images-per-case", "2",
                   "--epochs", "1", "--seed", "3", "--gpu", "0"])
    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == "gpu 0" and summary["iterations"] > 0
    assert device.launch_counts["pn_im2col"] > 0 and device.launch_counts["pn_max_pool_backward"] > 0
    assert summary["inference_mean_dice"] is not None
    assert backend.mode() == "cpu"              # the caller's mode is restored
