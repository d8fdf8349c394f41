"""Benchmark: data-parallel FCN-AlexNet training (57M parameters) over MPI.

Runs, each in its own processes, at the same total batch (2 x --batch):

  single     1 rank x --threads 2 BLAS threads, batch 2B    (one process, both cores)
  layerwise  2 ranks x 1 thread, batch B each, mpiexec      (layer_wise_reduce: true)
  blocking   2 ranks x 1 thread, batch B each, mpiexec      (layer_wise_reduce: false)
  allreduce  2 ranks: the reduction alone, all 57M gradients (no compute)

and prints one JSON line per configuration: ms per iteration (median, min,
max), images/s, and for the ranks the ms per iteration spent waiting for the
reduction after backward (``wait_ms``) and backward's own time
(``backward_ms``). The reduction's cost is the ``allreduce`` line; what
``layerwise`` hides of it behind backward is ``allreduce - wait`` (and
``blocking`` shows it unhidden). Last, a summary line: the 2-rank
throughput against the single process's (goal >= 0.85).

  python benchmarks/parallel.py                      # batch 1 per rank, 10 iterations
  python benchmarks/parallel.py --batch 2 --iterations 20
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))


def _stats(v):
    v = sorted(v)
    return {"median": round(v[len(v) // 2], 1), "min": round(v[0], 1), "max": round(v[-1], 1)}


def worker(batch, iterations, warmup, layer_wise, ranks):
    """One rank (or the single process): time solver.step(1) on FCN-AlexNet."""
    import logging
    import numpy as np
    from fcn_alexnet import build_param, randomize
    from protonet import comm
    from protonet.log import ensure_handler
    from protonet.parallel import DataParallel
    from protonet.proto import caffe_pb2
    from protonet.solver import SGDSolver
    ensure_handler().setLevel(logging.WARNING)
    link = comm.MPIComm() if ranks > 1 else None
    s = caffe_pb2.SolverParameter()
    s.train_net_param.CopyFrom(build_param(3, batch, "TRAIN"))
    s.base_lr, s.lr_policy, s.momentum, s.weight_decay = 1e-4, "fixed", 0.9, 5e-4
    s.max_iter, s.display, s.snapshot_after_train = 10 ** 6, 0, False
    s.layer_wise_reduce = layer_wise
    solver = SGDSolver(s)
    solver.progress = False
    randomize(solver.net)
    strategy = None
    if link is not None:
        strategy = DataParallel(link)
        solver.parallel = strategy
    r = np.random.default_rng(1 + (link.rank if link else 0))
    solver.net.blobs["data"].data[...] = r.uniform(0, 255, (batch, 3, 256, 256)).astype("f4")
    solver.net.blobs["label"].data[...] = (r.uniform(size=(batch, 1, 256, 256)) < 0.02).astype("f4")
    marks = {}
    net = solver.net
    top = len(net.layer_names) - 1
    net.before_backward_hooks.append(lambda li: marks.setdefault("b0", time.perf_counter())
                                     if li == top else None)
    net.after_backward_hooks.append(lambda li: marks.__setitem__("b1", time.perf_counter())
                                    if li == 0 else None)
    times, waits, backs = [], [], []
    for i in range(warmup + iterations):
        if link is not None:
            link.barrier()
        marks.clear()
        before = strategy.reduce_seconds if strategy else 0.0
        t = time.perf_counter()
        solver.step(1)
        if i >= warmup:
            times.append((time.perf_counter() - t) * 1000)
            waits.append(((strategy.reduce_seconds if strategy else 0.0) - before) * 1000)
            backs.append((marks["b1"] - marks["b0"]) * 1000)
    out = {"ms": _stats(times), "wait_ms": _stats(waits), "backward_ms": _stats(backs)}
    if link is None or link.rank == 0:
        print(json.dumps(out), flush=True)


def allreduce_only(iterations):
    """The reduction alone: every FCN-AlexNet gradient, in the solver's groups, no compute."""
    import numpy as np
    from fcn_alexnet import build_param
    import protonet
    from protonet import comm
    link = comm.MPIComm()
    net = protonet.Net(build_param(3, 1, "TRAIN"))
    grads = [np.ones(b.shape, np.float32) for b in net.learnable_params]
    times = []
    for i in range(2 + iterations):
        link.barrier()
        t = time.perf_counter()
        link.allreduce_start(grads).wait()
        if i >= 2:
            times.append((time.perf_counter() - t) * 1000)
    if link.rank == 0:
        count = sum(g.size for g in grads)
        print(json.dumps({"ms": _stats(times), "params": count,
                          "MB": round(count * 4 / 2 ** 20, 1)}), flush=True)


def run(cmd, threads, label, extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result.update({"config": label}, **extra)
    print(json.dumps(result), flush=True)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1, help="batch per rank (default 1)")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="BLAS threads of the single process")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--allreduce", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ranks", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--layer-wise", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a.batch, a.iterations, a.warmup, bool(a.layer_wise), a.ranks)
    if a.allreduce:
        return allreduce_only(a.iterations)
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    mpiexec = mpiexec if os.path.exists(mpiexec) else shutil.which("mpiexec")
    me = [sys.executable, __file__, "--iterations", str(a.iterations), "--warmup", str(a.warmup)]
    single = run(me + ["--worker", "--batch", str(2 * a.batch)], a.threads,
                 "single: 1 rank x %d threads" % a.threads, {"batch": 2 * a.batch})
    ranks = [mpiexec, "-n", "2"] + me + ["--worker", "--ranks", "2", "--batch", str(a.batch)]
    layer = run(ranks + ["--layer-wise", "1"], 1, "layerwise: 2 ranks x 1 thread",
                {"batch": "2 x %d" % a.batch})
    blocking = run(ranks + ["--layer-wise", "0"], 1, "blocking: 2 ranks x 1 thread",
                   {"batch": "2 x %d" % a.batch})
    reduce = run([mpiexec, "-n", "2"] + me + ["--allreduce"], 1, "allreduce alone: 2 ranks", {})
    images = 2 * a.batch
    ips = {k: round(images * 1000.0 / v["ms"]["median"], 2)
           for k, v in (("single", single), ("layerwise", layer), ("blocking", blocking))}
    print(json.dumps({
        "summary": "images/s", **ips,
        "layerwise_vs_single": round(ips["layerwise"] / ips["single"], 3),
        "blocking_vs_single": round(ips["blocking"] / ips["single"], 3),
        "reduce_ms": reduce["ms"]["median"],
        "reduce_hidden_ms": round(reduce["ms"]["median"] - layer["wait_ms"]["median"], 1),
        "goal": 0.85}), flush=True)


if __name__ == "__main__":
    main()
