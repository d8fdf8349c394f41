"""The ``protonet`` command: Caffe's ``caffe`` tool verbs, with the same log lines.

    protonet train --solver solver.prototxt [--weights init.caffemodel]
    protonet test --model val.prototxt --weights snap_iter_1000.caffemodel
    protonet time --model train_val.prototxt --iterations 10
    protonet device_query

Each subcommand is two functions, ``<name>_arguments(parser)`` and
``<name>_command(args)`` (returns the exit status), plus one row of
``COMMANDS``; adding a verb is that small.
"""
import argparse
import json
import os
import re
import sys
import time

import numpy as np

from . import argtypes, backend, blas as _blas, devices
from .io import FormatError, read_solver
from .layer import LayerError
from .log import close_log_file, fmt, get_logger, setup as setup_logging, warnings_to_log
from .proto import caffe_pb2

log = get_logger()


class CommandError(Exception):
    """A wrong command line or input; printed as one line, exit status 1."""


# ------------------------------------------------------------------ shared options
def _stages(values):
    """``--stage a,b --stage c`` -> ["a", "b", "c"] (Caffe's -stage takes a comma list)."""
    out = []
    for value in values or []:
        out.extend(s for s in value.split(",") if s)
    return out


def _add_gpu(parser, what):
    parser.add_argument("--gpu", metavar="N|all|-1", default=None,
                        help="run %s on GPU N (CuPy), 'all' (the first is used), or -1 for the CPU"
                             % what)


def _add_net_state(parser):
    parser.add_argument("--stage", action="append", metavar="NAME",
                        help="NetState stage(s), comma separated or repeated")
    parser.add_argument("--level", type=argtypes.int32, default=0, help="NetState level (default 0)")


def _copy_weights(net, path):
    """--weights: as copy_weights, but a file that fits none of the net's layers is an error
    (the library only warns: Caffe ignores layers it does not know, for fine-tuning)."""
    if not os.path.exists(path):
        raise FormatError("--weights %s: no such file (working directory %s)" % (path, os.getcwd()))
    net.copy_from(path, require_match=True)


def _net_phase(name):
    return caffe_pb2.TRAIN if name.upper() == "TRAIN" else caffe_pb2.TEST


def _outputs(net):
    weights = {}
    for li, layer in enumerate(net.layers):
        for w, name in zip(layer.loss_weights, net.top_names[li]):
            weights[name] = float(w)
    return [(name, np.asarray(backend.to_host(net.blobs[name].data), np.float32).ravel(),
             weights.get(name, 0.0)) for name in net.outputs]


def _sync():
    if backend.mode() == "gpu":
        backend.xp().cuda.runtime.deviceSynchronize()


def _check_files(flag, value):
    """Files named by a flag exist: said at once, not after the net is built."""
    for path in (value.split(",") if value else []):
        if not os.path.exists(path):
            raise CommandError("%s: %s: no such file (working directory %s)"
                               % (flag, path, os.getcwd()))


# ------------------------------------------------------------------ train
TRAIN_EXAMPLE = """example:
  protonet train --solver solver.prototxt --weights bvlc_alexnet.caffemodel
  protonet train --solver solver.prototxt --snapshot snap_iter_1000.solverstate --gpu 0
  protonet train --network fcn_alexnet.prototxt --dataset sunnybrook_lmdb --epochs 5 \\
      --base-lr 1e-4 --out runs/fcn   (DIGITS-style: builds the solver DIGITS would write)

Paths in the solver and net files are relative to the working directory, as
with Caffe. Ctrl-C stops after the current iteration and snapshots (see
--sigint-effect); SIGHUP snapshots and goes on."""


