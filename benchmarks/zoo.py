"""Benchmark: any prototxt, or Caffe's own example nets, train and forward (issue #16).

Each net is built with its data layers (Data, ImageData, HDF5Data, WindowData,
MemoryData, or a Python layer with no bottoms) replaced by one Input layer of the
batch's shape, and random weights (the prototxt's fillers; a weight that no
filler sets, as in deploy nets, gets He-scaled normal values). Modes:

  forward   one forward of the TEST-phase net (what `caffe time -phase TEST` times)
  fwd_bwd   forward + backward of the TRAIN-phase net, no update (`caffe time`'s
            "Average Forward-Backward")
  train     one training iteration, solver.step(1): forward + backward + SGD
            momentum 0.9 and weight decay, as `protonet train` runs it

Every (net, mode) runs in its own process, so its peak RSS (ru_maxrss) is its own.
Times are the median (min/max) of --iterations after --warmup. One JSON line per
measurement (ms, peak_rss_mb, BLAS as threadpoolctl sees it, OPENBLAS_CORETYPE);
--table adds a markdown summary. --caffe PATH runs `caffe time` on the same
prototxt in alternating rounds (protonet, caffe, protonet, ...) and prints the
ratios protonet/Caffe (forward: TEST-phase forward; train: protonet's fwd_bwd
against Caffe's forward-backward, since `caffe time` has no update).

  python benchmarks/zoo.py --table                        # the built-in zoo
  python benchmarks/zoo.py --nets lenet googlenet --mode train
  python benchmarks/zoo.py path/to/train_val.prototxt --input data=32,3,224,224 --input label=32
  python benchmarks/zoo.py --nets lenet --caffe ~/caffe/build/tools/caffe --rounds 3 --table
"""
import argparse
import json
import logging
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the environment as the user started the driver: `caffe time` runs in it, never with a
# setting protonet's import made (OPENBLAS_THREAD_TIMEOUT is protonet's tuning, not Caffe's)
START_ENV = dict(os.environ)
SUNNYBROOK = ROOT / "examples" / "sunnybrook"
# The zoo's net definitions live with the tests (tests/zoo_nets.py): one copy for both.
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

DATA_TYPES = ("Data", "ImageData", "HDF5Data", "WindowData", "MemoryData")


class BenchError(RuntimeError):
    pass


# ------------------------------------------------------------------ the zoo
def _googlenet_train(batch):
    """GoogLeNet's deploy net with its Softmax "prob" made a SoftmaxWithLoss on a label
    (the published train_val's two auxiliary classifiers are not in tests/zoo_nets.py)."""
    import zoo_nets
    text = zoo_nets.googlenet_deploy(batch)
    head = text.index("layer {")
    body = text[head:]
    prob = body.rindex("layer {")
    body = body[:prob] + zoo_nets.softmax_loss("loss3/classifier", name="loss3/loss3")
    return 'name: "GoogleNet"\n' + zoo_nets.input_layer(
        "data", ["data", "label"], [(batch, 3, 224, 224), (batch,)]) + body


def _zoo():
    """name -> (default batch, train text(batch), forward text(batch), input shapes(batch))."""
    import zoo_nets as z
    same = lambda f: (f, f)   # noqa: E731  train_val nets: TRAIN for train, TEST for forward
    sunny = lambda b: {"data": (b, 1, 256, 256), "label": (b, 1, 256, 256)}   # noqa: E731
    read = lambda p: (lambda b: p.read_text())   # noqa: E731
    return {
        "lenet": (64, *same(z.lenet), None),
        "cifar10_quick": (100, *same(z.cifar10_quick), None),
        "cifar10_full": (100, *same(z.cifar10_full), None),
        "caffenet": (8, *same(z.caffenet_train_val), None),
        "alexnet": (8, *same(z.alexnet_train_val), None),
        "googlenet": (4, _googlenet_train, z.googlenet_deploy, None),
        "fcn_alexnet_sunnybrook": (1, *same(read(SUNNYBROOK / "fcn_alexnet.prototxt")), sunny),
        "fcn8s_tutorial": (1, *same(read(SUNNYBROOK / "fcn8s.prototxt")), sunny),
        "voc_fcn8s": (1, lambda b: z.voc_fcn8s(train=True, weight_std=0.01),
                      lambda b: z.voc_fcn8s(), None),
    }


