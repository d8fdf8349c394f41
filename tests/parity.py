"""Drive real-Caffe reference cases (tests/caffe_reference/parity) through protonet's Net."""
import contextlib
import json
import os
from pathlib import Path

import numpy as np

import protonet
from protonet import backend

# real Caffe 1.0 reference data and the published DIGITS assets, kept in the repo
SHARED = Path(__file__).resolve().parent / "caffe_reference"
PARITY = SHARED / "parity"


def cases(kind):
    with open(PARITY / "cases.json") as f:
        return json.load(f)[kind]


@contextlib.contextmanager
def cwd(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def load_case(kind, name):
    folder = PARITY / kind / name
    with open(folder / "meta.json") as f:
        meta = json.load(f)
    io = dict(np.load(folder / "io.npz")) if (folder / "io.npz").exists() else {}
    return folder, meta, io


def build_net(folder, meta):
    """The case's net in its NetState (stages are already in the file's state)."""
    phase = protonet.TRAIN if meta.get("phase", "TRAIN") == "TRAIN" else protonet.TEST
    weights = folder / meta["weights"] if meta.get("weights") else None
    with cwd(folder):
        net = protonet.Net(str(folder / "net.prototxt"), phase, level=meta.get("level", 0))
        if weights is not None:
            net.copy_from(str(weights))
    return net


def put(array, values):
    """``array[...] = values`` for host ``values``; a device array gets a device copy (as CuPy needs)."""
    array[...] = backend.xp_of(array).asarray(values) if backend.is_device_array(array) else values


def set_params(net, io):
    for key, value in io.items():
        if key.startswith("param/"):
            _, layer, i = key.split("/")
            put(net.params[layer][int(i)].data, value)


def check(actual, expected, tol, key):
    rtol, atol = tol
    np.testing.assert_allclose(np.asarray(backend.to_host(actual)), expected, rtol=rtol, atol=atol,
                               err_msg="parity key %s" % key)


def run_layer_case(name):
    """Forward, then (if meta says so) backward of a layers/<name> case; asserts every key."""
    folder, meta, io = load_case("layers", name)
    with cwd(folder):
        net = build_net(folder, meta)
        set_params(net, io)
        inputs = {k[3:]: v for k, v in io.items() if k.startswith("in/")}
        for k, v in inputs.items():
            net.blobs[k].reshape(v.shape)
            put(net.blobs[k].data, v)
        net.forward_from_to()
        tol = meta["tolerance"]
        checked = 0
        for key, expected in io.items():
            if key.startswith("out/"):
                check(net.blobs[key[4:]].data, expected, tol[key], key)
                checked += 1
            elif key.startswith("param_after_forward/"):
                _, layer, i = key.split("/")
                check(net.params[layer][int(i)].data, expected, tol[key], key)
                checked += 1
        if meta.get("backward"):
            # clear first: a Parameter layer's top diff *is* its param diff
            for blob in net.learnable_params:
                blob.diff[...] = 0
            for key, value in io.items():
                if key.startswith("top_diff/"):
                    put(net.blobs[key[9:]].diff, value)
            net.backward_from_to()
            for key, expected in io.items():
                if key.startswith("in_diff/"):
                    check(net.blobs[key[8:]].diff, expected, tol[key], key)
                    checked += 1
                elif key.startswith("param_diff/"):
                    _, layer, i = key.split("/")
                    check(net.params[layer][int(i)].diff, expected, tol[key], key)
                    checked += 1
    assert checked > 0
    return net


def run_net_case(name):
    folder, meta, io = load_case("nets", name)
    with cwd(folder):
        net = build_net(folder, meta)
        assert [(n, l.type) for n, l in zip(net.layer_names, net.layers)] == \
            [(l["name"], l["type"]) for l in meta["layers"]]
        assert list(net.blobs) == meta["blobs"]
        set_params(net, io)
        for key, v in io.items():
            if key.startswith("in/"):
                net.blobs[key[3:]].reshape(v.shape)
                put(net.blobs[key[3:]].data, v)
        net.forward_from_to()
        tol = meta.get("tolerance", {})
        for key, expected in io.items():
            if key.startswith("blob/"):
                check(net.blobs[key[5:]].data, expected, tol[key], key)
        if meta.get("backward"):
            net.clear_param_diffs()
            net.backward_from_to()
            tie = set(meta.get("tie_sensitive", []))
            for key, expected in io.items():
                if key.startswith("blob_diff/") and key[10:] not in tie:
                    check(net.blobs[key[10:]].diff, expected, tol[key], key)
                elif key.startswith("blob_diff_chsum/"):
                    d = np.asarray(backend.to_host(net.blobs[key[16:]].diff))
                    axes = tuple(a for a in range(d.ndim) if a != 1)
                    check(d.sum(axis=axes), expected, tol[key], key)
                elif key.startswith("param_diff/"):
                    _, layer, i = key.split("/")
                    check(net.params[layer][int(i)].diff, expected, tol[key], key)
    return net, meta


def run_layer_case_direct(name):
    """A layers/<name> case without the Net: its layers under test built and run one by one.

    float32 on NumPy; forward (each layer right after its setup, as a Net
    would), then backward in reverse order to the bottoms Caffe gave diffs
    to; asserts every key the case holds and returns how many it checked.
    """
    from protonet.blob import Blob
    from protonet.io import read_net
    from protonet.layer import create_layer

    folder, meta, io = load_case("layers", name)
    phase = protonet.TRAIN if meta["phase"] == "TRAIN" else protonet.TEST
    tol = meta["tolerance"]
    blobs = {}
    for key, value in io.items():
        if key.startswith("in/"):
            blobs[key[3:]] = Blob(value.shape, dtype=np.float32, xp=np)
            blobs[key[3:]].data[...] = value
    runs = []
    with cwd(folder):           # some layers read files named relative to the prototxt
        for lp in read_net(str(folder / "net.prototxt")).layer:
            if lp.name not in meta["layers_under_test"]:
                continue
            layer = create_layer(lp, phase, dtype=np.float32, xp=np)
            bottom = [blobs[n] for n in lp.bottom]
            top = [blobs.setdefault(n, Blob((), dtype=np.float32, xp=np)) for n in lp.top]  # in place: the bottom
            layer.check_arity(len(bottom), len(top))
            layer.setup(bottom, top)
            layer.param_propagate_down = [True] * len(layer.blobs)
            for i, p in enumerate(layer.blobs):
                p.data[...] = io["param/%s/%d" % (lp.name, i)]
            layer.reshape(bottom, top)
            layer.forward(bottom, top)
            runs.append((lp, layer, bottom, top))
    by_name = {lp.name: layer for lp, layer, _, _ in runs}
    checked = 0
    for key, expected in io.items():
        if key.startswith("out/"):
            check(blobs[key[4:]].data, expected, tol[key], key)
            checked += 1
    if meta["backward"]:
        for blob in blobs.values():
            blob.diff[...] = 0
        for key, value in io.items():
            if key.startswith("top_diff/"):
                blobs[key[9:]].diff[...] = value
        for lp, layer, bottom, top in reversed(runs):
            for p in layer.blobs:
                p.diff[...] = 0
            layer.backward(top, [layer.allow_force_backward(i) and n not in meta["no_diff_for"]
                                 for i, n in enumerate(lp.bottom)], bottom)
        for key, expected in io.items():
            if key.startswith("in_diff/"):
                check(blobs[key[8:]].diff, expected, tol[key], key)
                checked += 1
            elif key.startswith("param_diff/"):
                _, lname, i = key.split("/")
                check(by_name[lname].blobs[int(i)].diff, expected, tol[key], key)
                checked += 1
    assert checked > 0
    return checked