def train_arguments(p):
    p.add_argument("--solver", help="the solver definition (solver.prototxt)")
    p.add_argument("--weights", help="caffemodel(s) to fine-tune from, comma separated; layers "
                                     "are copied by name")
    p.add_argument("--snapshot", help="a .solverstate to resume training from")
    _add_gpu(p, "training")
    _add_net_state(p)
    p.add_argument("--iterations", type=argtypes.positive_int, default=None,
                   help="stop at this iteration instead of the solver's max_iter "
                        "(lr policies keep using max_iter)")
    p.add_argument("--sigint-effect", choices=("stop", "snapshot", "none"), default="stop",
                   help="what SIGINT (Ctrl-C) does: stop (after a snapshot), snapshot, none "
                        "(default stop)")
    p.add_argument("--sighup-effect", choices=("stop", "snapshot", "none"), default="snapshot",
                   help="what SIGHUP does (default snapshot)")
    p.add_argument("--no-curve", action="store_true",
                   help="do not draw <snapshot_prefix>_curve.png")
    p.add_argument("--tensorboard", metavar="DIR", default=None,
                   help="write TensorBoard events here (default: the snapshots' folder; needs "
                        "pip install \"protonet[tensorboard]\")")
    p.add_argument("--no-tensorboard", action="store_true", help="write no TensorBoard events")
    p.add_argument("--python-path", action="append", default=[], metavar="DIR",
                   help="a folder to search for Python layer modules (repeatable)")
    d = p.add_argument_group("DIGITS-style quick start (with these, --solver is an optional "
                             "template for the hyperparameters)")
    d.add_argument("--network", help="a DIGITS network prototxt (Data layers without source)")
    d.add_argument("--dataset", help="a DIGITS dataset folder (train_db/, val_db/ with features "
                                     "and labels LMDBs)")
    d.add_argument("--epochs", type=argtypes.positive_float, default=30, help="training epochs (default 30)")
    d.add_argument("--base-lr", type=argtypes.positive_float, default=None,
                   help="base learning rate (default: the --solver template's, else 0.01)")
    d.add_argument("--solver-type", default=None,
                   choices=("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"),
                   help="default: the --solver template's, else SGD")
    d.add_argument("--lr-policy", default=None, choices=("fixed", "step", "exp", "inv", "poly"),
                   help="with DIGITS' defaults for its gamma/power/step (default: the --solver "
                        "template's, else fixed)")
    d.add_argument("--batch-size", type=argtypes.positive_int, default=None,
                   help="override the Data layers' batch_size")
    d.add_argument("--snapshot-epochs", type=argtypes.nonneg_float, default=1.0,
                   help="snapshot interval in epochs (default 1)")
    d.add_argument("--val-epochs", type=argtypes.nonneg_float, default=1.0,
                   help="validation interval in epochs (default 1)")
    d.add_argument("--mean-file", help="subtract this .binaryproto mean from the features")
    d.add_argument("--python-layers", metavar="FILE",
                   help="a Python layer file, importable as its own name and as "
                        "'digits_python_layers' (as DIGITS does)")
    d.add_argument("--seed", type=argtypes.seed, default=None, help="random_seed of the solver")
    d.add_argument("--out", default="digits_run",
                   help="folder for train_val.prototxt, solver.prototxt and snapshots "
                        "(one holding an earlier run is refused without --force)")
    d.add_argument("--force", action="store_true",
                   help="reuse --out: delete the earlier run's snapshots, curve and prototxts")