DEFAULT_NETS = ["lenet", "cifar10_quick", "cifar10_full", "caffenet", "googlenet",
                "fcn_alexnet_sunnybrook", "fcn8s_tutorial", "voc_fcn8s"]


# ------------------------------------------------------------------ net surgery
def _data_shapes(layer, batch, shapes):
    """The shapes of a data layer's tops: --input first, else what the layer says."""
    out = []
    for i, top in enumerate(layer.top):
        if top in shapes:
            out.append(tuple(shapes[top]))
            continue
        n = batch
        if n is None:
            for sub in ("data_param", "image_data_param", "hdf5_data_param", "window_data_param",
                        "memory_data_param"):
                if layer.HasField(sub) and getattr(getattr(layer, sub), "batch_size", 0):
                    n = getattr(layer, sub).batch_size
        if n and i > 0:
            out.append((n,))          # a label
            continue
        crop = layer.transform_param.crop_size if layer.HasField("transform_param") else 0
        mem = layer.memory_data_param if layer.type == "MemoryData" else None
        if n and mem is not None and mem.channels:
            out.append((n, mem.channels, mem.height, mem.width))
        elif n and crop:
            out.append((n, 3, crop, crop))
        else:
            raise BenchError("layer '%s' (%s): cannot tell the shape of top '%s'; give it as "
                             "--input %s=N,C,H,W" % (layer.name, layer.type, top, top))
    return out


def with_inputs(text, batch=None, shapes=None, source="<net>"):
    """NetParameter of ``text`` with every data layer replaced by an Input layer of the
    same name, tops and include rules; ``batch`` sets dim 0 of every input."""
    from protonet.io import parse_net
    shapes = dict(shapes or {})
    src = parse_net(text, source)
    if batch is not None:
        for k, v in list(shapes.items()):
            shapes[k] = (batch,) + tuple(v[1:])
    for layer in src.layer:
        is_data = layer.type in DATA_TYPES or (layer.type == "Python" and not layer.bottom)
        if layer.type == "Input" and batch is not None:
            for s, top in zip(layer.input_param.shape, layer.top):
                if top in shapes:
                    del s.dim[:]
                    s.dim.extend(shapes[top])
                elif s.dim:
                    s.dim[0] = batch
        if not is_data:
            continue
        dims = _data_shapes(layer, batch, shapes)
        keep_include = [r for r in layer.include]
        keep_exclude = [r for r in layer.exclude]
        name, tops = layer.name, list(layer.top)
        layer.Clear()
        layer.name, layer.type = name, "Input"
        layer.top.extend(tops)
        layer.include.extend(keep_include)
        layer.exclude.extend(keep_exclude)
        for d in dims:
            layer.input_param.shape.add().dim.extend(d)
    # old-style `input:` / `input_shape` headers keep their shapes; only the batch changes
    if batch is not None:
        for s in src.input_shape:
            if s.dim:
                s.dim[0] = batch
        if len(src.input_dim) >= 4:
            for i in range(0, len(src.input_dim), 4):
                src.input_dim[i] = batch
    return src


def _text_format(param):
    from google.protobuf import text_format
    return text_format.MessageToString(param)


