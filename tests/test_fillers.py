"""Fillers: Caffe's deterministic fillers value for value, random ones by distribution,
both through the parity cases (real Caffe filled those blobs) and closed forms."""
import numpy as np
import pytest

import protonet
from protonet.fillers import fill_array, FillerError
from protonet.proto import caffe_pb2
from google.protobuf import text_format

from parity import cases, load_case, build_net


def filler(text):
    return text_format.Parse(text, caffe_pb2.FillerParameter())


@pytest.mark.parametrize("name", cases("fillers"))
def test_filler_case(name):
    folder, meta, io = load_case("fillers", name)
    protonet.set_random_seed(1234)
    net = build_net(folder, meta)
    values = np.asarray(net.params[meta["layer"]][meta["blob"]].data, dtype=np.float64)
    stats = meta["stats"]
    assert list(values.shape) == stats["shape"]
    if meta["deterministic"]:
        key = "param/%s/%d" % (meta["layer"], meta["blob"])
        rtol, atol = meta["tolerance"][key]
        np.testing.assert_allclose(values, io[key], rtol=rtol, atol=atol)
        return
    n = values.size
    exp = meta["expected"]
    # Caffe's own sample and ours are both draws from one distribution: compare both
    # to the closed form where it is given, with a few standard errors of slack.
    std = values.std()
    if "std_nonzero" in exp:
        nz = values[values != 0]
        frac = nz.size / n
        assert abs(frac - exp["nonzero_fraction"]) < 5 * np.sqrt(exp["nonzero_fraction"] / n)
        assert abs(nz.std() - exp["std_nonzero"]) < 0.05 * exp["std_nonzero"]
    if "std" in exp:
        assert abs(std - exp["std"]) < 0.05 * exp["std"], (std, exp["std"])
        assert abs(stats["std"] - exp["std"]) < 0.05 * exp["std"]   # the reference agrees too
    if "mean" in exp:
        assert abs(values.mean() - exp["mean"]) < 5 * max(std, 1e-12) / np.sqrt(n)
    if "min" in exp:
        assert values.min() >= exp["min"] - 1e-6 and values.max() <= exp["max"] + 1e-6
        # a sample this large comes close to both ends of the support, as Caffe's did
        span = exp["max"] - exp["min"]
        assert values.min() < exp["min"] + 0.01 * span and values.max() > exp["max"] - 0.01 * span
    if name == "positive_unitball":
        rows = values.reshape(values.shape[0], -1)
        np.testing.assert_allclose(rows.sum(axis=1), 1.0, rtol=1e-5)
        assert values.min() >= 0


def test_fan_rules():
    # conv weights (out=8, in=4, 3x3): fan_in = 36, fan_out = 72
    protonet.set_random_seed(0)
    a = fill_array(filler('type: "xavier"'), (8, 4, 3, 3))
    assert np.abs(a).max() <= np.sqrt(3.0 / 36) + 1e-7
    b = fill_array(filler('type: "xavier" variance_norm: FAN_OUT'), (8, 4, 3, 3))
    assert np.abs(b).max() <= np.sqrt(3.0 / 72) + 1e-7
    assert np.abs(b).max() > 0.9 * np.sqrt(3.0 / 72)
    c = fill_array(filler('type: "msra" variance_norm: AVERAGE'), (400, 300))
    assert abs(c.std() - np.sqrt(2.0 / 350)) < 0.02 * np.sqrt(2.0 / 350)


def test_bilinear_closed_form():
    w = fill_array(filler('type: "bilinear"'), (2, 1, 4, 4))
    # K=4: f=2, c=0.75 -> 1-|x/2-0.75| = .25 .75 .75 .25
    row = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(w[1, 0], np.outer(row, row))


def test_unknown_filler_is_an_error():
    with pytest.raises(FillerError, match="unknown filler type 'nope'"):
        fill_array(filler('type: "nope"'), (2, 2))


@pytest.mark.parametrize("text", [
    'type: "uniform" min: -2 max: 3', 'type: "gaussian" mean: 1 std: 0.5',
    'type: "xavier"', 'type: "msra" variance_norm: AVERAGE', 'type: "gaussian" std: 1 sparse: 3',
    'type: "constant" value: 2'])
def test_big_fills_in_blocks_equal_one_draw(text, monkeypatch):
    from protonet import fillers
    from protonet.blob import Blob
    param = text_format.Parse(text, caffe_pb2.FillerParameter())
    protonet.set_random_seed(5)
    expected = fill_array(param, (10, 13), np.float32)
    monkeypatch.setattr(fillers, "FILL_BLOCK", 7)      # 130 values: 19 blocks, the last of 4
    blob = Blob((10, 13), dtype=np.float32)
    protonet.set_random_seed(5)
    fillers.fill(blob, param)
    np.testing.assert_array_equal(blob.data, expected)
    assert blob.data.std() > 0 or param.type == "constant"