def train_command(args):
    from .solver import SignalHandler, copy_weights, get_solver
    if args.snapshot and args.weights:
        raise CommandError("Give a snapshot to resume training or weights to finetune but not both.")
    _check_files("--weights", args.weights)
    _check_files("--snapshot", args.snapshot)
    from .python_layer import add_search_path, register_module_file
    for folder in args.python_path:
        add_search_path(folder)
    if args.python_layers:
        register_module_file(args.python_layers, alias="digits_python_layers")
    if args.network or args.dataset:
        if not (args.network and args.dataset):
            raise CommandError("the DIGITS-style quick start needs both --network and --dataset")
        from .digits import prepare_run
        # the network's own folder holds its Python layers, as for a net given by --model
        add_search_path(os.path.dirname(os.path.abspath(args.network)))
        template = read_solver(args.solver) if args.solver else None
        from . import comm, launch
        # ranks of a multi-process run all write the same files: none refuses the others'
        rank = all(k in os.environ for k in launch.SPAWN_ENV) or comm.mpi_launch_env() is not None
        args.solver = prepare_run(args.network, args.dataset, args.out, epochs=args.epochs,
                                  base_lr=args.base_lr, solver_type=args.solver_type,
                                  lr_policy=args.lr_policy, batch_size=args.batch_size,
                                  snapshot_epochs=args.snapshot_epochs,
                                  val_epochs=args.val_epochs, mean_file=args.mean_file,
                                  random_seed=args.seed, template=template,
                                  force=args.force, check_out=not rank)
        log.info("Wrote %s (repeat this run with: protonet train --solver %s)",
                 args.solver, args.solver)
    if not args.solver:
        raise CommandError("give --solver (or --network with --dataset)")
    if not os.path.exists(args.solver):
        raise CommandError("--solver: '%s' not found (working directory %s)" % (args.solver, os.getcwd()))
    param = read_solver(args.solver)
    # As `caffe train`: the level flag always lands in train_state (0 unless given).
    param.train_state.level = args.level
    param.train_state.stage.extend(_stages(args.stage))
    gpu_flag = args.gpu
    # Only a solver_mode written in the file counts (the field's default is GPU).
    if gpu_flag is None and param.HasField("solver_mode") \
            and param.solver_mode == caffe_pb2.SolverParameter.GPU:
        if devices.device_count():
            gpu_flag = str(param.device_id)
        else:
            log.warning("solver_mode is GPU but no GPU is usable (%s); training on the CPU",
                        devices.no_gpu_reason())
    ids = devices.gpu_ids(gpu_flag)
    from . import launch
    if launch.wants_spawn(ids):        # --gpu 0,1: one process per GPU, over NCCL
        return launch.spawn_gpu_ranks(ids, getattr(args, "_argv", sys.argv[1:]))
    if getattr(args, "_as_program", False):
        # under mpirun: the process stays as a parent that names this rank if it is killed
        code = launch.watch_mpi_rank()
        if code is not None:
            return code
    strategy, ids = launch.join(ids)   # under mpirun (or spawned above): this rank's share
    if strategy is None:
        devices.use_devices(ids, training=True)
    # several ranks: SIGTERM (a batch system's, the parent's) stops them all with a snapshot
    sigterm = "stop" if strategy is not None else None
    with SignalHandler(args.sigint_effect, args.sighup_effect, sigterm) as handler:
        solver = get_solver(param, source_name=args.solver)
        if strategy is not None:
            solver.parallel = strategy
        solver.action_request_function = handler
        if not args.no_curve:
            solver.draw_curve_beside_snapshots()
        if not args.no_tensorboard:
            solver.write_events_beside_snapshots(args.tensorboard)
        if args.snapshot:
            log.info("Resuming from %s", args.snapshot)
            solver.restore(args.snapshot)
        elif args.weights:
            for path in args.weights.split(","):
                log.info("Finetuning from %s", path)
                _copy_weights(solver.net, path)
                for net in solver.test_nets:
                    copy_weights(net, path)
        log.info("Starting Optimization")
        solver.solve(max_iter=args.iterations)
        if strategy is not None:
            strategy.close()
    log.info("Optimization Done.")       # `caffe train` says it again, also after an early stop
    return 0


# ------------------------------------------------------------------ test
TEST_EXAMPLE = """example:
  protonet test --model val.prototxt --weights snap_iter_1000.caffemodel --iterations 100

Runs the net in the TEST phase and prints each batch's outputs, then their
means over the batches (as `caffe test`)."""


def test_arguments(p):
    p.add_argument("--model", required=True, help="the net definition (prototxt)")
    p.add_argument("--weights", required=True, help="the trained weights (.caffemodel)")
    p.add_argument("--iterations", type=argtypes.positive_int, default=50, help="batches to run (default 50)")
    _add_gpu(p, "the test")
    _add_net_state(p)


