"""Solvers: Caffe 1.0's training loop and its six update rules.

``get_solver("solver.prototxt")`` builds the solver named by the file's
``type`` (or legacy ``solver_type``): SGD, Nesterov, AdaGrad, RMSProp,
AdaDelta or Adam. The API is pycaffe's: ``solver.net``, ``solver.test_nets``,
``solver.iter``, ``solver.step(n)``, ``solver.solve(resume_file)``,
``solver.restore(path)``, ``solver.snapshot()``.

One iteration, in Caffe's order (``Solver::Step``, ``SGDSolver::ApplyUpdate``):

1. clear every param diff; test first when ``iter % test_interval == 0``;
2. ``iter_size`` forward/backward passes accumulate the diffs; the loss
   reported is their mean, smoothed over ``average_loss`` iterations;
3. learning rate from ``lr_policy``; clip the global L2 norm of all diffs to
   ``clip_gradients``; per param: divide the diff by ``iter_size``, add
   weight decay (``weight_decay * decay_mult``, L2 or L1), turn the diff into
   the step (the update rule, with ``base rate * lr_mult``);
4. ``data -= diff``; ``iter += 1``; snapshot every ``snapshot`` iterations or
   when a signal asks for it.

Arithmetic is float32 with Caffe's operation order (``y = b*y`` then
``y += a*x`` for axpby), so trajectories match Caffe's to rounding.
Snapshots are ``<snapshot_prefix>_iter_<N>.caffemodel`` and ``.solverstate``
(SolverState: iter, learned_net, history, current_step), written atomically;
Caffe resumes from ours and we from Caffe's.
"""
import contextlib
import io as _io
import math
import os
import signal
import threading
import time

import numpy as np
from google.protobuf import text_format

from . import backend, cuda_kernels, blas as _blas, elementwise, rng
from .io import FormatError, blobproto_to_array, blobproto_bytes, read_binary, read_net, read_solver, \
    discard_staged, stage_bytes, wire_field, write_bytes_atomic
from .log import ProgressBar, ensure_handler, fmt, get_logger
from .net import Net
from .proto import caffe_pb2
from .upgrade import upgrade_solver

__all__ = ["Solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
           "AdaDeltaSolver", "AdamSolver", "SolverError", "SignalHandler", "get_solver",
           "solver_types", "NONE", "STOP", "SNAPSHOT", "LR_POLICIES",
           "save_hdf5_weights", "load_hdf5_weights", "copy_weights"]

log = get_logger()

# Caffe's SolverAction: what a signal asks for, checked between iterations.
NONE, STOP, SNAPSHOT = "none", "stop", "snapshot"
_ACTIONS = (NONE, STOP, SNAPSHOT)

LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
_F32 = np.float32
_SP = caffe_pb2.SolverParameter


class SolverError(ValueError):
    """The solver description is inconsistent; the message names the file and field."""


# ---------------------------------------------------------------- registry
_SOLVERS = {}


def register_solver(name):
    """Class decorator: make ``type: "<name>"`` build this solver."""
    def deco(cls):
        _SOLVERS[name] = cls
        cls.type = name
        return cls
    return deco


def solver_types():
    return sorted(_SOLVERS)


def _load_param(source):
    """(upgraded SolverParameter copy, name of where it came from)."""
    if isinstance(source, _SP):
        param = _SP()
        param.CopyFrom(source)
        upgrade_solver(param, source="<SolverParameter>")
        return param, "<SolverParameter>"
    path = os.fspath(source)
    if not os.path.exists(path):
        raise SolverError("solver file '%s' not found (working directory %s)" % (path, os.getcwd()))
    return read_solver(path), path


def get_solver(source, source_name=None):
    """The solver a solver.prototxt (or a SolverParameter) asks for, by its ``type``."""
    param, name = _load_param(source)
    cls = _SOLVERS.get(param.type)
    if cls is None:
        raise SolverError("%s: unknown solver type '%s' (known types: %s)"
                          % (source_name or name, param.type, ", ".join(solver_types())))
    return cls(param, source_name=source_name or name)


