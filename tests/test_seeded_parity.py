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
    # Solver::Init is: seed, build the train net, build the test net; the test net keeps its
    # own fill (Caffe's test_param/*) until it first tests
    for key, expected in io.items():
        kind, layer, i = key.split("/") if key.count("/") == 2 else (None, None, None)
        if kind == "param":
            check(solver.net.params[layer][int(i)].data, expected, meta, key)
        elif kind == "test_param":
            check(solver.test_nets[0].params[layer][int(i)].data, expected, meta, key)
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


RUNNERS = {"filler": _run_filler, "net": _run_net, "dropout": _run_dropout, "data": _run_data,
           "imagedata": _run_imagedata, "solver": _run_solver}


@pytest.mark.parametrize("name", CASES)
def test_seeded_case(name):
    folder, meta, io = load_case("seeded", name)
    with cwd(folder):
        RUNNERS[meta["type"]](folder, meta, io)


# -- a seeded training run from scratch ------------------------------------------------------

TRAIN_NET = """name: "seeded_train"
layer { name: "data" type: "Data" top: "data" top: "label"
  transform_param { crop_size: 5 mirror: true }
  data_param { source: "%s" batch_size: 4 backend: LMDB } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3
    weight_filler { type: "xavier" } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "drop" type: "Dropout" bottom: "conv" top: "drop" dropout_param { dropout_ratio: 0.5 } }
layer { name: "ip" type: "InnerProduct" bottom: "drop" top: "ip"
  inner_product_param { num_output: 5 weight_filler { type: "msra" }
    bias_filler { type: "constant" value: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def _train_from_scratch(tmp_path, steps):
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    initial = {name: [b.data.copy() for b in blobs] for name, blobs in solver.net.params.items()}
    run = {"data": [], "keep": [], "conv": [], "loss": []}
    for _ in range(steps):
        solver.step(1)
        run["data"].append(solver.net.blobs["data"].data.copy())
        run["conv"].append(solver.net.blobs["conv"].data.copy())
        run["keep"].append(solver.net.blobs["drop"].data != 0)
        run["loss"].append(float(solver.net.blobs["loss"].data))
    final = {name: [b.data.copy() for b in blobs] for name, blobs in solver.net.params.items()}
    return initial, run, final, rng.get_rng().draws


def test_a_seeded_training_run_from_scratch_draws_as_caffe(tmp_path):
    """Data (random crop + mirror) -> conv -> Dropout -> ip, from random_seed, 4 steps.

    The reference is the README's model of Caffe's stream (every step of it pinned by
    the real-Caffe cases above): the Data layer's three set-up draws, the fillers layer by
    layer, then one Dropout mask per step; the crops and mirrors come from the
    transformer's generator, item by item.
    """
    from protonet.data import array_to_datum
    from protonet.data.db import write_lmdb
    records = list(np.random.default_rng(0).integers(0, 256, (6, 3, 8, 10), dtype=np.uint8))
    write_lmdb(str(tmp_path / "db"), [array_to_datum(a, i % 5) for i, a in enumerate(records)])
    (tmp_path / "net.prototxt").write_text(TRAIN_NET % (tmp_path / "db"))
    (tmp_path / "solver.prototxt").write_text(
        'net: "%s" base_lr: 0.05 momentum: 0.9 lr_policy: "fixed" max_iter: 10 display: 0 '
        'snapshot_after_train: false solver_mode: CPU random_seed: 77' % (tmp_path / "net.prototxt"))
    steps = 4
    initial, run, final, draws = _train_from_scratch(tmp_path, steps)

    g = rng.Mt19937(77)
    g.rand()                                   # BaseDataLayer::LayerSetUp's InitRand (replaced)
    transformer = rng.Mt19937(g.rand())        # BasePrefetchingDataLayer's InitRand
    g.rand()                                   # the prefetch thread's seed
    scale = np.sqrt(np.float32(3) / np.float32(27))
    expected = {"conv": [g.uniform(108, -scale, scale).reshape(4, 3, 3, 3),
                         g.gaussian(4, 0, np.float32(0.1))],
                "ip": [g.gaussian(5 * 36, 0, np.sqrt(np.float32(2) / np.float32(36))).reshape(5, 36),
                       np.full(5, 0.1, np.float32)]}
    for name, blobs in expected.items():
        for i, values in enumerate(blobs):
            assert_bits(initial[name][i], values, "param/%s/%d" % (name, i))
    item = 0
    for step in range(steps):
        keep = g.bernoulli(4 * 4 * 3 * 3, 1.0 - np.float64(np.float32(0.5)))
        assert (run["conv"][step] != 0).all()     # so drop != 0 is the mask
        np.testing.assert_array_equal(run["keep"][step].ravel(), keep)
        for n in range(4):
            mirror = transformer.rand() % 2
            h, w = transformer.rand() % 4, transformer.rand() % 6
            crop = records[item % 6][:, h:h + 5, w:w + 5].astype(np.float32)
            np.testing.assert_array_equal(run["data"][step][n], crop[:, :, ::-1] if mirror else crop)
            item += 1
    assert draws == g.draws
    # and the run repeats itself, loss for loss and weight for weight
    again_initial, again, again_final, again_draws = _train_from_scratch(tmp_path, steps)
    assert again["loss"] == run["loss"] and again_draws == draws
    for name in final:
        for a, b in zip(final[name], again_final[name]):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(final["ip"][0], initial["ip"][0])


RECURRENT_NET = """name: "r"
layer { name: "in" type: "Input" top: "x" top: "cont"
  input_param { shape { dim: 3 dim: 2 dim: 4 } shape { dim: 3 dim: 2 } } }
