"""Data-parallel training: the one place where a solver meets other processes.

A solver holds one strategy object, ``solver.parallel`` (:class:`Solo`, one
process, by default; pass another as ``Solver(param, parallel=...)`` or
assign it before training). Every rank builds the same solver from the same
files and runs the same loop on its own share of the data; the solver calls
the strategy at these points, and with :class:`Solo` each call does nothing:

``broadcast_params(net)``
    Make every rank's parameter values the root's (``net.learnable_params``,
    in place). Called after the weights are loaded (``weights:`` in the
    solver), after ``restore()``, and at the start of ``solve()``.
``on_layer_backward(net, layer_index)``
    Called after each layer's backward (from ``net.after_backward_hooks``)
    when the strategy sets ``layer_wise = True``: a strategy may start
    reducing that layer's param diffs (``net._layers[layer_index].blobs``)
    while the layers below still run backward, as Caffe's NCCL
    ``layer_wise_reduce``. Such a strategy must finish those reductions in
    ``reduce_gradients``.
``reduce_gradients(net)``
    Called once per iteration after the ``iter_size`` forward/backward
    passes and before the ``on_gradients_ready`` callbacks and
    ``apply_update``: sum every ``net.learnable_params`` diff over the ranks
    and scale it by ``1 / count`` (Caffe's NCCL::on_gradients_ready), so
    each rank applies the same update to the same weights.
``agree_on_action(action)``
    Called once per iteration (and per test batch) with this rank's signal
    request (``"none"``, ``"stop"`` or ``"snapshot"``, see
    :mod:`protonet.signals`); returns the action every rank takes, so all
    stop or snapshot together (for example the root's, broadcast).

Attributes: ``rank`` (this process, 0 ... count-1), ``count`` (how many),
``is_root`` (``rank == 0``: only the root logs iteration lines, runs the
test nets, writes snapshots and draws the training curve; the others train
silently) and ``layer_wise`` (see above).

A real strategy implements the same names. Over MPI (mpi4py):
``comm.Bcast`` / ``comm.Allreduce(MPI.IN_PLACE, ...)`` on host arrays (or
CUDA-aware buffers), ``comm.bcast`` for the action. Over NCCL (CuPy's
``cupy.cuda.nccl``): a communicator made from a unique id shared by the
ranks, ``bcast`` / ``allReduce`` on the device arrays' pointers on a stream,
synchronised before ``apply_update``. Read a diff to reduce with
``blob.engine_diff()``, which carries out what is deferred (the public
``blob.diff`` would also hand the array out and end the lazy forms).
"""

import time

import numpy as np

from .signals import NONE, SNAPSHOT, STOP

__all__ = ["Solo", "Unlinked", "DataParallel"]


class Solo:
    """One process: nothing to share. The default strategy of every solver."""

    rank = 0
    count = 1
    is_root = True
    layer_wise = False

    def attach(self, solver):
        """The solver takes this strategy (before its first ``broadcast_params``)."""

    def broadcast_params(self, net):
        """Make every rank's parameter values the root's (here: there is only this one)."""

    def begin_pass(self, index, passes):
        """The solver starts forward/backward pass ``index`` of ``passes`` (``iter_size``)."""

    def on_layer_backward(self, net, layer_index):
        """A layer's param diffs are ready (only called when ``layer_wise`` is true)."""

    def reduce_gradients(self, net):
        """Sum the param diffs over the ranks and scale by 1/count (here: they are all there is)."""

    def agree_on_action(self, action):
        """The signal action every rank takes; one rank's own request here."""
        return action


class Unlinked(Solo):
    """Rank ``rank`` of ``count`` solvers that are not (yet) linked: a pycaffe solver made
    after ``caffe.set_solver_rank``, before its ``caffe.NCCL``. Only rank 0 logs
    iterations, tests and snapshots, as Caffe's root solver."""

    def __init__(self, rank, count):
        self.rank, self.count = int(rank), int(count)
        self.is_root = self.rank == 0