def randomize(net, seed=0):
    """He-scaled normal values for weights no filler set (all zeros after setup)."""
    import numpy as np
    r = np.random.default_rng(seed)
    for blobs in net.params.values():
        for b in blobs[:1]:
            if len(b.shape) < 2 or net.xp.any(b.data):
                continue
            fan_in = max(1, int(np.prod(b.shape[1:])))
            scale = np.float32((2.0 / fan_in) ** 0.5)
            flat = b.data.reshape(-1)
            # a block at a time: a whole-blob draw would add its own copies to the peak RSS
            for lo in range(0, flat.size, 1 << 20):
                values = r.standard_normal(min(1 << 20, flat.size - lo), dtype=np.float32)
                values *= scale
                flat[lo:lo + values.size] = net.xp.asarray(values.astype(b.data.dtype))


def fill_inputs(net, seed=1):
    """Inputs: normal values; label-like inputs (named *label*) zeros, a valid class."""
    import numpy as np
    r = np.random.default_rng(seed)
    for name in net.inputs:
        b = net.blobs[name]
        if "label" in name:
            b.data[...] = 0
        else:
            b.data[...] = net.xp.asarray(r.standard_normal(b.data.shape).astype(b.data.dtype))


# ------------------------------------------------------------------ one measurement
def resolve(net, batch, shapes):
    """(name, train NetParameter, TEST NetParameter, batch) for a zoo name or a prototxt path."""
    zoo = _zoo()
    if net in zoo:
        default, train, fwd, sh = zoo[net]
        b = batch or default
        shapes = dict(sh(b) if sh else {}, **(shapes or {}))
        return (net, with_inputs(train(b), b, shapes, net), with_inputs(fwd(b), b, shapes, net), b)
    path = Path(net)
    if not path.exists():
        raise BenchError("%s: not a zoo net (%s) nor a prototxt file" % (net, ", ".join(zoo)))
    text = path.read_text()
    p = with_inputs(text, batch, shapes, str(path))
    if batch is None:   # the batch the net's first input has
        dims = [list(s.dim) for l in p.layer if l.type == "Input" for s in l.input_param.shape]
        dims += [list(s.dim) for s in p.input_shape] + [list(p.input_dim)]
        batch = next((d[0] for d in dims if d), None)
    return path.stem, p, p, batch


