"""random_seed: a seeded protonet run draws what a seeded Caffe run draws.

The 32 real-Caffe cases in tests/caffe_reference/parity/seeded (see the
"seeded/" section of its README): fillers, whole nets, Dropout masks, the
Data and ImageData layers' crops, mirrors and shuffles, and a Solver's
random_seed, each run as its meta["procedure"] says, in its folder, after a
fresh set_random_seed. Random values must match bit for bit (meta tolerance
[0, 0]); the draw counts must match Caffe's too.
"""
import hashlib

import numpy as np
import pytest

import caffe
import protonet
from protonet import rng

from parity import cases, cwd, load_case

CASES = cases("seeded")


def assert_bits(actual, expected, key):
    """Bit-for-bit equality (-0.0 differs from 0.0), or the case's tolerance."""
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, (key, actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (key, actual.dtype, expected.dtype)
    if expected.dtype.kind == "f":
        width = {4: np.uint32, 8: np.uint64}[expected.dtype.itemsize]
        bad = np.flatnonzero(actual.view(width).ravel() != expected.view(width).ravel())
        assert not len(bad), "%s: %d of %d values differ, first at %d: %r vs %r" % (
            key, len(bad), expected.size, bad[0], actual.ravel()[bad[0]], expected.ravel()[bad[0]])
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=key)


def check(actual, expected, meta, key):
    rtol, atol = meta["tolerance"].get(key, [0, 0])
    if rtol == 0 and atol == 0:
        assert_bits(actual, expected, key)
    else:
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=key)


def host(blob):
    data = blob.data
    return data.get() if hasattr(data, "get") else np.asarray(data)


def test_the_32_cases_are_all_here():
    assert len(CASES) == 32
    types = {load_case("seeded", name)[1]["type"] for name in CASES}
    assert types == {"filler", "net", "dropout", "data", "imagedata", "solver"}


@pytest.mark.parametrize("name", CASES)
def test_generator_first_outputs(name):
    _, meta, _ = load_case("seeded", name)
    g = rng.Mt19937(meta["random_seed"])
    assert g.raw(4).tolist() == meta["mt19937_first_outputs"]
    for entry in meta.get("main_stream_draws", []):
        assert entry["value"] == int(rng.Mt19937(meta["random_seed"]).raw(entry["draw"] + 1)[-1])


def _run_filler(folder, meta, io):
    dtype = np.float64 if meta["dtype"] == "float64" else np.float32
    protonet.set_random_seed(meta["random_seed"])
    net = protonet.Net("net.prototxt", protonet.TRAIN, dtype=dtype)
    assert rng.get_rng().draws == meta["mt19937_draws"]
    for key, expected in io.items():
        _, layer, i = key.split("/")
        check(host(net.params[layer][int(i)]), expected, meta, key)


def _run_net(folder, meta, io):
    caffe.set_random_seed(meta["random_seed"])
    net = caffe.Net("net.prototxt", caffe.TRAIN)
    if meta["case"] == "lenet_twice":
        assert rng.get_rng().draws == meta["mt19937_draws"]["net1"]
        for key, digest in meta["sha256_net1"].items():
            _, layer, i = key.split("/")
            data = np.ascontiguousarray(net.params[layer][int(i)].data, dtype="<f4")
            assert hashlib.sha256(data.tobytes()).hexdigest() == digest, key
        net = caffe.Net("net.prototxt", caffe.TRAIN)    # continues the stream
        assert rng.get_rng().draws == meta["mt19937_draws"]["net1+net2"]
        for key, digest in meta["sha256"].items():
            _, layer, i = key.split("/")
            data = np.ascontiguousarray(net.params[layer][int(i)].data, dtype="<f4")
            assert hashlib.sha256(data.tobytes()).hexdigest() == digest, key
    else:
        assert rng.get_rng().draws == meta["mt19937_draws"]
    for key, expected in io.items():
        part, layer, i = key.split("/")
        values = net.params[layer][int(i)].data
        if part == "param_head":
            values = values[:expected.shape[0]]
        elif part == "param_tail":
            values = values[-expected.shape[0]:]
        check(values, expected, meta, key)


def _run_dropout(folder, meta, io):
    caffe.set_random_seed(meta["random_seed"])
    net = caffe.Net("net.prototxt", caffe.TRAIN)
    assert rng.get_rng().draws == 0          # nothing drawn at construction
    outs = {k: [] for k in io if k.startswith(("out/", "mask/"))}
    for _ in range(meta["forward_passes"]):
        for key, value in io.items():
            if key.startswith("in/"):
                net.blobs[key[3:]].data[...] = value
        net.forward()
        for key in outs:
            top = net.blobs[key.split("/", 1)[1]].data
            outs[key].append(top.copy() if key.startswith("out/") else (top != 0).astype(np.uint8))
    assert rng.get_rng().draws == meta["mt19937_draws"]
    for key, values in outs.items():
        check(np.stack(values), io[key], meta, key)