def test_command(args):
    from .net import Net
    if args.iterations < 1:
        raise CommandError("--iterations must be at least 1")
    _check_files("--model", args.model)
    _check_files("--weights", args.weights)
    devices.use_devices(devices.gpu_ids(args.gpu))
    stages = _stages(args.stage)
    net = Net(args.model, phase=caffe_pb2.TEST, level=args.level, stages=stages)
    _hint_stage_excluded_outputs(args.model, stages, args.level)
    _copy_weights(net, args.weights)
    log.info("Running for %d iterations.", args.iterations)
    scores, loss = None, np.float32(0)
    for i in range(args.iterations):
        loss += np.float32(net.forward_from_to())
        outputs = _outputs(net)
        for name, values, _ in outputs:
            for v in values:
                log.info("Batch %d, %s = %s", i, name, fmt(v))
        if scores is None:
            scores = [(name, values.copy(), w) for name, values, w in outputs]
        else:
            for (_, acc, _), (_, values, _) in zip(scores, outputs):
                acc += values
    loss /= np.float32(args.iterations)
    log.info("Loss: %s", fmt(loss))
    for name, acc, weight in scores or []:
        for total in acc:
            mean = total / np.float32(args.iterations)
            extra = " (* %s = %s loss)" % (fmt(weight), fmt(np.float32(weight) * mean)) if weight else ""
            log.info("%s = %s%s", name, fmt(mean), extra)
    return 0


def _hint_stage_excluded_outputs(model, stages, level=0):
    """Name the outputs a stage rule left out of the TEST net, and the --stage that adds them.

    DIGITS nets compute their Dice metric in a Python layer with
    ``include { stage: "val" }``: without ``--stage val`` the test prints
    loss and accuracy only, which looks like Dice went missing.
    """
    from .io import read_net
    from .netstate import layer_included
    param = read_net(model)
    state = caffe_pb2.NetState(phase=caffe_pb2.TEST, level=level, stage=stages)
    named = sorted({s for lp in param.layer for rule in lp.include for s in rule.stage
                    if s not in stages})
    consumed = {b for lp in param.layer for b in lp.bottom}
    for lp in param.layer:
        if layer_included(lp, state):
            continue
        for stage in named:
            more = caffe_pb2.NetState(phase=caffe_pb2.TEST, level=level,
                                      stage=list(stages) + [stage])
            if layer_included(lp, more):
                outputs = [t for t in lp.top if t not in consumed]
                if outputs:
                    log.warning("Layer '%s' (%s) is only in the net with --stage %s: its "
                                "output%s %s %s not computed here (DIGITS nets compute Dice in "
                                "the val stage: add --stage %s)",
                                lp.name, lp.type, stage, "s" if len(outputs) > 1 else "",
                                ", ".join("'%s'" % t for t in outputs),
                                "are" if len(outputs) > 1 else "is", stage)
                break


# ------------------------------------------------------------------ time
TIME_EXAMPLE = """example:
  protonet time --model train_val.prototxt --iterations 10 --gpu 0
  protonet time --model deploy.prototxt --phase TEST --json > timing.json

Times each layer's forward and backward pass (milliseconds, averaged over the
iterations) after one warm-up pass, as `caffe time`. Input blobs keep
their zeros; data layers read their sources."""


def time_arguments(p):
    p.add_argument("--model", required=True, help="the net definition (prototxt)")
    p.add_argument("--iterations", type=argtypes.positive_int, default=50, help="timed iterations (default 50)")
    p.add_argument("--phase", choices=("TRAIN", "TEST"), default="TRAIN",
                   help="NetState phase (default TRAIN)")
    p.add_argument("--json", action="store_true", help="also print the timings as JSON on stdout")
    _add_gpu(p, "the benchmark")
    _add_net_state(p)