class DataParallel(Solo):
    """Caffe's multi-GPU training on any communicator of :mod:`protonet.comm`.

    Every rank holds a whole copy of the net and reads its own share of the
    data (the data layers split by ``comm.solver_rank()``); the root's
    weights are broadcast, and each iteration the param diffs are summed over
    the ranks and scaled by ``1/count`` before the update, as Caffe's
    ``NCCL::on_gradients_ready``. With ``layer_wise`` (the solver's
    ``layer_wise_reduce``, default true) a param's reduction starts as soon
    as the last layer that adds to its diff has run backward, so it overlaps
    the backward pass of the layers below; the last of ``iter_size`` passes
    only, since the earlier ones are still accumulating.

    The reductions are issued in one fixed order on every rank (collectives
    must match): by the layer that completes each param, top layer first.
    ``agree_on_action`` takes the strongest request of any rank (stop over
    snapshot over none), so a signal to one rank stops or snapshots all.

    ``drive="solver"`` (the default) reduces in the solver's loop;
    ``drive="callbacks"`` leaves the reduction to pycaffe's ``caffe.NCCL``
    object, which the script registers as a solver callback and a Net
    ``after_backward`` callback, as in Caffe's ``python/train.py``.
    """

    def __init__(self, comm, layer_wise=True, drive="solver"):
        self.comm = comm
        self.rank, self.count = comm.rank, comm.count
        self.is_root = self.rank == 0
        self.layer_wise = bool(layer_wise)
        self.drive = drive
        self._net = None
        self._groups = []           # [(layer index, [param blobs])], top layer first
        self._started = 0           # groups issued so far this iteration
        self._pending = []
        # overlap only inside the solver's passes: a backward a script runs on its own (on
        # some ranks only, perhaps) must not start collectives
        self._last_pass = False
        self.reduce_seconds = 0.0   # waited for reductions (cumulative; see benchmarks/)

    # -- set-up
    def attach(self, solver):
        """Called when the solver takes this strategy (before its first broadcast)."""
        self.layer_wise = self.layer_wise and bool(solver.param.layer_wise_reduce)
        self._plan(solver.net)

    def _plan(self, net):
        """Group the learnable params by the lowest layer that adds to their diff."""
        if self._net is net:
            return
        index = {id(b): k for k, b in enumerate(net.learnable_params)}
        last = {}
        owners = net._param_owner
        for entry, (li, _, blob) in enumerate(net._all_params):
            owner = owners[entry]
            root = blob if owner < 0 else net._all_params[owner][2]
            k = index[id(root)]
            last[k] = min(last.get(k, li), li)
        groups = {}
        for k in sorted(last):
            groups.setdefault(last[k], []).append(net.learnable_params[k])
        self._groups = sorted(groups.items(), key=lambda g: -g[0])
        self._net = net

    # -- the hooks the solver calls
    def broadcast_params(self, net):
        self.comm.bcast([b.data for b in net.learnable_params])

    def begin_pass(self, index, passes):
        """The solver starts forward/backward pass ``index`` of ``passes`` (iter_size)."""
        self._last_pass = index == passes - 1

    def on_layer_backward(self, net, layer_index):
        if not self.layer_wise or not self._last_pass or self.count == 1:
            return
        self._plan(net)
        self._issue(lambda li: li >= layer_index)
        for pending in self._pending:
            pending.progress()          # MPI moves a non-blocking collective inside calls

    def _issue(self, ready):
        while self._started < len(self._groups) and ready(self._groups[self._started][0]):
            _, blobs = self._groups[self._started]
            # a deferred diff (zeroing, copy, low-rank product) is carried out first, without
            # handing the array out (the later clears and updates may stay lazy)
            diffs = [b.engine_diff() for b in blobs]
            self._pending.append(self.comm.allreduce_start(diffs))
            self._started += 1

    def reduce_gradients(self, net):
        if self.drive == "solver":
            self.finish_reduction(net)

    def finish_reduction(self, net):
        """Issue what backward did not, wait for all, scale by 1/count."""
        if self.count == 1:
            return      # a group of one: leave the diffs (and their deferred forms) alone
        self._plan(net)
        self._issue(lambda li: True)
        start = time.perf_counter()
        for pending in self._pending:
            pending.wait()
        self.reduce_seconds += time.perf_counter() - start
        self._pending, self._started, self._last_pass = [], 0, False
        scale = np.float32(1.0) / np.float32(self.count)
        for blob in net.learnable_params:
            diff = blob.engine_diff()
            diff *= scale

    def close(self):
        """Training is over on this rank: no more collectives (stops MPI's heartbeat)."""
        self.comm.close()

    def agree_on_action(self, action):
        flags = self.comm.agree([action == SNAPSHOT, action == STOP])
        return STOP if flags[1] else SNAPSHOT if flags[0] else NONE