# ---------------------------------------------------------------- signals
@contextlib.contextmanager
def _sigint_held():
    """Hold a Ctrl-C that arrives inside the block until its end: an update is applied to
    every parameter or to none (Python's default handler would raise between any two)."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield               # a SignalHandler (the command line) already defers it
        return
    got = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if got:
        raise KeyboardInterrupt



class SignalHandler:
    """Caffe's ``-sigint_effect`` / ``-sighup_effect``.

    A signal only raises a flag; the solver asks (``handler()`` returns
    ``"stop"``, ``"snapshot"`` or ``"none"``) between iterations and between
    test batches, so a snapshot is never written from inside an update.
    As in Caffe, SIGINT defaults to stop (the solver then snapshots when
    ``snapshot_after_train``) and SIGHUP to snapshot. A second SIGINT that
    arrives before the first was acted on aborts at once (KeyboardInterrupt);
    snapshots are written atomically, so that never leaves a torn file.

    Use as a context manager: the previous handlers come back on exit.
    """

    def __init__(self, sigint_effect=STOP, sighup_effect=SNAPSHOT):
        for flag, value in (("sigint_effect", sigint_effect), ("sighup_effect", sighup_effect)):
            if value not in _ACTIONS:
                raise ValueError("invalid signal effect %r for %s: use one of %s"
                                 % (value, flag, ", ".join(_ACTIONS)))
        self.sigint_effect = sigint_effect
        self.sighup_effect = sighup_effect
        self._pending = {}
        self._previous = {}

    def _signals(self):
        sigs = [signal.SIGINT]
        if hasattr(signal, "SIGHUP"):
            sigs.append(signal.SIGHUP)
        return sigs

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            log.warning("signal handlers can only be installed from the main thread; "
                        "SIGINT/SIGHUP keep their default effect")
            return self
        for sig in self._signals():
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    __enter__ = install

    def __exit__(self, *exc):
        self.uninstall()
        return False

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self._pending.get(signum) and self.sigint_effect != NONE:
            raise KeyboardInterrupt("second SIGINT before the first was handled")
        self._pending[signum] = True

    def __call__(self):
        # SIGHUP first, as Caffe's CheckForSignals: with both pending, snapshot then stop
        if hasattr(signal, "SIGHUP") and self._pending.pop(signal.SIGHUP, False):
            return self.sighup_effect
        if self._pending.pop(signal.SIGINT, False):
            return self.sigint_effect
        return NONE


# ---------------------------------------------------------------- curve
class TrainingCurve:
    """What the solver has seen: per-iteration loss and lr, test outputs per test.

    ``draw(path)`` writes a PNG (train loss and test losses; other test
    outputs such as accuracy or Dice; learning rate) with matplotlib's Agg
    canvas, without touching pyplot's global state.
    """

    max_values = 10

    def __init__(self, title=""):
        self.title = title
        self.iters, self.loss, self.smoothed, self.lr = [], [], [], []
        self.tests = {}          # (test net id, output name) -> ([iters], [values], loss_weight)
        self._warned = False

    def add_train(self, iteration, loss, smoothed, lr):
        self.iters.append(int(iteration))
        self.loss.append(float(loss))
        self.smoothed.append(float(smoothed))
        self.lr.append(float(lr))

    def add_test(self, net_id, iteration, results):
        """``results``: (output name, value, loss weight), one per value as Caffe prints them.
        A multi-valued output (per-class accuracy) becomes ``name[k]``; beyond
        ``max_values`` values it is not plotted."""
        counts = {}
        for name, _, _ in results:
            counts[name] = counts.get(name, 0) + 1
        seen = {}
        for name, value, weight in results:
            k = seen[name] = seen.get(name, -1) + 1
            if counts[name] > self.max_values:
                continue
            label = name if counts[name] == 1 else "%s[%d]" % (name, k)
            iters, values, _ = self.tests.setdefault((net_id, label), ([], [], weight))
            iters.append(int(iteration))
            values.append(float(value))

    def draw(self, path):
        """Write the PNG atomically; False (after one log line) without matplotlib."""
        if not self.iters:
            return False        # nothing trained yet (the test before the first iteration)
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            if not self._warned:
                log.info("matplotlib is not installed: no training curve is drawn "
                         "(pip install matplotlib)")
                self._warned = True
            return False
        losses = {k: v for k, v in self.tests.items() if v[2]}
        others = {k: v for k, v in self.tests.items() if not v[2]}
        panels = 2 + bool(others)
        fig = Figure(figsize=(8, 2.6 * panels + 0.6))
        FigureCanvasAgg(fig)
        axes = fig.subplots(panels, 1, sharex=True)
        ax = axes[0]
        if self.iters:
            if self.smoothed != self.loss:       # average_loss > 1: the raw loss behind the smoothed one
                ax.plot(self.iters, self.loss, color="tab:blue", alpha=0.3, lw=0.8, label="train loss")
                ax.plot(self.iters, self.smoothed, color="tab:blue", lw=1.2, label="train loss (smoothed)")
            else:
                ax.plot(self.iters, self.loss, color="tab:blue", lw=1.2, label="train loss")
        multi = len({k[0] for k in self.tests}) > 1
        for k, ((net_id, name), (iters, values, _)) in enumerate(sorted(losses.items())):
            label = "test%s %s" % (" #%d" % net_id if multi else "", name)
            ax.plot(iters, values, marker="o", ms=3, lw=1.2, color="C%d" % (k % 9 + 1), label=label)
        ax.set_ylabel("loss")
        ax.legend(loc="upper right", fontsize="small")
        ax.grid(alpha=0.3)
        if others:
            ax = axes[1]
            for (net_id, name), (iters, values, _) in sorted(others.items()):
                label = "test%s %s" % (" #%d" % net_id if multi else "", name)
                ax.plot(iters, values, marker="o", ms=3, lw=1.2, label=label)
            ax.set_ylabel("test outputs")
            ax.legend(loc="lower right", fontsize="small")
            ax.grid(alpha=0.3)
        ax = axes[-1]
        if self.iters:
            ax.plot(self.iters, self.lr, color="tab:green", lw=1.2, drawstyle="steps-post")
            positive = [v for v in self.lr if v > 0]
            if positive and max(positive) > 20 * min(positive) and len(positive) == len(self.lr):
                ax.set_yscale("log")
        ax.set_ylabel("learning rate")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if self.title:
            fig.suptitle(self.title)
        fig.tight_layout()
        buf = _io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        write_bytes_atomic(path, buf.getvalue())
        return True


# ---------------------------------------------------------------- helpers
def _host_f32(array):
    return np.asarray(backend.to_host(array), dtype=np.float32)


def _blob_loss_weights(net):
    """Blob name -> loss weight of the top that wrote it last (Caffe's blob_loss_weights)."""
    weights = {}
    # by index: a caffe.Net's top_names is keyed by layer name, as pycaffe's
    for li, layer in enumerate(net._layers):
        for w, name in zip(layer.loss_weights, net.top_names[li]):
            weights[name] = float(w)
    return weights


def _output_values(net):
    """[(output name, float32 values)] in Caffe's output order."""
    return [(name, _host_f32(net._blob_dict[name].data).ravel()) for name in net.outputs]


def _param_display_names(net):
    """Per layer, the display names of its param blobs (spec name or index)."""
    names, k = [], 0
    for layer in net._layers:
        n = len(layer.blobs)
        names.append(list(net.param_display_names[k:k + n]))
        k += n
    return names


def _c_pow(base, exponent):
    """C's pow: inf on overflow and NaN for a negative base to a fractional power, where
    math.pow raises."""
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.power(np.float64(base), np.float64(exponent)))


def _asum(array):
    return float(backend.xp_of(array).abs(array).sum(dtype=np.float64))


def _sumsq(array):
    flat = array.reshape(-1)
    return float(flat.astype(np.float64) @ flat.astype(np.float64)) if flat.size else 0.0


def _asum_mean(array):
    n = array.size
    return _asum(array) / n if n else 0.0


def _open_h5py(purpose):
    try:
        import h5py
    except ImportError as exc:
        raise SolverError("%s needs h5py (pip install h5py), or use snapshot_format: BINARYPROTO "
                          "(%s)" % (purpose, exc)) from None
    return h5py


def _stage_hdf5(path, fill, purpose="HDF5 snapshots"):
    """Write an HDF5 file beside ``path`` with ``fill(h5file)``; return its hidden name
    (``os.replace`` puts it in place, as :func:`protonet.io.stage_bytes`)."""
    h5py = _open_h5py(purpose)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, ".%s.%d.tmp" % (os.path.basename(path), os.getpid()))
    try:
        with h5py.File(tmp, "w") as f:
            fill(f)
    except BaseException:
        discard_staged(tmp)
        raise
    return tmp


def _commit(staged):
    """Put staged files in place: [(staged name, path)]. Each rename is atomic."""
    try:
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            discard_staged(tmp)
        raise


def _fill_hdf5_weights(f, net, write_diff):
    groups = [f.create_group("data")] + ([f.create_group("diff")] if write_diff else [])
    owners = iter(net._param_owner)
    for name, layer in zip(net.layer_names, net._layers):
        lgroups = [g.create_group(name) for g in groups]
        for j, blob in enumerate(layer.blobs):
            if next(owners) < 0:      # Caffe saves the values of params that own themselves...
                lgroups[0].create_dataset(str(j), data=_host_f32(blob.data))
            if write_diff:            # ...and every diff, shared or not
                lgroups[1].create_dataset(str(j), data=_host_f32(blob.diff))