def time_command(args):
    from .net import Net
    if args.iterations < 1:
        raise CommandError("--iterations must be at least 1")
    devices.use_devices(devices.gpu_ids(args.gpu))
    net = Net(args.model, phase=_net_phase(args.phase), level=args.level, stages=_stages(args.stage))
    log.info("Performing Forward")
    initial_loss = net.forward_from_to()
    log.info("Initial loss: %s", fmt(initial_loss))
    log.info("Performing Backward")
    net.backward_from_to()
    n = len(net.layers)
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", args.iterations)
    forward = [0.0] * n
    backward = [0.0] * n
    # GEMM seconds per layer (CPU only: on the GPU the products run asynchronously)
    gemm_clock = _blas.GemmClock() if backend.mode() == "cpu" else None
    gemm_forward = [0.0] * n
    gemm_backward = [0.0] * n
    forward_total = backward_total = 0.0

    def timed(step, i, seconds, gemm):
        before = gemm_clock.seconds if gemm_clock else 0.0
        t = time.perf_counter()
        step(i, i)
        _sync()
        seconds[i] += time.perf_counter() - t
        if gemm_clock:
            gemm[i] += gemm_clock.seconds - before

    total_start = time.perf_counter()
    with gemm_clock or _no_clock():
        for j in range(args.iterations):
            iter_start = time.perf_counter()
            for i in range(n):
                timed(net.forward_from_to, i, forward, gemm_forward)
            forward_total += time.perf_counter() - iter_start
            back_start = time.perf_counter()
            for i in range(n - 1, -1, -1):
                timed(net.backward_from_to, i, backward, gemm_backward)
            backward_total += time.perf_counter() - back_start
            log.info("Iteration: %d forward-backward time: %s ms.", j + 1,
                     fmt((time.perf_counter() - iter_start) * 1e3))
    total = time.perf_counter() - total_start
    k = args.iterations
    log.info("Average time per layer: ")
    for i, name in enumerate(net.layer_names):
        log.info("%10s\tforward: %s ms.", name, fmt(forward[i] * 1e3 / k))
        log.info("%10s\tbackward: %s ms.", name, fmt(backward[i] * 1e3 / k))
    log.info("Average Forward pass: %s ms.", fmt(forward_total * 1e3 / k))
    log.info("Average Backward pass: %s ms.", fmt(backward_total * 1e3 / k))
    log.info("Average Forward-Backward: %s ms.", fmt(total * 1e3 / k))
    log.info("Total Time: %s ms.", fmt(total * 1e3))
    outside = [(forward[i] - gemm_forward[i] + backward[i] - gemm_backward[i]) * 1e3 / k
               for i in range(n)]
    net_ms = (forward_total + backward_total) * 1e3 / k
    heavy = []
    if gemm_clock:
        # Where the time goes besides the BLAS: the part a faster engine can still win back.
        log.info("Time outside GEMMs per layer (forward + backward, share of the net's %s ms):",
                 fmt(net_ms))
        for i, name in enumerate(net.layer_names):
            share = outside[i] / net_ms if net_ms > 0 else 0.0
            log.info("%10s\toutside GEMMs: %s ms (%.1f%%); GEMMs: %s ms.", name, fmt(outside[i]),
                     100 * share, fmt((gemm_forward[i] + gemm_backward[i]) * 1e3 / k))
            if share > 0.10:
                heavy.append(name)
        gemm_ms = (sum(gemm_forward) + sum(gemm_backward)) * 1e3 / k
        log.info("GEMMs: %s ms, outside GEMMs: %s ms of the forward-backward.", fmt(gemm_ms),
                 fmt(net_ms - gemm_ms))
        log.info("Layers over 10%% of the net's time outside GEMMs: %s",
                 ", ".join(heavy) if heavy else "none")
    log.info("*** Benchmark ends ***")
    if args.json:
        layers = []
        for i, (name, layer) in enumerate(zip(net.layer_names, net.layers)):
            row = {"name": name, "type": layer.type,
                   "forward_ms": forward[i] * 1e3 / k, "backward_ms": backward[i] * 1e3 / k}
            if gemm_clock:
                row.update(gemm_forward_ms=gemm_forward[i] * 1e3 / k,
                           gemm_backward_ms=gemm_backward[i] * 1e3 / k, outside_gemm_ms=outside[i])
            layers.append(row)
        report = {
            "model": args.model, "phase": args.phase, "iterations": k,
            "device": "gpu:%d" % backend.device() if backend.mode() == "gpu" else "cpu",
            "layers": layers,
            "forward_ms": forward_total * 1e3 / k,
            "backward_ms": backward_total * 1e3 / k,
            "forward_backward_ms": total * 1e3 / k,
            "total_ms": total * 1e3,
        }
        if gemm_clock:
            report["outside_gemm_over_10pct"] = heavy
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0