def _transform_draws(seed, h, w, crop, mirror, items):
    """The crop/mirror draws of the transformer generator mt19937(seed), item by item."""
    g = rng.Mt19937(seed)
    out = {"mirror": [], "h_off": [], "w_off": []}
    for _ in range(items):
        out["mirror"].append(g.rand() % 2 if mirror else -1)
        out["h_off"].append(g.rand() % (h - crop + 1) if crop else -1)
        out["w_off"].append(g.rand() % (w - crop + 1) if crop else -1)
    return out


def _run_data(folder, meta, io):
    caffe.set_random_seed(meta["random_seed"])
    net = caffe.Net("net.prototxt", caffe.TRAIN)
    draws_at_setup = [d["value"] for d in meta["main_stream_draws"]]
    g = rng.Mt19937(meta["random_seed"])
    assert g.raw(len(draws_at_setup)).tolist() == draws_at_setup
    # the layer made just these draws; a following filler starts right after them
    at_setup = meta.get("mt19937_draws", len(draws_at_setup))
    assert rng.get_rng().draws == at_setup
    outs = {"out/data": [], "out/label": []}
    for _ in range(meta["forward_passes"]):
        net.forward()
        outs["out/data"].append(net.blobs["data"].data.copy())
        outs["out/label"].append(net.blobs["label"].data.copy())
    assert rng.get_rng().draws == at_setup      # forwards draw on the transformer's generator
    for key, values in outs.items():
        check(np.stack(values), io[key], meta, key)
    for key, expected in io.items():
        if key.startswith("param/"):
            _, layer, i = key.split("/")
            check(net.params[layer][int(i)].data, expected, meta, key)
    # the draws Caffe's transformer made, recovered from its output, are
    # mt19937(transformer seed) read item by item: mirror, h_off, w_off
    if meta["mirror"] or meta["crop_size"]:
        # the transformer's generator is seeded by the draw before the thread's seed
        seed = meta["main_stream_draws"][-2]["value"]
        record = next(v for k, v in io.items() if k.startswith("record/") and k.endswith("/data"))
        passes, batch = io["draw/mirror"].shape
        model = _transform_draws(seed, record.shape[2], record.shape[3], meta["crop_size"],
                                 meta["mirror"], passes * batch)
        for part in ("mirror", "h_off", "w_off"):
            np.testing.assert_array_equal(np.reshape(model[part], (passes, batch)),
                                          io["draw/" + part], err_msg=part)
    return net


def _run_imagedata(folder, meta, io):
    net = _run_data(folder, meta, io)
    labels = np.concatenate(io["out/label"]).astype(int)
    n = len(meta["epoch_orders"][0])
    assert labels[:n].tolist() == meta["epoch_orders"][0]
    assert labels[n:2 * n].tolist() == meta["epoch_orders"][1]
    return net


def _run_solver(folder, meta, io):
    solver = caffe.SGDSolver("solver.prototxt")     # random_seed: 301
    assert rng.get_seed() == meta["random_seed"]
    assert rng.get_rng().draws == meta["mt19937_draws"]["train+test nets"]
    for key, expected in io.items():
        if key.startswith("param/"):
            _, layer, i = key.split("/")
            check(solver.net.params[layer][int(i)].data, expected, meta, key)
    recorded = {"blob/conv1": [], "blob/drop1": [], "mask/drop1": []}
    for _ in range(meta["steps"]):
        solver.net.blobs["data"].data[...] = io["in/data"]
        solver.net.blobs["label"].data[...] = io["in/label"]
        solver.step(1)
        recorded["blob/conv1"].append(solver.net.blobs["conv1"].data.copy())
        recorded["blob/drop1"].append(solver.net.blobs["drop1"].data.copy())
        recorded["mask/drop1"].append((solver.net.blobs["drop1"].data != 0).astype(np.uint8))
    assert rng.get_rng().draws == meta["mt19937_draws"]["after steps"]
    for key, values in recorded.items():
        check(np.stack(values), io[key], meta, key)
    # The test net drew its own fillers after the train net (Caffe's test_param/*);
    # Solver::Init is: seed, build the train net, build the test net.
    caffe.set_random_seed(meta["random_seed"])
    caffe.Net("net.prototxt", caffe.TRAIN)
    test_net = caffe.Net("net.prototxt", caffe.TEST)
    for key, expected in io.items():
        if key.startswith("test_param/"):
            _, layer, i = key.split("/")
            check(test_net.params[layer][int(i)].data, expected, meta, key)


RUNNERS = {"filler": _run_filler, "net": _run_net, "dropout": _run_dropout, "data": _run_data,
           "imagedata": _run_imagedata, "solver": _run_solver}


@pytest.mark.parametrize("name", CASES)
def test_seeded_case(name):
    folder, meta, io = load_case("seeded", name)
    with cwd(folder):
        RUNNERS[meta["type"]](folder, meta, io)