def _first_param_index(net, li):
    """Where layer ``li``'s params start in the net's list of all params (_param_owner's)."""
    return sum(len(layer.blobs) for layer in net._layers[:li])


def save_hdf5_weights(net, path, write_diff=False):
    """A ``.caffemodel.h5`` in Caffe's layout: ``/data/<layer>/<i>`` (+ ``/diff``)."""
    _commit([(_stage_hdf5(path, lambda f: _fill_hdf5_weights(f, net, write_diff)), path)])


def load_hdf5_weights(net, path):
    """Copy a ``.caffemodel.h5`` into ``net`` by layer name (Caffe's CopyTrainedLayersFromHDF5)."""
    h5py = _open_h5py("reading %s" % path)
    if not os.path.exists(path):
        raise FormatError("%s: no such file" % path)
    index = {name: i for i, name in enumerate(net.layer_names)}
    xp = net.xp
    with h5py.File(path, "r") as f:
        if "data" not in f:
            raise FormatError("%s: not a Caffe HDF5 model (no /data group)" % path)
        for lname in f["data"]:
            li = index.get(lname)
            if li is None:
                log.info("Ignoring source layer %s", lname)
                continue
            group = f["data"][lname]
            layer = net._layers[li]
            if len(group) > len(layer.blobs):
                raise FormatError("%s: Incompatible number of blobs for layer %s (%d in the file, "
                                  "%d in the net)" % (path, lname, len(group), len(layer.blobs)))
            first = _first_param_index(net, li)
            for j, blob in enumerate(layer.blobs):
                if str(j) not in group:
                    if net._param_owner[first + j] >= 0:
                        continue        # a shared param: its owner carries the values
                    raise FormatError("%s: Incompatible number of blobs for layer %s" % (path, lname))
                values = np.asarray(group[str(j)], dtype=np.float32)
                if values.shape != blob.shape:
                    raise FormatError("%s: Cannot copy param %d weights from layer '%s'; shape "
                                      "mismatch. Source param shape is %s; target param shape is %s"
                                      % (path, j, lname, values.shape, blob.shape))
                blob.data[...] = xp.asarray(values) if xp is not np else values