class _no_clock:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# ------------------------------------------------------------------ device_query
DEVICE_QUERY_EXAMPLE = """example:
  protonet device_query            # every GPU CuPy sees, or that protonet runs on the CPU
  protonet device_query --gpu 0"""


def device_query_arguments(p):
    p.add_argument("--gpu", metavar="N|all", default="all",
                   help="which device(s) to describe (default all)")


_PROPERTIES = (
    ("Major revision number", "major"), ("Minor revision number", "minor"), ("Name", "name"),
    ("Total global memory", "totalGlobalMem"), ("Total shared memory per block", "sharedMemPerBlock"),
    ("Total registers per block", "regsPerBlock"), ("Warp size", "warpSize"),
    ("Maximum memory pitch", "memPitch"), ("Maximum threads per block", "maxThreadsPerBlock"),
    ("Maximum dimension of block", "maxThreadsDim"), ("Maximum dimension of grid", "maxGridSize"),
    ("Clock rate", "clockRate"), ("Total constant memory", "totalConstMem"),
    ("Texture alignment", "textureAlignment"), ("Concurrent copy and execution", "deviceOverlap"),
    ("Number of multiprocessors", "multiProcessorCount"),
    ("Kernel execution timeout", "kernelExecTimeoutEnabled"),
)


def device_query_command(args):
    log.info("Querying GPUs %s", args.gpu)
    count = devices.device_count()
    if not count:
        log.info("No GPU: %s. protonet runs on the CPU with NumPy %s.", devices.no_gpu_reason(),
                 np.__version__)
        return 0
    cp = devices.cupy()
    ids = list(range(count)) if args.gpu in ("all", "", None) else devices.gpu_ids(args.gpu)
    log.info("CuPy %s, CUDA runtime %s, %d device(s)", cp.__version__,
             cp.cuda.runtime.runtimeGetVersion(), count)
    for i in ids:
        if i >= count:
            raise CommandError("GPU %d requested but only %d GPU(s) are usable" % (i, count))
        props = cp.cuda.runtime.getDeviceProperties(i)
        log.info("Device id:                     %d", i)
        for label, key in _PROPERTIES:
            if key in props:
                value = props[key]
                if isinstance(value, bytes):
                    value = value.decode()
                elif isinstance(value, (tuple, list)):
                    value = ", ".join(str(v) for v in value)
                elif isinstance(value, (int, np.integer)) and key in ("deviceOverlap", "kernelExecTimeoutEnabled"):
                    value = "Yes" if value else "No"
                log.info("%-30s %s", label + ":", value)
        free, total = cp.cuda.Device(i).mem_info
        log.info("%-30s %d of %d bytes", "Free global memory:", free, total)
    return 0


def _lazy_example(module, name):
    import importlib
    return getattr(importlib.import_module("protonet." + module), name)


# ------------------------------------------------------------------ data
DATA_EXAMPLE = """example:
  protonet data synth-sunnybrook --out synth --cases 20
  protonet data sunnybrook --images synth/images --contours synth/contours --out synth/lmdb
  protonet data <tool> --help"""

# tool name -> module with add_arguments(parser) and run(args)
DATA_TOOLS = [
    ("sunnybrook", "protonet.data.sunnybrook",
     "Sunnybrook DICOM images + expert contours -> DIGITS-layout LMDB dataset"),
    ("synth-sunnybrook", "protonet.data.synth",
     "write a synthetic Sunnybrook-like dataset (DICOM + contour files)"),
]


def tutorial_arguments(p):
    from . import tutorial
    tutorial.add_arguments(p)


def tutorial_command(args):
    from . import tutorial
    return tutorial.run(args)


def infer_arguments(p):
    from . import infer
    infer.add_arguments(p)


def infer_command(args):
    from . import infer
    return infer.run(args)


# ------------------------------------------------------------------ surgery
def surgery_arguments(p):
    from . import surgery
    surgery.add_arguments(p)


def surgery_command(args):
    from .surgery import SurgeryError, run
    try:
        return run(args)
    except SurgeryError as exc:
        raise CommandError(str(exc)) from None


