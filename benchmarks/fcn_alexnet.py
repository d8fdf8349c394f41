"""Benchmark: FCN-AlexNet (2 classes, the Sunnybrook net) forward and training iteration.

Builds the net from examples/sunnybrook/fcn_alexnet.prototxt with its Data layers
replaced by Input layers, random weights, and times on the chosen device:
  forward   one TEST-phase forward
  train     one SGD iteration: forward + backward + momentum update with weight decay
Each configuration runs in its own process so its peak RSS is its own. Prints one
JSON line per configuration (median/min/max ms over the timed iterations).

  python benchmarks/fcn_alexnet.py                      # C=1 and 3, batch 1, 4, 16
  python benchmarks/fcn_alexnet.py --channels 3 --batch 1 --iterations 20
  python benchmarks/fcn_alexnet.py --gpu 0
"""
import argparse
import json
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
    import numpy as np
    r = np.random.default_rng(seed)
    for name, blobs in net.params.items():
        if name == "upscore":
            continue                    # keeps its bilinear filler
        for b in blobs:
            fan_in = max(1, int(np.prod(b.shape[1:])))
            b.data[...] = net.xp.asarray(r.normal(0, (2.0 / fan_in) ** 0.5, b.shape).astype("f4"))


def run_one(channels, batch, iterations, warmup, gpu):
    import numpy as np
    import protonet
    from protonet import backend
    from protonet.proto import caffe_pb2
    from protonet.solver import SGDSolver
    if gpu is not None:
        protonet.set_device(gpu)
        protonet.set_mode_gpu()
    sync = (lambda: backend.xp().cuda.Device().synchronize()) if gpu is not None else (lambda: None)
    r = np.random.default_rng(1)
    x = r.uniform(0, 255, (batch, channels, 256, 256)).astype("f4")
    y = (r.uniform(size=(batch, 1, 256, 256)) < 0.02).astype("f4")

    test = protonet.Net(build_param(channels, batch, "TEST"))
    randomize(test)
    test.blobs["data"].data[...] = test.xp.asarray(x)
    fwd = []
    for i in range(warmup + iterations):
        sync()
        t = time.perf_counter()
        test.forward_from_to()
        sync()
        if i >= warmup:
            fwd.append((time.perf_counter() - t) * 1000)
    del test

    s = caffe_pb2.SolverParameter()
    s.train_net_param.CopyFrom(build_param(channels, batch, "TRAIN"))
    s.base_lr, s.lr_policy, s.momentum, s.weight_decay = 1e-4, "fixed", 0.9, 5e-4
    s.max_iter, s.display, s.snapshot_after_train = 10 ** 6, 0, False
    solver = SGDSolver(s)
    randomize(solver.net)
    solver.net.blobs["data"].data[...] = solver.net.xp.asarray(x)
    solver.net.blobs["label"].data[...] = solver.net.xp.asarray(y)
    train = []
    for i in range(warmup + iterations):
        sync()
        t = time.perf_counter()
        solver.step(1)
        sync()
        if i >= warmup:
            train.append((time.perf_counter() - t) * 1000)

    def stats(v):
        v = sorted(v)
        return {"median": round(v[len(v) // 2], 1), "min": round(v[0], 1), "max": round(v[-1], 1)}
    try:
        from threadpoolctl import threadpool_info
        blas = ["%s/%s/%s threads" % (i.get("internal_api"), i.get("architecture"), i.get("num_threads"))
                for i in threadpool_info() if i.get("user_api") == "blas"]
    except ImportError:
        blas = []
    return {
        "net": "fcn_alexnet_2class", "channels": channels, "batch": batch, "size": 256,
        "forward_ms": stats(fwd), "train_iter_ms": stats(train),
        "forward_ms_per_image": round(stats(fwd)["median"] / batch, 1),
        "train_ms_per_image": round(stats(train)["median"] / batch, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "iterations": iterations,
        "device": ("gpu %d" % gpu) if gpu is not None else "cpu (%s, %d cores)" % (
            platform.processor() or platform.machine(), os.cpu_count()),
        "blas": blas, "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, nargs="*", default=[1, 3])
    ap.add_argument("--batch", type=int, nargs="*", default=[1, 4, 16])
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--gpu", type=int, default=None)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_one(a.channels[0], a.batch[0], a.iterations, a.warmup, a.gpu)), flush=True)
        return
    for c in a.channels:
        for b in a.batch:
            # fewer timed iterations for big batches keeps the run short; never below 10
            cmd = [sys.executable, __file__, "--one", "--channels", str(c), "--batch", str(b),
                   "--iterations", str(a.iterations), "--warmup", str(a.warmup)]
            if a.gpu is not None:
                cmd += ["--gpu", str(a.gpu)]
            env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            subprocess.run(cmd, check=True, env=env)


if __name__ == "__main__":
    main()