def copy_weights(net, path):
    """Copy a .caffemodel or .caffemodel.h5 into ``net`` by layer name."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FormatError("%s: no such file (working directory %s)" % (path, os.getcwd()))
    net.copy_from(path)


# ---------------------------------------------------------------- the solver
class Solver:
    """Caffe's ``Solver``: nets, the training loop, tests, snapshots.

    ``Solver(param)`` with a solver.prototxt path or a SolverParameter. Update
    rules are subclasses (``get_solver`` picks one by ``type``).

    Attributes: ``net`` (train net), ``test_nets`` (their params are the
    train net's), ``iter``, ``current_step``, ``param``, ``history`` (the
    arrays a solverstate stores), ``smoothed_loss``, ``curve``
    (:class:`TrainingCurve`), ``curve_path`` (a PNG of it written at each
    test and snapshot; None, the default, writes none: see
    :meth:`draw_curve_beside_snapshots`), ``progress`` (terminal progress bar,
    default on when stderr is a terminal), ``action_request_function``
    (a callable returning "none"/"stop"/"snapshot"; see :class:`SignalHandler`).
    """

    type = None
    #: history arrays per learnable param (AdaDelta and Adam keep two)
    history_sets = 1

    def __init__(self, param, source_name=None):
        ensure_handler()
        self.param, name = _load_param(param)
        self.source = source_name or name
        p = self.param
        log.info("Initializing solver from parameters: \n%s", text_format.MessageToString(p))
        if p.average_loss < 1:
            raise SolverError("%s: average_loss should be at least 1, got %d" % (self.source, p.average_loss))
        if p.iter_size < 1:
            raise SolverError("%s: iter_size should be at least 1, got %d" % (self.source, p.iter_size))
        self._check_settings()
        self._check_snapshot_prefix()
        if p.random_seed >= 0:
            rng.set_random_seed(p.random_seed)
        self.net = self._init_train_net()
        self.test_nets = self._init_test_nets()
        for test_net in self.test_nets:
            test_net.share_with(self.net)
        for path in p.weights:
            log.info("Finetuning from %s", path)
            copy_weights(self.net, path)
            for test_net in self.test_nets:
                copy_weights(test_net, path)
        log.info("Solver scaffolding done.")
        self.iter = 0
        self.current_step = 0
        self.requested_early_exit = False
        self.action_request_function = None
        self.smoothed_loss = 0.0
        self.last_loss = 0.0
        self.last_lr = 0.0
        self._losses = []
        self._callbacks = []
        self.test_results = [[] for _ in self.test_nets]
        self.curve = TrainingCurve(title=self.net.name)
        self.curve_path = None      # Caffe writes no picture; the command line asks for one
        self._warned_poly = False
        self.progress = True
        self._display_names = _param_display_names(self.net)
        self._pre_solve()

    # ------------------------------------------------------------ setup
    def _check_settings(self):
        p, src = self.param, self.source
        policy = p.lr_policy
        if policy not in LR_POLICIES:
            raise SolverError("%s: unknown lr_policy %r (Caffe's policies: %s)"
                              % (src, policy, ", ".join(LR_POLICIES)))
        if policy in ("step", "sigmoid") and p.stepsize <= 0:
            raise SolverError("%s: lr_policy %r needs stepsize > 0" % (src, policy))
        if policy in ("step", "exp", "inv", "multistep", "sigmoid") and p.gamma < 0:
            raise SolverError("%s: lr_policy %r needs gamma >= 0" % (src, policy))
        if policy == "poly" and p.max_iter <= 0:
            raise SolverError("%s: lr_policy 'poly' needs max_iter > 0" % src)
        if p.snapshot_format not in (_SP.BINARYPROTO, _SP.HDF5):
            raise SolverError("%s: unsupported snapshot_format %r" % (src, p.snapshot_format))
        if p.snapshot_format == _SP.HDF5:
            _open_h5py("%s: snapshot_format: HDF5" % src)

    def _check_snapshot_prefix(self):
        p = self.param
        if not p.snapshot:
            return          # as Caffe: a script that only calls step() may never write one
        if not p.HasField("snapshot_prefix"):
            raise SolverError("%s: snapshot is set (every %d iterations) but snapshot_prefix is not"
                              % (self.source, p.snapshot))
        self._check_snapshot_folder()

    def _check_snapshot_folder(self):
        p = self.param
        folder = os.path.dirname(p.snapshot_prefix) or "."
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise SolverError("%s: cannot write to snapshot_prefix '%s'. Make sure that the directory "
                              "exists and is writeable." % (self.source, p.snapshot_prefix))

    def _read_net_file(self, field, path):
        if not os.path.exists(path):
            raise SolverError("%s: %s: net file '%s' not found (paths in a solver are relative to the "
                              "working directory, %s)" % (self.source, field, path, os.getcwd()))
        return read_net(path)

    def _net_from(self, field, path=None, message=None, phase=caffe_pb2.TRAIN, extra_state=None):
        if path is not None:
            file_param = self._read_net_file(field, path)
            state = caffe_pb2.NetState()
            state.phase = phase
            state.MergeFrom(file_param.state)
            if extra_state is not None:
                state.MergeFrom(extra_state)
            extra_stages = list(extra_state.stage) if extra_state is not None else []
            return Net(path, phase=state.phase, level=state.level, stages=extra_stages)
        net_param = caffe_pb2.NetParameter()
        net_param.CopyFrom(message)
        state = caffe_pb2.NetState()
        state.phase = phase
        state.MergeFrom(net_param.state)
        if extra_state is not None:
            state.MergeFrom(extra_state)
        net_param.state.CopyFrom(state)
        return Net(net_param)

    def _init_train_net(self):
        p = self.param
        fields = [f for f in ("net", "net_param", "train_net", "train_net_param") if p.HasField(f)]
        if not fields:
            raise SolverError("%s: SolverParameter must specify a train net using one of these fields: "
                              "net, net_param, train_net, train_net_param" % self.source)
        if len(fields) > 1:
            raise SolverError("%s: SolverParameter must not contain more than one of these fields "
                              "specifying a train net: %s" % (self.source, ", ".join(fields)))
        field = fields[0]
        train_state = p.train_state if p.HasField("train_state") else None
        if field in ("net", "train_net"):
            path = getattr(p, field)
            log.info("Creating training net from %s file: %s", field, path)
            return self._net_from(field, path=path, phase=caffe_pb2.TRAIN, extra_state=train_state)
        log.info("Creating training net specified in %s.", field)
        return self._net_from(field, message=getattr(p, field), phase=caffe_pb2.TRAIN,
                              extra_state=train_state)

    def _init_test_nets(self):
        p = self.param
        generic = p.HasField("net") + p.HasField("net_param")
        if generic > 1:
            raise SolverError("%s: Both net_param and net may not be specified." % self.source)
        specific = len(p.test_net_param) + len(p.test_net)
        if generic and len(p.test_iter) < specific or not generic and len(p.test_iter) != specific:
            raise SolverError("%s: test_iter must be specified for each test network (%d test_iter, "
                              "%d test nets)" % (self.source, len(p.test_iter), specific))
        count = len(p.test_iter) if generic else specific
        if len(p.test_state) and len(p.test_state) != count:
            raise SolverError("%s: test_state must be unspecified or specified once per test net "
                              "(%d test_state, %d test nets)" % (self.source, len(p.test_state), count))
        if count and p.test_interval <= 0:
            raise SolverError("%s: test nets are given (%d) but test_interval is not > 0"
                              % (self.source, count))
        sources = []
        for i, message in enumerate(p.test_net_param):
            sources.append(("test_net_param", None, message, "test_net_param"))
        for path in p.test_net:
            sources.append(("test_net", path, None, "test_net file: " + path))
        while len(sources) < count:
            if p.HasField("net_param"):
                sources.append(("net_param", None, p.net_param, "net_param"))
            else:
                sources.append(("net", p.net, None, "net file: " + p.net))
        nets = []
        for i, (field, path, message, what) in enumerate(sources):
            log.info("Creating test net (#%d) specified by %s", i, what)
            state = p.test_state[i] if len(p.test_state) else None
            nets.append(self._net_from(field, path=path, message=message, phase=caffe_pb2.TEST,
                                       extra_state=state))
        return nets

    def _pre_solve(self):
        xp, params = self.net.xp, self.net.learnable_params
        dtype = self.net.dtype
        self.history = [xp.zeros(b.shape, dtype) for _ in range(self.history_sets) for b in params]

    # ------------------------------------------------------------ public API
    def add_callback(self, on_start=None, on_gradients_ready=None):
        """pycaffe's callbacks: ``on_start()`` before the forward passes of an
        iteration, ``on_gradients_ready()`` before the update. An object with
        those methods works too."""
        if on_gradients_ready is None and on_start is not None and hasattr(on_start, "on_start"):
            obj = on_start
            on_start, on_gradients_ready = obj.on_start, obj.on_gradients_ready
        self._callbacks.append((on_start, on_gradients_ready))

    def _requested_action(self):
        if self.action_request_function is None:
            return NONE
        return self.action_request_function()

    def step(self, iters, _total=None):
        """Run ``iters`` iterations (Caffe's ``Solver::Step``)."""
        p = self.param
        start_iter = self.iter
        stop_iter = self.iter + int(iters)
        average_loss = p.average_loss
        self._losses = []
        self.smoothed_loss = 0.0
        timer = time.perf_counter()
        iterations_last = self.iter
        bar = ProgressBar(_total if _total is not None else stop_iter, start=self.iter,
                          enabled=None if self.progress else False)
        try:
            while self.iter < stop_iter:
                self.net.clear_param_diffs()
                if (p.test_interval and self.iter % p.test_interval == 0
                        and (self.iter > 0 or p.test_initialization)):
                    self.test_all()
                    if self.requested_early_exit:
                        break
                if self._callbacks:
                    self._settle_diffs()    # a callback may hold diff arrays from earlier
                for on_start, _ in self._callbacks:
                    if on_start is not None:
                        on_start()
                display = bool(p.display) and self.iter % p.display == 0
                debug = display and p.debug_info
                loss = _F32(0)
                for _ in range(p.iter_size):
                    loss += _F32(self._forward_backward(debug))
                loss /= _F32(p.iter_size)
                self.last_loss = float(loss)
                self._update_smoothed_loss(loss, start_iter, average_loss)
                if display:
                    lapse = time.perf_counter() - timer
                    per_s = (self.iter - iterations_last) / (lapse or 1.0)
                    log.info("Iteration %d (%s iter/s, %ss/%d iters), loss = %s", self.iter,
                             fmt(per_s), fmt(lapse), p.display, fmt(self.smoothed_loss))
                    timer = time.perf_counter()
                    iterations_last = self.iter
                    self._log_outputs(self.net, _output_values(self.net), "Train")
                if self._callbacks:
                    self._settle_diffs()
                for _, on_ready in self._callbacks:
                    if on_ready is not None:
                        on_ready()
                with _sigint_held():
                    self.apply_update()
                    # iter counts the updates done so far.
                    self.iter += 1
                self.curve.add_train(self.iter - 1, self.last_loss, self.smoothed_loss, self.last_lr)
                bar.update(self.iter, self.smoothed_loss, self.last_lr)
                request = self._requested_action()
                if (p.snapshot and self.iter % p.snapshot == 0) or request == SNAPSHOT:
                    self.snapshot()
                if request == STOP:
                    self.requested_early_exit = True
                    break
        finally:
            bar.close()

    def _settle_diffs(self):
        """Carry out the diffs' deferred zeroing and products now.

        Reading ``.diff`` does that, so scripts that read it see Caffe's
        values; a pycaffe callback may instead keep the arrays from before
        and read or change them in place, as it could in Caffe's memory.
        """
        for blob in self.net.learnable_params:
            blob.settle_diff()

    def solve(self, resume_file=None, max_iter=None):
        """Train to ``max_iter`` (Caffe's ``Solver::Solve``), optionally resuming first.

        ``max_iter`` stops at another iteration than the solver's (lr
        policies keep using the solver's ``max_iter``).
        """
        p = self.param
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", p.lr_policy)
        self.requested_early_exit = False
        if resume_file:
            log.info("Restoring previous solver status from %s", resume_file)
            self.restore(resume_file)
        if p.snapshot_after_train:
            # solve() ends with a snapshot: find a missing folder now, not after the run
            self._check_snapshot_folder()
        start_iter = self.iter
        stop = p.max_iter if max_iter is None else int(max_iter)
        self.step(stop - self.iter, _total=stop)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            log.info("Optimization stopped early.")
            self._draw_curve()
            return
        # One more forward to show the loss of the final weights, as Caffe does.
        if p.display and self.iter % p.display == 0:
            loss = _F32(self.net.forward_from_to())
            self._update_smoothed_loss(loss, start_iter, p.average_loss)
            log.info("Iteration %d, loss = %s", self.iter, fmt(self.smoothed_loss))
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        self._draw_curve()
        log.info("Optimization Done.")

    def _update_smoothed_loss(self, loss, start_iter, average_loss):
        loss = _F32(loss)
        if len(self._losses) < average_loss:
            self._losses.append(loss)
            size = len(self._losses)
            self.smoothed_loss = float((_F32(self.smoothed_loss) * _F32(size - 1) + loss) / _F32(size))
        else:
            idx = (self.iter - start_iter) % average_loss
            self.smoothed_loss = float(_F32(self.smoothed_loss)
                                       + (loss - self._losses[idx]) / _F32(average_loss))
            self._losses[idx] = loss

    def _log_outputs(self, net, outputs, kind, divisor=None):
        weights = _blob_loss_weights(net)
        results, index = [], 0
        for name, values in outputs:
            weight = _F32(weights.get(name, 0.0))
            for value in values:
                value = _F32(value)
                if divisor is not None:
                    value = value / _F32(divisor)
                extra = " (* %s = %s loss)" % (fmt(weight), fmt(weight * value)) if weight else ""
                log.info("    %s net output #%d: %s = %s%s", kind, index, name, fmt(value), extra)
                results.append((name, float(value), float(weight)))
                index += 1
        return results

    def _forward_backward(self, debug):
        if not debug:
            return self.net.forward_backward()
        net = self.net
        loss = 0.0
        for li in range(len(net._layers)):
            loss += net.forward_from_to(li, li)
            self._forward_debug(net, li, self._display_names)
        for li in range(len(net._layers) - 1, -1, -1):
            if net.layer_need_backward[li]:
                net.backward_from_to(li, li)
                self._backward_debug(net, li)
        # Caffe's Net::Backward ends a debug pass with the norms of all parameters, as an error
        # line so that it shows even when info lines are hidden
        sums = [sum((_F32(float(f(getattr(b, part)))) for b in net.learnable_params), _F32(0))
                for part in ("data", "diff") for f in (_asum, _sumsq)]
        log.error("    [Backward] All net params (data, diff): L1 norm = (%s, %s); "
                  "L2 norm = (%s, %s)", fmt(sums[0]), fmt(sums[2]),
                  fmt(np.sqrt(sums[1])), fmt(np.sqrt(sums[3])))
        return loss

    def _forward_debug(self, net, li, names):
        lname = net.layer_names[li]
        for name, blob in zip(net.top_names[li], net.top_vecs[li]):
            log.info("    [Forward] Layer %s, top blob %s data: %s", lname, name, fmt(_asum_mean(blob.data)))
        for j, blob in enumerate(net._layers[li].blobs):
            log.info("    [Forward] Layer %s, param blob %s data: %s", lname, names[li][j],
                     fmt(_asum_mean(blob.data)))

    def _backward_debug(self, net, li):
        lname = net.layer_names[li]
        for j, (name, blob) in enumerate(zip(net.bottom_names[li], net.bottom_vecs[li])):
            if net.bottom_need_backward[li][j]:
                log.info("    [Backward] Layer %s, bottom blob %s diff: %s", lname, name,
                         fmt(_asum_mean(blob.diff)))
        layer = net._layers[li]
        for j, blob in enumerate(layer.blobs):
            if layer.param_needs_grad(j):
                log.info("    [Backward] Layer %s, param blob %d diff: %s", lname, j,
                         fmt(_asum_mean(blob.diff)))

    # ------------------------------------------------------------ testing
    def test_all(self):
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(i)
        self._draw_curve()

    def test(self, test_net_id=0):
        """Run ``test_iter`` forward passes of a test net; log and return the mean outputs."""
        p = self.param
        log.info("Iteration %d, Testing net (#%d)", self.iter, test_net_id)
        net = self.test_nets[test_net_id]
        iterations = p.test_iter[test_net_id]
        scores, loss = None, _F32(0)
        names = _param_display_names(net) if p.debug_info else None
        for i in range(iterations):
            request = self._requested_action()
            while request != NONE:
                if request == SNAPSHOT:
                    self.snapshot()
                elif request == STOP:
                    self.requested_early_exit = True
                request = self._requested_action()
            if self.requested_early_exit:
                break
            if p.debug_info:
                iter_loss = 0.0
                for li in range(len(net._layers)):
                    iter_loss += net.forward_from_to(li, li)
                    self._forward_debug(net, li, names)
            else:
                iter_loss = net.forward_from_to()
            if p.test_compute_loss:
                loss += _F32(iter_loss)
            outputs = _output_values(net)
            if scores is None:
                scores = [(name, values.copy()) for name, values in outputs]
            else:
                for (_, acc), (_, values) in zip(scores, outputs):
                    acc += values
        if self.requested_early_exit:
            log.info("Test interrupted.")
            return []
        if p.test_compute_loss:
            loss /= _F32(iterations)
            log.info("Test loss: %s", fmt(loss))
        results = self._log_outputs(net, scores or [], "Test", divisor=iterations)
        self.test_results[test_net_id] = results
        self.curve.add_test(test_net_id, self.iter, results)
        return results

    # ------------------------------------------------------------ update
    def apply_update(self):
        raise NotImplementedError

    # ------------------------------------------------------------ snapshots
    def _snapshot_filename(self, extension):
        return "%s_iter_%d%s" % (self.param.snapshot_prefix, self.iter, extension)

    def snapshot(self):
        """Write the weights and the solver state; returns (model path, state path).

        Both files are written in full before either replaces an older one, so
        the weights and the state on disk stay a pair unless the process dies
        between two renames.
        """
        p = self.param
        hdf5 = p.snapshot_format == _SP.HDF5
        model = self._snapshot_filename(".caffemodel.h5" if hdf5 else ".caffemodel")
        staged = []
        try:
            if hdf5:
                log.info("Snapshotting to HDF5 file %s", model)
                staged.append((_stage_hdf5(model, lambda f: _fill_hdf5_weights(
                    f, self.net, p.snapshot_diff)), model))
            else:
                log.info("Snapshotting to binary proto file %s", model)
                staged.append((stage_bytes(model, self.net.to_proto_bytes(p.snapshot_diff)), model))
            staged.append(self._stage_solver_state(model))
        except BaseException:
            for tmp, _ in staged:
                discard_staged(tmp)
            raise
        _commit(staged)
        self._draw_curve()
        return model, staged[1][1]

    def snapshot_solver_state(self, model_filename):
        """Write the solver state (naming ``model_filename`` as its weights); returns its path."""
        staged = self._stage_solver_state(model_filename)
        _commit([staged])
        return staged[1]

    def _stage_solver_state(self, model_filename):
        if self.param.snapshot_format == _SP.HDF5:
            path = self._snapshot_filename(".solverstate.h5")
            log.info("Snapshotting solver state to HDF5 file %s", path)
            return _stage_hdf5(path, lambda f: self._fill_state_hdf5(f, model_filename)), path
        path = self._snapshot_filename(".solverstate")
        log.info("Snapshotting solver state to binary proto file %s", path)
        return stage_bytes(path, self.solver_state_bytes(model_filename)), path

    def solver_state_bytes(self, model_filename):
        """A serialized SolverState, fields in Caffe's order (iter, learned_net, history, current_step)."""
        head = caffe_pb2.SolverState()
        head.iter = self.iter
        head.learned_net = model_filename
        tail = caffe_pb2.SolverState()
        tail.current_step = self.current_step
        return (head.SerializeToString()
                + b"".join(wire_field(3, blobproto_bytes(h)) for h in self.history)
                + tail.SerializeToString())

    def _fill_state_hdf5(self, f, model_filename):
        f.create_dataset("iter", data=np.array([self.iter], np.int32))
        raw = model_filename.encode() + b"\0"   # NUL-terminated, as H5LTmake_dataset_string
        f.create_dataset("learned_net", data=np.array(raw, dtype="S%d" % len(raw)))
        f.create_dataset("current_step", data=np.array([self.current_step], np.int32))
        group = f.create_group("history")
        for i, h in enumerate(self.history):
            group.create_dataset(str(i), data=_host_f32(h))

    def _learned_net_path(self, learned_net, state_file):
        # Caffe opens learned_net relative to the working directory; when it is not there,
        # look beside the solverstate (a snapshot folder moved as a whole still resumes).
        if os.path.exists(learned_net) or os.path.isabs(learned_net):
            return learned_net
        beside = os.path.join(os.path.dirname(os.path.abspath(state_file)), os.path.basename(learned_net))
        if os.path.exists(beside):
            log.info("learned_net %s is not in the working directory; using %s", learned_net, beside)
            return beside
        return learned_net

    def restore(self, state_file):
        """Resume from a .solverstate (or .solverstate.h5): iter, current_step, history, weights."""
        state_file = os.fspath(state_file)
        if not os.path.exists(state_file):
            raise SolverError("solver state '%s' not found (working directory %s)"
                              % (state_file, os.getcwd()))
        if state_file.endswith(".h5"):
            h5py = _open_h5py("reading %s" % state_file)
            with h5py.File(state_file, "r") as f:
                iteration = int(np.asarray(f["iter"]).ravel()[0])
                learned = None
                if "learned_net" in f:
                    raw = f["learned_net"][()]
                    learned = (raw.decode() if isinstance(raw, bytes) else str(raw)).rstrip("\0")
                step = int(np.asarray(f["current_step"]).ravel()[0]) if "current_step" in f else 0
                group = f["history"]
                history = [np.asarray(group[str(i)], np.float32) for i in range(len(group))]
        else:
            state = read_binary(state_file, caffe_pb2.SolverState())
            iteration = state.iter
            learned = state.learned_net if state.HasField("learned_net") else None
            step = state.current_step
            history = [blobproto_to_array(h) for h in state.history]
        self.iter = iteration
        if learned:
            copy_weights(self.net, self._learned_net_path(learned, state_file))
        self.current_step = step
        if len(history) != len(self.history):
            raise SolverError("%s: Incorrect length of history blobs: the state has %d, this %s "
                              "solver needs %d" % (state_file, len(history), self.type, len(self.history)))
        log.info("%s: restoring history", "SGDSolver")
        for blob in self.net.learnable_params:
            blob.diff   # a diff promised as a copy of the history gets it now
        for i, (target, values) in enumerate(zip(self.history, history)):
            if values.size != target.size:
                raise SolverError("%s: history blob %d has %d values; the parameter it belongs to has "
                                  "%d" % (state_file, i, values.size, target.size))
            values = values.reshape(target.shape).astype(np.float32)
            target[...] = self.net.xp.asarray(values) if self.net.xp is not np else values

    def draw_curve_beside_snapshots(self):
        """Draw the training curve to ``<snapshot_prefix>_curve.png`` at each test and snapshot."""
        p = self.param
        self.curve_path = (p.snapshot_prefix + "_curve.png") if p.snapshot_prefix else None

    def _draw_curve(self):
        if self.curve_path:
            try:
                self.curve.draw(self.curve_path)
            except OSError as exc:
                log.warning("could not write the training curve %s: %s", self.curve_path, exc)


@register_solver("SGD")
class SGDSolver(Solver):
    """Stochastic gradient descent with momentum; the base of every update rule.

    Reads ``base_lr``, ``lr_policy`` (+ ``gamma``, ``power``, ``stepsize``,
    ``stepvalue``, ``max_iter``), ``momentum``, ``weight_decay``,
    ``regularization_type``, ``clip_gradients``, ``iter_size``.
    History: ``h = momentum * h + local_rate * g``; step ``h``.
    """

    # ------------------------------------------------------------ lr policy
    def get_learning_rate(self):
        """Caffe's GetLearningRate (float32); step/multistep update ``current_step``.

        Out of range it gives what Caffe's C math gives, never an exception: an
        overflowing power is inf, a sigmoid far before its step is 0, and poly
        past max_iter is pow(negative, power), NaN for a fractional power.
        """
        p = self.param
        base, it, policy = p.base_lr, self.iter, p.lr_policy
        if policy == "fixed":
            rate = base
        elif policy == "step":
            self.current_step = it // p.stepsize
            rate = base * _c_pow(p.gamma, self.current_step)
        elif policy == "exp":
            rate = base * _c_pow(p.gamma, it)
        elif policy == "inv":
            rate = base * _c_pow(float(_F32(1) + _F32(p.gamma) * _F32(it)), -p.power)
        elif policy == "multistep":
            if self.current_step < len(p.stepvalue) and it >= p.stepvalue[self.current_step]:
                self.current_step += 1
                log.info("MultiStep Status: Iteration %d, step = %d", it, self.current_step)
            rate = base * _c_pow(p.gamma, self.current_step)
        elif policy == "poly":
            if it > p.max_iter and not self._warned_poly:
                self._warned_poly = True
                log.warning("lr_policy poly past max_iter (%d > %d): the rate is Caffe's "
                            "base_lr * (1 - iter/max_iter) ^ power, NaN or negative from here",
                            it, p.max_iter)
            rate = base * _c_pow(float(_F32(1) - _F32(it) / _F32(p.max_iter)), p.power)
        elif policy == "sigmoid":
            x = float(-_F32(p.gamma) * (_F32(it) - _F32(p.stepsize)))
            # Caffe's float exp overflows to inf there, and 1 / (1 + inf) is 0
            rate = base * (1.0 / (1.0 + math.exp(x))) if x < 88.7 else 0.0
        else:
            raise SolverError("Unknown learning rate policy: %s" % policy)
        return _F32(rate)

    # ------------------------------------------------------------ the update
    def apply_update(self):
        """Caffe's ApplyUpdate: clip, then per param normalize, regularize,
        compute the update value (left in the diff, as Caffe does) and step.

        Everything after the clip runs in one chunked pass per param (see
        :mod:`protonet.elementwise`): each chunk is read from memory once and
        its ufuncs run in cache; no param-sized temporaries exist. Plain
        momentum SGD fuses its passes further: its update value is the
        history itself, so the diff only promises a copy of it
        (``Blob.defer_diff_copy``), made if somebody reads it; on NumPy's
        OpenBLAS it runs Caffe's own cblas calls on OpenBLAS's threads, and
        a gradient still promised as a low-rank product (fc6, fc7: see
        ``Blob.defer_diff_product``) goes into the history with one GEMM,
        ``h = rate * a @ b + momentum * h``, never written out as a diff.
        """
        p = self.param
        rate = self.get_learning_rate()
        self.last_lr = float(rate)
        if p.display and self.iter % p.display == 0:
            log.info("Iteration %d, lr = %s", self.iter, fmt(rate))
        self.clip_gradients()
        params = self.net.learnable_params
        n = len(params)
        norm = _F32(1) / _F32(p.iter_size) if p.iter_size != 1 else None
        constants = self.update_constants()
        fused = type(self).compute_update_value is SGDSolver.compute_update_value
        blas = (_blas.get(self.net.dtype) if fused and self.net.xp is np
                and p.regularization_type == "L2" else None)
        jobs = []
        for i, blob in enumerate(params):
            decay = _F32(p.weight_decay) * _F32(self.net.params_weight_decay[i])
            if decay and p.regularization_type not in ("L2", "L1"):
                raise SolverError("%s: Unknown regularization type: %s (use L2 or L1)"
                                  % (self.source, p.regularization_type))
            local_rate = self._local_rate(i, rate)
            product = blob.pending_product() if blas is not None else None
            if product is not None:
                # h = rate * (a @ b) + m * h, then h += rate*decay * w
                # (Caffe adds the decay to g first: the same sum, rounded
                # in another order), w -= h.
                w, h = blob.data.reshape(-1), self.history[i].reshape(-1)
                a, bt = product
                scale = local_rate if norm is None else local_rate * norm
                blas.gemm(a, bt.T, self.history[i].reshape(a.shape[0], bt.shape[0]), scale, constants)
                program = [("axpy", local_rate * decay, w, h)] if decay else []
                blas.run(program + [("axpy", -1.0, h, w)])
                continue
            arrays = [a.reshape(-1) for a in [blob.data, blob.diff]
                      + [self.history[k * n + i] for k in range(self.history_sets)]]
            if blas is not None:
                # Caffe's own cblas calls: scal (iter_size), axpy (decay),
                # axpby (momentum), axpy (data -= diff, the diff being h).
                w, g, h = arrays
                program = [("scal", norm, g)] if norm is not None else []
                if decay:
                    program.append(("axpy", decay, w, g))
                program += [("axpby", local_rate, g, constants, h), ("axpy", -1.0, h, w)]
                blas.run(program)
            else:
                jobs.append((arrays, (fused, norm, decay, local_rate, constants)))
        elementwise.run(self.net.xp, jobs, self._update_chunk)
        if fused:
            for i, blob in enumerate(params):
                blob.defer_diff_copy(self.history[i])

    def _update_chunk(self, arrays, extra, scratch):
        w, g, hist = arrays[0], arrays[1], arrays[2:]
        fused, norm, decay, local_rate, constants = extra
        xp = backend.xp_of(g)
        if norm is not None:
            g *= norm
        if fused:
            # Caffe's passes (g += decay*w; h = m*h + rate*g; diff = h;
            # w -= diff) with the same roundings, g left as it is.
            s, h = scratch[0], hist[0]
            if self.param.regularization_type == "L2" and cuda_kernels.supported(w, g, h):
                cuda_kernels.sgd_update(w, g, h, decay, local_rate, constants)   # one pass on a GPU
                return
            if decay:
                self.regularize(xp, w, g, decay, s, out=s)
                s *= local_rate
            else:
                xp.multiply(g, local_rate, out=s)
            h *= constants
            h += s
            w -= h
            return
        if decay:
            self.regularize(xp, w, g, decay, scratch[0])
        self.compute_update_value(xp, g, hist, local_rate, constants, scratch)
        w -= g

    def update_constants(self):
        """Rule-wide constants of this iteration, passed to compute_update_value."""
        return _F32(self.param.momentum)

    def clip_gradients(self):
        clip = _F32(self.param.clip_gradients)
        if clip < 0:
            return
        params = self.net.learnable_params
        sumsq = _F32(0)
        for blob in params:
            d = blob.diff.ravel()
            sumsq += _F32(float(backend.xp_of(d).dot(d, d)))
        l2norm = _F32(np.sqrt(sumsq))
        if l2norm > clip:
            scale = clip / l2norm
            log.info("Gradient clipping: scaling down gradients (L2 norm %s > %s) by scale factor %s",
                     fmt(l2norm), fmt(clip), fmt(scale))
            for blob in params:
                diff = blob.diff
                diff *= scale

    def regularize(self, xp, w, g, decay, temp, out=None):
        """g += decay * w (L2) or decay * sign(w) (L1) on one chunk (into ``out`` if given)."""
        if self.param.regularization_type == "L2":
            xp.multiply(w, decay, out=temp)
        else:
            xp.sign(w, out=temp)
            temp *= decay
        xp.add(g, temp, out=g if out is None else out)

    def _local_rate(self, i, rate):
        return _F32(rate) * _F32(self.net.params_lr[i])

    @staticmethod
    def _axpby(xp, a, x, b, y, scratch):
        """Caffe's caffe_cpu_axpby: y = b*y, then y += a*x."""
        y *= b
        xp.multiply(x, a, out=scratch)
        y += scratch

    def compute_update_value(self, xp, g, hist, rate, constants, scratch):
        """Turn the gradient chunk ``g`` into the step, updating the history chunks ``hist``."""
        h = hist[0]
        self._axpby(xp, rate, g, constants, h, scratch[0])
        xp.copyto(g, h)


@register_solver("Nesterov")
class NesterovSolver(SGDSolver):
    """Nesterov's accelerated gradient: ``h' = m h + lr g``; step ``(1+m) h' - m h``."""

    def compute_update_value(self, xp, g, hist, rate, m, scratch):
        h, (upd, tmp) = hist[0], scratch
        xp.copyto(upd, h)
        self._axpby(xp, rate, g, m, h, tmp)
        self._axpby(xp, _F32(1) + m, h, -m, upd, tmp)
        xp.copyto(g, upd)


@register_solver("AdaGrad")
class AdaGradSolver(SGDSolver):
    """AdaGrad: ``h += g^2``; step ``lr g / (sqrt(h) + delta)``. No momentum."""

    def _check_settings(self):
        super()._check_settings()
        if self.param.momentum != 0:
            raise SolverError("%s: Momentum cannot be used with AdaGrad." % self.source)

    def update_constants(self):
        return _F32(self.param.delta)

    def compute_update_value(self, xp, g, hist, rate, delta, scratch):
        h, upd = hist[0], scratch[0]
        xp.multiply(g, g, out=upd)
        h += upd
        xp.sqrt(h, out=upd)
        upd += delta
        xp.divide(g, upd, out=upd)
        xp.multiply(upd, rate, out=g)


@register_solver("RMSProp")
class RMSPropSolver(SGDSolver):
    """RMSProp: ``h = d h + (1-d) g^2``; step ``lr g / (sqrt(h) + delta)``; d = rms_decay."""

    def _check_settings(self):
        super()._check_settings()
        if self.param.momentum != 0:
            raise SolverError("%s: Momentum cannot be used with RMSProp." % self.source)
        if not 0 <= self.param.rms_decay < 1:
            raise SolverError("%s: rms_decay should lie between 0 and 1 (got %s)."
                              % (self.source, fmt(self.param.rms_decay)))

    def update_constants(self):
        return _F32(self.param.rms_decay), _F32(self.param.delta)

    def compute_update_value(self, xp, g, hist, rate, constants, scratch):
        d, delta = constants
        h, (upd, tmp) = hist[0], scratch
        xp.multiply(g, g, out=upd)
        self._axpby(xp, _F32(1) - d, upd, d, h, tmp)
        xp.sqrt(h, out=upd)
        upd += delta
        xp.divide(g, upd, out=upd)
        xp.multiply(upd, rate, out=g)


@register_solver("AdaDelta")
class AdaDeltaSolver(SGDSolver):
    """AdaDelta: gradient history h1 and update history h2 (``momentum`` decays both);
    step ``lr * g * sqrt((h2 + delta) / (h1 + delta))``. History: N blobs h1, then N h2."""

    history_sets = 2

    def update_constants(self):
        return _F32(self.param.momentum), _F32(self.param.delta)

    def compute_update_value(self, xp, g, hist, rate, constants, scratch):
        m, delta = constants
        (h1, h2), (upd, tmp) = hist, scratch
        xp.multiply(g, g, out=upd)
        self._axpby(xp, _F32(1) - m, upd, m, h1, upd)
        tmp.fill(delta)
        xp.add(tmp, h2, out=upd)
        xp.add(tmp, h1, out=tmp)
        xp.divide(upd, tmp, out=upd)
        xp.sqrt(upd, out=upd)
        g *= upd
        xp.multiply(g, g, out=upd)
        self._axpby(xp, _F32(1) - m, upd, m, h2, upd)
        g *= rate


@register_solver("Adam")
class AdamSolver(SGDSolver):
    """Adam: ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``; step
    ``lr * sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + delta)`` with t = iter + 1;
    b1 = momentum, b2 = momentum2. History: N blobs m, then N v."""

    history_sets = 2

    def update_constants(self):
        p = self.param
        b1, b2 = _F32(p.momentum), _F32(p.momentum2)
        t = self.iter + 1
        # Caffe computes the correction in double (pow of a float by an int) and stores a float.
        correction = _F32(math.sqrt(1.0 - math.pow(float(b2), t)) / (1.0 - math.pow(float(b1), t)))
        return b1, b2, correction, _F32(p.delta)

    def compute_update_value(self, xp, g, hist, rate, constants, scratch):
        b1, b2, correction, delta = constants
        (m, v), tmp = hist, scratch[0]
        self._axpby(xp, _F32(1) - b1, g, b1, m, tmp)
        xp.multiply(g, g, out=tmp)
        self._axpby(xp, _F32(1) - b2, tmp, b2, v, tmp)
        xp.sqrt(v, out=tmp)
        tmp += delta
        xp.divide(m, tmp, out=tmp)
        xp.multiply(tmp, rate * correction, out=g)