def _stats(v):
    v = sorted(v)
    return {"median": round(v[len(v) // 2], 2), "min": round(v[0], 2), "max": round(v[-1], 2)}


def blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return ["%s %s/%s/%s threads" % (i.get("internal_api"), i.get("version"), i.get("architecture"),
                                     i.get("num_threads"))
            for i in threadpool_info() if i.get("user_api") == "blas"]


def build(mode, train_param, test_param):
    """A zero-argument callable that runs one iteration of ``mode``, and its net."""
    import protonet
    from protonet.proto import caffe_pb2
    from protonet.solver import SGDSolver
    if mode == "forward":
        net = protonet.Net(test_param, protonet.TEST)
        randomize(net)
        fill_inputs(net)
        return (lambda: net.forward_from_to()), net
    if mode == "fwd_bwd":
        net = protonet.Net(train_param, protonet.TRAIN)
        randomize(net)
        fill_inputs(net)

        def run():
            net.forward_from_to()
            net.backward_from_to()
        return run, net
    s = caffe_pb2.SolverParameter()
    s.train_net_param.CopyFrom(train_param)
    s.base_lr, s.lr_policy, s.momentum, s.weight_decay = 1e-4, "fixed", 0.9, 5e-4
    s.max_iter, s.display, s.snapshot_after_train = 10 ** 6, 0, False
    solver = SGDSolver(s)
    solver.progress = False
    solver.curve_path = None
    randomize(solver.net)
    fill_inputs(solver.net)
    return (lambda: solver.step(1)), solver.net


def run_one(net, mode, batch, shapes, iterations, warmup, dump=None):
    from protonet.log import ensure_handler, quiet_net_setup
    ensure_handler().setLevel(logging.WARNING)   # the setup and solver INFO lines are not timed
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    name, train_param, test_param, b = resolve(net, batch, shapes)
    if dump:
        # what `caffe time` runs: written here, so the driver never imports protonet (a child
        # forked from a big driver would inherit its peak RSS)
        for phase, param in (("TRAIN", train_param), ("TEST", test_param)):
            (Path(dump) / ("%s_%s.prototxt" % (name, phase))).write_text(_text_format(param))
    with quiet_net_setup():
        run, _ = build(mode, train_param, test_param)
    rss_built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(warmup + iterations):
        t = time.perf_counter()
        run()
        if i >= warmup:
            times.append((time.perf_counter() - t) * 1000)
    import numpy as np
    return {
        "net": name, "mode": mode, "batch": b, "ms": _stats(times),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "rss_after_import_mb": round(rss_start / 1024.0, 1),
        "rss_after_setup_mb": round(rss_built / 1024.0, 1),
        "iterations": iterations, "warmup": warmup,
        "device": "cpu (%s, %d cores)" % (platform.processor() or platform.machine(), os.cpu_count()),
        "numpy": np.__version__, "blas": blas_info(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
    }


# ------------------------------------------------------------------ processes
def _child(cmd, env=None):
    """Run ``cmd``; (exit status, stdout, stderr, the child's own peak RSS in MB)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return p.returncode, out.read().decode(), err.read().decode(), usage.ru_maxrss / 1024.0


def protonet_child(net, mode, a, dump=None):
    cmd = [sys.executable, os.path.abspath(__file__), "--one", net, "--mode", mode,
           "--iterations", str(a.iterations), "--warmup", str(a.warmup)]
    if dump:
        cmd += ["--dump", dump]
    if a.batch:
        cmd += ["--batch", str(a.batch)]
    for spec in a.input:
        cmd += ["--input", spec]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rc, out, err, _ = _child(cmd, env)
    if rc != 0:
        raise BenchError("%s %s failed (exit %d):\n%s" % (net, mode, rc, err[-3000:]))
    return json.loads(out.strip().splitlines()[-1])


CAFFE_FWD = re.compile(r"Average Forward pass:\s*([\d.]+)\s*ms")
CAFFE_FB = re.compile(r"Average Forward-Backward:\s*([\d.]+)\s*ms")


def caffe_child(caffe, name, batch, phase, a, workdir):
    """`caffe time` on the net protonet_child wrote (Input layers); its ms and peak RSS."""
    path = Path(workdir) / ("%s_%s.prototxt" % (name, phase))
    cmd = [caffe, "time", "-model", str(path), "-phase", phase, "-iterations", str(a.iterations)]
    rc, out, err, rss = _child(cmd, START_ENV)
    text = out + err
    fwd, fb = CAFFE_FWD.search(text), CAFFE_FB.search(text)
    if rc != 0 or not fwd or not fb:
        raise BenchError("%s failed on %s (exit %d):\n%s" % (" ".join(cmd), name, rc, text[-3000:]))
    return {"net": name, "tool": "caffe", "phase": phase, "batch": batch,
            "forward_ms": float(fwd.group(1)), "forward_backward_ms": float(fb.group(1)),
            "peak_rss_mb": round(rss, 1), "iterations": a.iterations}


def _shapes(specs):
    out = {}
    for spec in specs:
        name, _, dims = spec.partition("=")
        try:
            out[name] = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise BenchError("--input %r: expected NAME=D0,D1,... (integers)" % spec)
    return out


def _median(v):
    v = sorted(v)
    return v[len(v) // 2]


def table(rows, caffe_rows):
    """Markdown: one row per net, ms and peak RSS per mode, ratios where Caffe ran."""
    by = {}
    for r in rows:
        by.setdefault((r["net"], r["batch"]), {}).setdefault(r["mode"], []).append(r)
    cf = {}
    for r in caffe_rows:
        cf.setdefault((r["net"], r["batch"]), {}).setdefault(r["phase"], []).append(r)
    lines = ["| net | batch | train ms | fwd_bwd ms | forward ms | peak RSS MB (train / forward) "
             "| Caffe fwd-bwd ms | Caffe forward ms | Caffe peak RSS MB (TRAIN / TEST) "
             "| fwd_bwd ratio | forward ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def ms(mode, d):
        return _median([r["ms"]["median"] for r in d[mode]]) if mode in d else None

    def rss(mode, d):
        return max(r["peak_rss_mb"] for r in d[mode]) if mode in d else None

    def f(x, digits=1):
        return "-" if x is None else ("%.*f" % (digits, x))
    for key, d in by.items():
        c = cf.get(key, {})
        c_fb = _median([r["forward_backward_ms"] for r in c["TRAIN"]]) if "TRAIN" in c else None
        c_fw = _median([r["forward_ms"] for r in c["TEST"]]) if "TEST" in c else None
        c_rss = [max(r["peak_rss_mb"] for r in c[p]) if p in c else None for p in ("TRAIN", "TEST")]
        fb, fw = ms("fwd_bwd", d), ms("forward", d)
        lines.append("| %s | %s | %s | %s | %s | %s / %s | %s | %s | %s / %s | %s | %s |" % (
            key[0], key[1], f(ms("train", d)), f(fb), f(fw), f(rss("train", d), 0),
            f(rss("forward", d), 0), f(c_fb), f(c_fw), f(c_rss[0], 0), f(c_rss[1], 0),
            f(fb / c_fb if fb and c_fb else None, 2), f(fw / c_fw if fw and c_fw else None, 2)))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prototxt", nargs="*", help="prototxt files to time (besides --nets)")
    ap.add_argument("--nets", nargs="*", default=None,
                    help="zoo nets (default: all of %s when no prototxt is given)" % ", ".join(DEFAULT_NETS))
    ap.add_argument("--mode", nargs="*", choices=("forward", "fwd_bwd", "train"),
                    default=None, help="default: train and forward (and fwd_bwd with --caffe)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: the net's)")
    ap.add_argument("--input", action="append", default=[], metavar="NAME=D0,D1,...",
                    help="the shape of a data layer's top (for prototxt with Data layers)")
    ap.add_argument("--iterations", type=int, default=10, help="timed iterations (default 10)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds per net (default 1)")
    ap.add_argument("--caffe", metavar="PATH", help="a Caffe binary: also run `caffe time`")
    ap.add_argument("--table", action="store_true", help="print a markdown table at the end")
    ap.add_argument("--one", metavar="NET", help=argparse.SUPPRESS)
    ap.add_argument("--dump", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    try:
        if a.one:
            print(json.dumps(run_one(a.one, a.mode[0], a.batch, _shapes(a.input), a.iterations,
                                     a.warmup, a.dump)), flush=True)
            return 0
        nets = list(a.nets if a.nets is not None else ([] if a.prototxt else DEFAULT_NETS))
        nets += a.prototxt
        for n in nets:
            if n not in _zoo() and not Path(n).exists():
                raise BenchError("%s: not a zoo net (%s) nor a prototxt file" % (n, ", ".join(_zoo())))
        modes = a.mode or (["train", "fwd_bwd", "forward"] if a.caffe else ["train", "forward"])
        rows, caffe_rows = [], []
        with tempfile.TemporaryDirectory() as work:
            for n in nets:
                for _ in range(a.rounds):
                    for mode in modes:
                        r = protonet_child(n, mode, a, work if a.caffe else None)
                        rows.append(r)
                        print(json.dumps(r), flush=True)
                        if a.caffe and mode in ("fwd_bwd", "forward"):
                            c = caffe_child(a.caffe, r["net"], r["batch"],
                                            "TRAIN" if mode == "fwd_bwd" else "TEST", a, work)
                            caffe_rows.append(c)
                            print(json.dumps(c), flush=True)
        if a.table:
            print()
            print(table(rows, caffe_rows))
    except BenchError as e:
        print("zoo.py: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