layer { name: "rec" type: "%s" bottom: "x" bottom: "cont" top: "h"
  recurrent_param { num_output: 5 weight_filler { type: "uniform" min: -0.2 max: 0.3 }
    bias_filler { type: "gaussian" std: 0.5 } } }
"""


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_recurrent_layers_draw_as_their_unrolled_nets(tmp_path, kind):
    # Caffe builds an unrolled net: its per-step InnerProducts (RNN: W_hh_h_{t-1} and
    # W_ho_h_t, LSTM: transform_t) each fill their blobs before sharing step 1's, so
    # the stream moves on by T fills of them; the layer keeps step 1's values
    (tmp_path / "net.prototxt").write_text(RECURRENT_NET % kind)
    protonet.set_random_seed(21)
    net = protonet.Net(str(tmp_path / "net.prototxt"), protonet.TRAIN)
    g = rng.Mt19937(21)
    H, D, T = 5, 4, 3
    lo, hi = np.float32(-0.2), np.float32(0.3)
    G = H if kind == "RNN" else 4 * H
    expected = [g.uniform(G * D, lo, hi).reshape(G, D), g.gaussian(G, 0, np.float32(0.5))]
    for t in range(T):
        if kind == "RNN":
            step = [g.uniform(H * H, lo, hi).reshape(H, H), g.uniform(H * H, lo, hi).reshape(H, H),
                    g.gaussian(H, 0, np.float32(0.5))]
        else:
            step = [g.uniform(G * H, lo, hi).reshape(G, H)]
        if t == 0:
            expected += step
    params = net.params["rec"]
    assert len(params) == len(expected)
    for i, values in enumerate(expected):
        assert_bits(params[i].data, values, "param/rec/%d" % i)
    assert rng.get_rng().draws == g.draws


def test_each_rank_seeds_with_random_seed_plus_its_rank():
    from protonet import comm
    from protonet.solver import SGDSolver

    folder, meta, _ = load_case("seeded", "solver_seed")
    with cwd(folder):
        comm.set_solver_count(3)
        comm.set_solver_rank(2)
        try:
            solver = SGDSolver("solver.prototxt")
        finally:
            comm.set_solver_rank(0)
            comm.set_solver_count(1)
        assert rng.get_seed() == meta["random_seed"] + 2
        caffe.set_random_seed(meta["random_seed"] + 2)
        net = caffe.Net("net.prototxt", caffe.TRAIN)
    assert_bits(solver.net.params["conv1"][0].data, net.params["conv1"][0].data, "conv1")