# ------------------------------------------------------------------ draw
DRAW_EXAMPLE = """example:
  protonet draw fcn_alexnet.prototxt fcn_alexnet.svg
  protonet draw train_val.prototxt net.png --phase TRAIN --rankdir TB
  protonet draw net.prototxt net.dot          (Graphviz's DOT text: needs nothing installed)

Caffe's python/draw_net.py: layers are boxes (convolutions red, pooling orange,
inner products purple, in-place layers green), blobs are octagons. Images
(.svg, .png, .pdf, ...) are rendered by Graphviz's `dot` program."""

def draw_arguments(p):
    p.add_argument("model", metavar="NET.prototxt", help="the net to draw")
    p.add_argument("output", metavar="OUT.svg|png|pdf|dot",
                   help="the picture; its extension is the format")
    p.add_argument("--rankdir", default="LR", choices=("LR", "TB", "BT", "RL"),
                   help="direction of the graph (default LR: left to right)")
    p.add_argument("--phase", default="ALL", choices=("TRAIN", "TEST", "ALL"),
                   help="draw only the layers of this phase (default ALL)")
    p.add_argument("--display-lrm", action="store_true",
                   help="show the lr_mult of layers with parameters where it is not 1")


def draw_command(args):
    from caffe.draw import get_dot_source, render_dot
    from .io import read_net
    ext = os.path.splitext(args.output)[1].lstrip(".").lower()
    if not ext:
        raise CommandError("%s: give the output an extension that names the format (.svg, "
                           ".png, .pdf or .dot)" % args.output)
    if not os.path.exists(args.model):
        raise CommandError("%s: no such file (working directory %s)" % (args.model, os.getcwd()))
    phase = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST}.get(args.phase)
    dot = get_dot_source(read_net(args.model), args.rankdir, phase=phase,
                         display_lrm=args.display_lrm)
    data = dot.encode() if ext in ("dot", "gv", "raw") else render_dot(dot, ext)
    with open(args.output, "wb") as f:
        f.write(data)
    log.info("Drawing net to %s", args.output)
    return 0


def data_arguments(p):
    import importlib
    tools = p.add_subparsers(dest="tool", metavar="<tool>")
    for name, module, help_text in DATA_TOOLS:
        tp = tools.add_parser(name, help=help_text)
        mod = importlib.import_module(module)
        mod.add_arguments(tp)
        tp.set_defaults(_tool=mod.run)


def data_command(args):
    if getattr(args, "_tool", None) is None:
        raise CommandError("protonet data needs a tool: %s" % ", ".join(n for n, _, _ in DATA_TOOLS))
    return args._tool(args)


# ------------------------------------------------------------------ table and main
# name, command, arguments, one-line help, example epilog
COMMANDS = [
    ("tutorial", tutorial_command, tutorial_arguments,
     "the Sunnybrook LV segmentation tutorial end to end (data, training, Dice, pictures)",
     _lazy_example("tutorial", "TUTORIAL_EXAMPLE")),
    ("train", train_command, train_arguments, "train or finetune a model", TRAIN_EXAMPLE),
    ("test", test_command, test_arguments, "score a model", TEST_EXAMPLE),
    ("time", time_command, time_arguments, "benchmark model execution time", TIME_EXAMPLE),
    ("device_query", device_query_command, device_query_arguments, "show GPU diagnostic information",
     DEVICE_QUERY_EXAMPLE),
    ("data", data_command, data_arguments, "prepare datasets (Sunnybrook DICOM -> LMDB, ...)",
     DATA_EXAMPLE),
    ("infer", infer_command, infer_arguments,
     "segment images, DICOMs or an LMDB; write overlays, masks and a Dice summary", None),
    ("surgery", surgery_command, surgery_arguments,
     "copy weights into another net by layer name, reshaping (AlexNet -> FCN-AlexNet)",
     _lazy_example("surgery", "SURGERY_EXAMPLE")),
    ("draw", draw_command, draw_arguments, "draw a net's graph (SVG, PNG, PDF or DOT)",
     DRAW_EXAMPLE),
]


