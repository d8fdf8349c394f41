"""Benchmark: FCN-AlexNet (2 classes, the Sunnybrook net) forward and training iteration.

Builds the net from examples/sunnybrook/fcn_alexnet.prototxt with its Data layers
replaced by Input layers, random weights, and times on the chosen device:
  forward   one TEST-phase forward (the deploy net: no loss layer)
  train     one SGD iteration, solver.step(1): forward + backward + momentum
            update with weight decay, as `protonet train` runs it
Each measurement (mode x channels x batch) runs in its own process, so its peak
RSS is its own. Prints one JSON line per measurement: median/min/max ms over the
timed iterations (after the warm-up ones), per image, peak RSS, device, BLAS.

  python benchmarks/fcn_alexnet.py                      # C=1 and 3, batch 1, 4, 16
  python benchmarks/fcn_alexnet.py --channels 3 --batch 1 --iterations 20
  python benchmarks/fcn_alexnet.py --mode train --gpu 0
"""
import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NET = ROOT / "examples" / "sunnybrook" / "fcn_alexnet.prototxt"


def build_param(channels, batch, phase):
    from protonet.io import read_net
    from protonet.proto import caffe_pb2
    src = read_net(str(NET))
    p = caffe_pb2.NetParameter()
    p.name = src.name
    inp = p.layer.add(name="input", type="Input")
    inp.top.extend(["data", "label"])
    inp.input_param.shape.add().dim.extend([batch, channels, 256, 256])
    inp.input_param.shape.add().dim.extend([batch, 1, 256, 256])
    for layer in src.layer:
        if layer.type == "Data" or (layer.type in ("Accuracy", "Python")):
            continue
        p.layer.add().CopyFrom(layer)
    if phase == "TEST":
        # deploy-style forward: no loss layer
        keep = [l for l in p.layer if l.type != "SoftmaxWithLoss"]
        del p.layer[:]
        p.layer.extend(keep)
        p.layer[0].top.pop()
        p.layer[0].input_param.shape.pop()
    p.state.phase = caffe_pb2.TRAIN if phase == "TRAIN" else caffe_pb2.TEST
    return p


def randomize(net, seed=0):
    """He-initialised float32 weights (upscore keeps its bilinear filler)."""
    import numpy as np
    r = np.random.default_rng(seed)
    for name, blobs in net.params.items():
        if name == "upscore":
            continue
        for b in blobs:
            fan_in = max(1, int(np.prod(b.shape[1:])))
            values = r.standard_normal(b.shape, dtype=np.float32)
            values *= np.float32((2.0 / fan_in) ** 0.5)
            b.data[...] = net.xp.asarray(values)


def _stats(v):
    v = sorted(v)
    return {"median": round(v[len(v) // 2], 1), "min": round(v[0], 1), "max": round(v[-1], 1)}


def run_one(mode, channels, batch, iterations, warmup, gpu):
    import numpy as np
    import protonet
    from protonet import backend
    from protonet.log import ensure_handler
    from protonet.proto import caffe_pb2
    from protonet.solver import SGDSolver
    ensure_handler().setLevel(logging.WARNING)   # the solver's INFO lines are not part of the timing
    if gpu is not None:
        protonet.set_device(gpu)
        protonet.set_mode_gpu()
    sync = (lambda: backend.xp().cuda.Device().synchronize()) if gpu is not None else (lambda: None)
    r = np.random.default_rng(1)
    x = r.uniform(0, 255, (batch, channels, 256, 256)).astype("f4")
    y = (r.uniform(size=(batch, 1, 256, 256)) < 0.02).astype("f4")

    if mode == "forward":
        net = protonet.Net(build_param(channels, batch, "TEST"))
        randomize(net)
        net.blobs["data"].data[...] = net.xp.asarray(x)
        run = net.forward_from_to
    else:
        s = caffe_pb2.SolverParameter()
        s.train_net_param.CopyFrom(build_param(channels, batch, "TRAIN"))
        s.base_lr, s.lr_policy, s.momentum, s.weight_decay = 1e-4, "fixed", 0.9, 5e-4
        s.max_iter, s.display, s.snapshot_after_train = 10 ** 6, 0, False
        solver = SGDSolver(s)
        solver.progress = False
        solver.curve_path = None
        randomize(solver.net)
        solver.net.blobs["data"].data[...] = solver.net.xp.asarray(x)
        solver.net.blobs["label"].data[...] = solver.net.xp.asarray(y)
        run = lambda: solver.step(1)   # noqa: E731
    times = []
    for i in range(warmup + iterations):
        sync()
        t = time.perf_counter()
        run()
        sync()
        if i >= warmup:
            times.append((time.perf_counter() - t) * 1000)
    try:
        from threadpoolctl import threadpool_info
        blas = ["%s %s/%s/%s threads" % (i.get("internal_api"), i.get("version"), i.get("architecture"),
                                         i.get("num_threads"))
                for i in threadpool_info() if i.get("user_api") == "blas"]
    except ImportError:
        blas = []
    stats = _stats(times)
    device = "cpu (%s, %d cores)" % (platform.processor() or platform.machine(), os.cpu_count())
    extra = {}
    if gpu is not None:
        cp = backend.xp()
        props = cp.cuda.runtime.getDeviceProperties(gpu)
        name = props["name"]
        device = "gpu %d (%s)" % (gpu, name.decode() if isinstance(name, bytes) else name)
        # CuPy's pool keeps what the net has held at its peak: the device-side footprint
        extra = {"gpu_pool_mb": round(cp.get_default_memory_pool().total_bytes() / 2.0 ** 20, 1),
                 "cupy": cp.__version__}
    return dict({
        "net": "fcn_alexnet_2class", "mode": mode, "channels": channels, "batch": batch, "size": 256,
        "ms": stats, "ms_per_image": round(stats["median"] / batch, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "iterations": iterations, "warmup": warmup,
        "device": device,
        "numpy": np.__version__, "blas": blas,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
    }, **extra)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", nargs="*", choices=("forward", "train"), default=["forward", "train"])
    ap.add_argument("--channels", type=int, nargs="*", default=[1, 3])
    ap.add_argument("--batch", type=int, nargs="*", default=[1, 4, 16])
    ap.add_argument("--iterations", type=int, default=10, help="timed iterations (at least 10)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--gpu", type=int, default=None)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.iterations < 10:
        ap.error("--iterations must be at least 10")
    if a.one:
        print(json.dumps(run_one(a.mode[0], a.channels[0], a.batch[0], a.iterations, a.warmup, a.gpu)),
              flush=True)
        return
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for c in a.channels:
        for b in a.batch:
            for mode in a.mode:
                cmd = [sys.executable, __file__, "--one", "--mode", mode, "--channels", str(c),
                       "--batch", str(b), "--iterations", str(a.iterations), "--warmup", str(a.warmup)]
                if a.gpu is not None:
                    cmd += ["--gpu", str(a.gpu)]
                subprocess.run(cmd, check=True, env=env)


if __name__ == "__main__":
    main()
