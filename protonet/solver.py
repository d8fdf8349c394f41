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

Modules: this one has the Solver (loop, tests, smoothed loss, output logging,
callbacks) and the registry of solver types; the update rules are in
:mod:`protonet.update_rules`, snapshots in :mod:`protonet.snapshot`, HDF5
weights in :mod:`protonet.hdf5_weights`, signals in :mod:`protonet.signals`,
the training curve in :mod:`protonet.curve`, data-parallel hooks in
:mod:`protonet.parallel`. The names importable from here before that split
still are.
"""
import math
import os
import time

import numpy as np
from google.protobuf import text_format

from . import backend, comm, rng
from .curve import BackgroundDrawer, TrainingCurve, iterations_per_epoch
from .hdf5_weights import copy_weights, host_f32 as _host_f32, load_hdf5_weights, open_h5py, \
    save_hdf5_weights
from .io import SolverError, check_finite, read_net, read_solver, remove_stale_staged, \
    discard_staged, stage_bytes
from .log import ProgressBar, ensure_handler, fmt, get_logger
from .net import Net
from .parallel import Solo
from .proto import caffe_pb2
from .signals import NONE, SNAPSHOT, STOP, SignalHandler, _sigint_held
from .snapshot import Snapshots
from .upgrade import upgrade_solver

__all__ = ["Solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
           "AdaDeltaSolver", "AdamSolver", "SolverError", "DivergedError", "SignalHandler", "get_solver",
           "solver_types", "NONE", "STOP", "SNAPSHOT", "LR_POLICIES",
           "save_hdf5_weights", "load_hdf5_weights", "copy_weights", "TrainingCurve"]

log = get_logger()

_F32 = np.float32
_SP = caffe_pb2.SolverParameter

# Names that live in protonet.update_rules, which imports this module: looked up when asked for
# (``from protonet.solver import SGDSolver`` keeps working without an import circle).
_UPDATE_RULE_NAMES = ("SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
                      "AdaDeltaSolver", "AdamSolver", "LR_POLICIES")


def __getattr__(name):
    if name in _UPDATE_RULE_NAMES:
        return getattr(_load_update_rules(), name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


def _load_update_rules():
    from . import update_rules  # importing registers the built-in rules
    return update_rules


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
    _load_update_rules()
    return sorted(_SOLVERS)


def _load_param(source):
    """(upgraded SolverParameter copy, name of where it came from)."""
    if isinstance(source, _SP):
        param = _SP()
        param.CopyFrom(source)
        check_finite(param, "<SolverParameter>")
        upgrade_solver(param, source="<SolverParameter>")
        return param, "<SolverParameter>"
    path = os.fspath(source)
    if not os.path.exists(path):
        raise SolverError("solver file '%s' not found (working directory %s)" % (path, os.getcwd()))
    return read_solver(path), path


class DivergedError(SolverError):
    """Training produced a NaN or infinite loss; the message names the iteration and the
    first layer whose output went non-finite. Nothing was updated or snapshotted for that
    iteration. (Caffe would train on, writing NaN snapshots.)"""


def get_solver(source, source_name=None):
    """The solver a solver.prototxt (or a SolverParameter) asks for, by its ``type``."""
    param, name = _load_param(source)
    _load_update_rules()
    cls = _SOLVERS.get(param.type)
    if cls is None:
        raise SolverError("%s: unknown solver type '%s' (known types: %s)"
                          % (source_name or name, param.type, ", ".join(solver_types())))
    return cls(param, source_name=source_name or name)


# ---------------------------------------------------------------- helpers
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



def _asum(array):
    return float(backend.xp_of(array).abs(array).sum(dtype=np.float64))


def _sumsq(array):
    flat = array.reshape(-1)
    return float(flat.astype(np.float64) @ flat.astype(np.float64)) if flat.size else 0.0


def _asum_mean(array):
    n = array.size
    return _asum(array) / n if n else 0.0



# ---------------------------------------------------------------- the solver
class Solver(Snapshots):
    """Caffe's ``Solver``: nets, the training loop, tests, snapshots.

    ``Solver(param)`` with a solver.prototxt path or a SolverParameter. Update
    rules are subclasses (``get_solver`` picks one by ``type``).

    Attributes: ``net`` (train net), ``test_nets`` (their params are the
    train net's), ``iter``, ``current_step``, ``param``, ``history`` (the
    arrays a solverstate stores), ``smoothed_loss``, ``curve``
    (:class:`TrainingCurve`), ``curve_path`` (a PNG of it written at each
    test and snapshot; None, the default, writes none: see
    :meth:`draw_curve_beside_snapshots`), ``events_dir`` (where :meth:`solve`
    writes TensorBoard events; None, the default, writes none: see
    :meth:`write_events_beside_snapshots`), ``progress`` (terminal progress bar,
    default on when stderr is a terminal), ``action_request_function``
    (a callable returning "none"/"stop"/"snapshot"; see :class:`SignalHandler`),
    ``parallel`` (the data-parallel strategy, :class:`protonet.parallel.Solo`
    by default: see :mod:`protonet.parallel`).
    """

    type = None
    #: history arrays per learnable param (AdaDelta and Adam keep two)
    history_sets = 1

    def __init__(self, param, source_name=None, parallel=None):
        ensure_handler()
        self.param, name = _load_param(param)
        self.source = source_name or name
        p = self.param
        log.info("Initializing solver from parameters: \n%s", text_format.MessageToString(p))
        if p.average_loss < 1:
            raise SolverError("%s: average_loss should be at least 1, got %d" % (self.source, p.average_loss))
        if p.iter_size < 1:
            raise SolverError("%s: iter_size should be at least 1, got %d" % (self.source, p.iter_size))
        if not any(p.HasField(f) for f in ("net", "net_param", "train_net", "train_net_param")):
            # before the other checks: an empty file would first be told its lr_policy is wrong
            raise SolverError("%s: the net is missing: SolverParameter must specify a train net "
                              "using one of these fields: net, net_param, train_net, "
                              "train_net_param (e.g. net: \"train_val.prototxt\")" % self.source)
        self._check_settings()
        self._check_snapshot_prefix()
        if p.snapshot_prefix:
            for path in remove_stale_staged(p.snapshot_prefix):
                log.info("Removed %s, a snapshot file an interrupted run was writing", path)
        if p.random_seed >= 0:
            # as Caffe's Solver::Init: random_seed + solver_rank
            rng.set_random_seed(p.random_seed + comm.solver_rank())
        self.net = self._init_train_net()
        # as Caffe, only the root solver of several has test nets (only it tests)
        self.test_nets = self._init_test_nets() if comm.solver_rank() == 0 else []
        for path in p.weights:
            log.info("Finetuning from %s", path)
            copy_weights(self.net, path)
            for test_net in self.test_nets:
                copy_weights(test_net, path)
        self._parallel, self._layer_hook = Solo(), None
        self.parallel = parallel if parallel is not None else Solo()
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
        self.events_dir = None      # nor TensorBoard events: see write_events_beside_snapshots
        self.events = None          # the open EventWriter while solve() runs
        self._samplers = None       # per test net: the SegmentationSamples drawn as overlays
        self._drawer = None         # draws the curve PNG in a thread while solve() runs
        self._warned_poly = False
        self.progress = True
        self._display_names = _param_display_names(self.net)
        self._pre_solve()

    # ------------------------------------------------------------ setup
    def _check_settings(self):
        """Settings the loop and snapshots need (update rules check theirs first)."""
        p, src = self.param, self.source
        if p.snapshot_format not in (_SP.BINARYPROTO, _SP.HDF5):
            raise SolverError("%s: unsupported snapshot_format %r" % (src, p.snapshot_format))
        if p.snapshot_format == _SP.HDF5:
            open_h5py("%s: snapshot_format: HDF5" % src)

    def _check_snapshot_prefix(self):
        p = self.param
        if not p.snapshot:
            return          # as Caffe: a script that only calls step() may never write one
        if not p.HasField("snapshot_prefix"):
            raise SolverError("%s: snapshot is set (every %d iterations) but snapshot_prefix is not"
                              % (self.source, p.snapshot))
        self._check_snapshot_folder()

    def _check_snapshot_folder(self):
        # As Caffe, by writing a file there: os.access says yes to /proc, to a read-only
        # mount for root, and to a full disk.
        p = self.param
        folder = os.path.dirname(p.snapshot_prefix) or "."
        why = None if os.path.isdir(folder) else "no such folder"
        if why is None:
            try:
                discard_staged(stage_bytes(p.snapshot_prefix + "_probe", b"protonet"))
            except OSError as exc:
                why = exc.strerror or str(exc)
        if why is not None:
            raise SolverError("%s: cannot write to snapshot_prefix '%s' (%s). Make sure that the "
                              "directory exists and is writeable."
                              % (self.source, p.snapshot_prefix, why))

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

    # ------------------------------------------------------------ data parallelism
    @property
    def parallel(self):
        """The data-parallel strategy (:mod:`protonet.parallel`); setting one broadcasts the
        root's weights and, for a ``layer_wise`` strategy, hooks it after each layer's backward."""
        return self._parallel

    @parallel.setter
    def parallel(self, strategy):
        hooks = self.net.after_backward_hooks
        if self._layer_hook is not None and self._layer_hook in hooks:
            hooks.remove(self._layer_hook)
        self._layer_hook = None
        self._parallel = strategy
        strategy.attach(self)
        if getattr(strategy, "layer_wise", False):
            net = self.net
            self._layer_hook = lambda li: strategy.on_layer_backward(net, li)
            hooks.append(self._layer_hook)
        strategy.broadcast_params(self.net)

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
        root = self.parallel.is_root
        bar = ProgressBar(_total if _total is not None else stop_iter, start=self.iter,
                          enabled=None if self.progress and root else False)
        try:
            while self.iter < stop_iter:
                self.net.clear_param_diffs()
                if (p.test_interval and self.iter % p.test_interval == 0
                        and (self.iter > 0 or p.test_initialization)):
                    if root:
                        self.test_all()     # the test nets run on the root only
                    # a stop asked for during the tests ends every rank's loop
                    asked = STOP if self.requested_early_exit else NONE
                    if self.parallel.agree_on_action(asked) == STOP:
                        self.requested_early_exit = True
                    if self.requested_early_exit:
                        break
                for on_start, _ in self._callbacks:
                    if on_start is not None:
                        on_start()
                display = bool(p.display) and self.iter % p.display == 0
                debug = display and p.debug_info and root
                loss = _F32(0)
                for k in range(p.iter_size):
                    self.parallel.begin_pass(k, p.iter_size)
                    loss += _F32(self._forward_backward(debug))
                loss /= _F32(p.iter_size)
                self.last_loss = float(loss)
                if not math.isfinite(self.last_loss):
                    raise self._diverged()     # before the update: the weights stay finite
                self._update_smoothed_loss(loss, start_iter, average_loss)
                if display and root:
                    lapse = time.perf_counter() - timer
                    per_s = (self.iter - iterations_last) / (lapse or 1.0)
                    log.info("Iteration %d (%s iter/s, %ss/%d iters), loss = %s", self.iter,
                             fmt(per_s), fmt(lapse), p.display, fmt(self.smoothed_loss))
                    timer = time.perf_counter()
                    iterations_last = self.iter
                    self._log_outputs(self.net, _output_values(self.net), "Train")
                self.parallel.reduce_gradients(self.net)
                for _, on_ready in self._callbacks:
                    if on_ready is not None:
                        on_ready()
                with _sigint_held():
                    self.apply_update()
                    # iter counts the updates done so far.
                    self.iter += 1
                if root:
                    self.curve.add_train(self.iter - 1, self.last_loss, self.smoothed_loss,
                                         self.last_lr)
                    if self.events is not None:
                        self.events.on_train(self.iter - 1, self.last_loss, self.smoothed_loss,
                                             self.last_lr)
                bar.update(self.iter, self.smoothed_loss, self.last_lr)
                request = self.parallel.agree_on_action(self._requested_action())
                if root and ((p.snapshot and self.iter % p.snapshot == 0) or request == SNAPSHOT):
                    self.snapshot()
                if request == STOP:
                    self.requested_early_exit = True
                    break
        finally:
            bar.close()

    def _diverged(self):
        """The error for a non-finite loss, naming the first layer whose output is not finite.

        Looked for only now, in the tops the last forward left: layer order is data
        order, so the first non-finite top is where the NaN or inf began.
        """
        net, xp = self.net, self.net.xp
        culprit = ""
        for li, (layer, tops) in enumerate(zip(net.layers, net.top_vecs)):
            bad = [name for name, top in zip(net.top_names[li], tops)
                   if top.count and not bool(xp.isfinite(top.data).all())]
            if bad:
                params = [j for j, blob in enumerate(layer.blobs)
                          if not bool(xp.isfinite(blob.data).all())]
                culprit = ("; the first layer whose output is not finite is '%s' (type %s, top %s)%s"
                           % (net.layer_names[li], layer.type, ", ".join("'%s'" % b for b in bad),
                              ", whose param(s) %s already hold NaN or inf"
                              % ", ".join(map(str, params)) if params else ""))
                break
        return DivergedError(
            "%s: iteration %d: the loss is %s%s. Training stopped before this update, without a "
            "snapshot of it (snapshots written so far are kept). Common causes: base_lr too high "
            "(try 10x lower, or clip_gradients), or inputs with NaN/inf (check the data)"
            % (self.source, self.iter, fmt(self.last_loss), culprit))

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
            self.restore(resume_file)       # broadcasts the restored weights
        else:
            self.parallel.broadcast_params(self.net)
        root = self.parallel.is_root
        if p.snapshot_after_train:
            # solve() ends with a snapshot: find a missing folder now, not after the run
            self._check_snapshot_folder()
        if root:
            self._open_events()
            self._drawer = BackgroundDrawer()
        try:
            self._solve(max_iter)
        finally:
            drawer, self._drawer = self._drawer, None
            if drawer is not None:
                drawer.wait()           # the picture is on disk when solve() returns
            if self.events is not None:
                self.events.close()
                self.events = None

    def _solve(self, max_iter):
        p = self.param
        root = self.parallel.is_root
        start_iter = self.iter
        stop = p.max_iter if max_iter is None else int(max_iter)
        self.step(stop - self.iter, _total=stop)
        if root and p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            log.info("Optimization stopped early.")
            self._draw_curve()
            return
        # One more forward to show the loss of the final weights, as Caffe does.
        if root and p.display and self.iter % p.display == 0:
            loss = _F32(self.net.forward_from_to())
            self._update_smoothed_loss(loss, start_iter, p.average_loss)
            log.info("Iteration %d, loss = %s", self.iter, fmt(self.smoothed_loss))
        if root and p.test_interval and self.iter % p.test_interval == 0:
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
        sums = [sum((_F32(float(f(b.data if part == "data" else b.engine_diff())))
                     for b in net.learnable_params), _F32(0))
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
                         fmt(_asum_mean(blob.engine_diff())))
        layer = net._layers[li]
        for j, blob in enumerate(layer.blobs):
            if layer.param_needs_grad(j):
                log.info("    [Backward] Layer %s, param blob %d diff: %s", lname, j,
                         fmt(_asum_mean(blob.engine_diff())))

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
        # As Caffe's Solver::Test: the test net takes the trained weights only when it tests;
        # until then it keeps its own fill (a seeded run's later draws)
        net.share_with(self.net)
        iterations = p.test_iter[test_net_id]
        samples = self._overlay_samples(test_net_id)
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
            if samples is not None:
                samples.take(net)
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
        if self.events is not None:
            self.events.on_test(test_net_id, self.iter, results)
            if samples is not None:
                self.events.on_overlays(test_net_id, self.iter, samples.samples)
        return results

    def _overlay_samples(self, test_net_id):
        """The SegmentationSamples to fill during this test (None: nothing to draw)."""
        if self.events is None:
            return None
        if self._samplers is None:
            from .tensorboard import SegmentationSamples
            self._samplers = [SegmentationSamples.find(net) for net in self.test_nets]
        sampler = self._samplers[test_net_id]
        if sampler is not None:
            sampler.reset()
        return sampler

    # ------------------------------------------------------------ update
    def apply_update(self):
        raise NotImplementedError


    # ------------------------------------------------------------ curve and events
    def draw_curve_beside_snapshots(self, iters_per_epoch=None):
        """Draw the training curve to ``<snapshot_prefix>_curve.png`` at each test and snapshot.

        Its history goes to ``<snapshot_prefix>_curve.json`` beside it, which a
        resumed run (:meth:`restore`) reads back up to its iteration. The x axis
        is in epochs when ``iters_per_epoch`` is given or the train net's LMDB
        tells it.
        """
        p = self.param
        self.curve_path = (p.snapshot_prefix + "_curve.png") if p.snapshot_prefix else None
        self.curve.iters_per_epoch = (iters_per_epoch if iters_per_epoch is not None
                                      else iterations_per_epoch(p, self.net, self.parallel.count))
        if self.iter > 0:
            self._reload_curve()

    def _curve_history_path(self):
        return self.curve_path[:-len(".png")] + ".json" if self.curve_path else None

    def _reload_curve(self):
        history = self._curve_history_path()
        if history and self.parallel.is_root and os.path.exists(history):
            try:
                self.curve.load(history, before=self.iter)
            except SolverError as exc:    # a picture's history is no reason to stop a resume
                log.warning("%s; the training curve starts again here", exc)
                return
            log.info("Training curve history up to iteration %d read from %s", self.iter, history)

    def _draw_curve(self):
        if not self.curve_path or not self.parallel.is_root:
            return
        try:
            # the history now, in step with the snapshot a resume will start from
            self.curve.save(self._curve_history_path())
        except OSError as exc:
            log.warning("could not write the training curve's history %s: %s",
                        self._curve_history_path(), exc)
        if not self.curve.iters or not self.curve.can_draw():
            return
        if self._drawer is not None:
            self._drawer.request(self.curve.copy(), self.curve_path)
            return
        try:
            self.curve.draw(self.curve_path)
        except OSError as exc:
            log.warning("could not write the training curve %s: %s", self.curve_path, exc)

    def write_events_beside_snapshots(self, logdir=None):
        """Write TensorBoard events to ``logdir`` (default: the snapshots' folder) while
        :meth:`solve` runs; ``tensorboard --logdir`` that folder, or its parent to
        compare runs. Needs tensorboardX (``pip install "protonet[tensorboard]"``);
        without it training goes on and says so once. See :mod:`protonet.tensorboard`."""
        p = self.param
        if logdir is None:
            logdir = os.path.dirname(p.snapshot_prefix) if p.snapshot_prefix else ""
        self.events_dir = logdir or "."

    def _open_events(self):
        if not self.events_dir or self.events is not None:
            return
        from .tensorboard import open_writer, run_texts
        run = os.path.basename(self.param.snapshot_prefix) if self.param.snapshot_prefix else None
        try:
            self.events = open_writer(self.events_dir, start_iter=self.iter, run=run)
        except OSError as exc:      # curves for people are no reason to stop the training
            log.warning("TensorBoard events are not written to %s: %s", self.events_dir, exc)
        if self.events is None:
            return
        log.info("TensorBoard events in %s (tensorboard --logdir %s)", self.events_dir,
                 self.events_dir)
        for tag, text in run_texts(self.param):
            self.events.on_text(tag, text)