# The flags of Caffe's tool (tools/caffe.cpp). gflags flags are global: every verb
# takes them all and ignores the ones it has no use for.
CAFFE_FLAGS = ("gpu", "solver", "model", "phase", "level", "stage", "snapshot", "weights",
               "iterations", "sigint_effect", "sighup_effect")
CAFFE_VERBS = ("train", "test", "time", "device_query")
_GFLAG = re.compile(r"^--?([A-Za-z][A-Za-z0-9]*(?:[_-][A-Za-z0-9]+)*)(=.*)?$", re.S)


def gflags_spelling(argv):
    """Caffe's spellings of options as ours: ``-solver x``, ``-gpu=0``, ``--sigint_effect``.

    gflags takes one dash or two and underscores; argparse wants ``--sigint-effect``.
    Single-letter options (``-h``) and negative numbers are left alone.
    """
    out = []
    for i, token in enumerate(argv):
        if token == "--":
            return out + list(argv[i:])
        m = _GFLAG.match(token)
        if m and len(m.group(1)) > 1:
            token = "--" + m.group(1).replace("_", "-") + (m.group(2) or "")
        out.append(token)
    return out


def _accept_caffe_flags(p):
    """Hidden options for the Caffe flags this verb does not use (see _warn_ignored)."""
    for flag in CAFFE_FLAGS:
        try:
            p.add_argument("--" + flag.replace("_", "-"), dest="_ignored_" + flag,
                           default=None, help=argparse.SUPPRESS)
        except argparse.ArgumentError:
            pass                       # the verb has this option of its own


def _warn_ignored(args):
    for flag in CAFFE_FLAGS:
        if getattr(args, "_ignored_" + flag, None) is not None:
            log.warning("--%s is not used by `protonet %s` (`caffe %s` ignores it too)",
                        flag, args.command, args.command)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="protonet",
        description="Caffe's command line on NumPy/CuPy: train, test and time nets from prototxt "
                    "files; logs in Caffe's format on stderr.",
        epilog="example:\n  protonet train --solver solver.prototxt --weights init.caffemodel\n"
               "  protonet <command> --help",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__
    parser.add_argument("--version", action="version", version="protonet %s" % __version__)
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, func, arguments, help_text, example in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".",
                           epilog=example, formatter_class=argparse.RawDescriptionHelpFormatter)
        arguments(p)
        # glog's flag, which Caffe's tool takes with any verb
        p.add_argument("--log-dir", metavar="DIR", default=None,
                       help="also write the log to a glog-named file in DIR (glog's --log_dir, "
                            "as GLOG_log_dir=DIR)")
        if name in CAFFE_VERBS:
            _accept_caffe_flags(p)
        p.set_defaults(_func=func)
    return parser


def _user_errors():
    from .data.datum import DataError
    from .digits import DatasetError
    from .net import NetError
    from .solver import SolverError
    from .upgrade import UpgradeError
    from .comm import CommError
    return (CommandError, CommError, devices.DeviceError, SolverError, NetError, FormatError, LayerError,
            UpgradeError, DataError, DatasetError, OSError, RuntimeError)


def main(argv=None):
    """Entry point of the ``protonet`` console script; returns the exit status.

    Ctrl-C at any moment, the start-up included, prints one line and returns 130.
    """
    logging_ready = False
    try:
        parser = build_parser()
        as_program = argv is None     # the console script, not a call from Python code
        argv = gflags_spelling(sys.argv[1:] if argv is None else argv)
        args = parser.parse_args(argv)
        args._argv = list(argv)       # --gpu 0,1 starts this command line once per GPU
        args._as_program = as_program
        if getattr(args, "_func", None) is None:
            parser.print_help(sys.stderr)
            return 1
        setup_logging(log_dir=getattr(args, "log_dir", None))
        logging_ready = True
        _warn_ignored(args)
        with warnings_to_log():
            return args._func(args) or 0
    except KeyboardInterrupt:
        if logging_ready:
            log.error("Interrupted.")
        else:
            sys.stderr.write("protonet: interrupted\n")
        return 130
    except _user_errors() as exc:
        log.error("%s", exc)
        return 1
    finally:
        if logging_ready:
            close_log_file()
