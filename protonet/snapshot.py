"""Snapshots: Caffe's ``Solver::Snapshot`` and ``Solver::Restore``.

:class:`Snapshots` is a mixin of :class:`protonet.solver.Solver`; it uses the
solver's ``param``, ``net``, ``iter``, ``current_step``, ``history``,
``type``, ``_draw_curve()`` and ``_reload_curve()``. Files are ``<snapshot_prefix>_iter_<N>``
``.caffemodel`` and ``.solverstate`` (or their ``.h5`` forms with
``snapshot_format: HDF5``); SolverState holds iter, learned_net, history and
current_step. Both files are staged beside their names and renamed into place
together, so Caffe resumes from ours and we from Caffe's.
"""
import os

import numpy as np

from .hdf5_weights import commit_staged, copy_weights, fill_hdf5_weights, host_f32, open_h5py, \
    stage_hdf5
from .io import FormatError, SolverError, blobproto_to_array, blobproto_bytes, read_binary, \
    discard_staged, stage_bytes, wire_field
from .log import get_logger
from .proto import caffe_pb2

__all__ = ["Snapshots"]

log = get_logger()
_SP = caffe_pb2.SolverParameter


class Snapshots:
    """Writing and reading a solver's snapshots (a mixin of the Solver)."""

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
                staged.append((stage_hdf5(model, lambda f: fill_hdf5_weights(
                    f, self.net, p.snapshot_diff)), model))
            else:
                log.info("Snapshotting to binary proto file %s", model)
                staged.append((stage_bytes(model, self.net.to_proto_bytes(p.snapshot_diff)), model))
            staged.append(self._stage_solver_state(model))
        except BaseException:
            for tmp, _ in staged:
                discard_staged(tmp)
            raise
        commit_staged(staged)
        self._draw_curve()
        return model, staged[1][1]

    def snapshot_solver_state(self, model_filename):
        """Write the solver state (naming ``model_filename`` as its weights); returns its path."""
        staged = self._stage_solver_state(model_filename)
        commit_staged([staged])
        return staged[1]

    def _stage_solver_state(self, model_filename):
        if self.param.snapshot_format == _SP.HDF5:
            path = self._snapshot_filename(".solverstate.h5")
            log.info("Snapshotting solver state to HDF5 file %s", path)
            return stage_hdf5(path, lambda f: self._fill_state_hdf5(f, model_filename)), path
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
            group.create_dataset(str(i), data=host_f32(h))

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

    def _history_owner(self, i):
        """'param P of layer L' for history blob ``i`` (history sets follow one another)."""
        net = self.net
        n = len(net.learnable_params)
        k = i % n if n else i
        for idx, (li, pi, _) in enumerate(net._all_params):  # noqa: SLF001
            if net._learnable_index[idx] == k:                 # noqa: SLF001
                return "param %d of layer '%s'" % (pi, net.layer_names[li])
        return "no parameter of this net"

    def restore(self, state_file):
        """Resume from a .solverstate (or .solverstate.h5): iter, current_step, history, weights."""
        state_file = os.fspath(state_file)
        if not os.path.exists(state_file):
            raise SolverError("solver state '%s' not found (working directory %s)"
                              % (state_file, os.getcwd()))
        if state_file.endswith(".h5"):
            h5py = open_h5py("reading %s" % state_file)
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
            if not state.HasField("iter") and not len(state.history):
                raise SolverError(_not_a_state(state_file))
            iteration = state.iter
            learned = state.learned_net if state.HasField("learned_net") else None
            step = state.current_step
            history = []
            for i, h in enumerate(state.history):
                try:
                    history.append(blobproto_to_array(h))
                except FormatError as exc:
                    raise SolverError("%s: history blob %d (%s): %s"
                                      % (state_file, i, self._history_owner(i), exc)) from None
        # everything is checked before anything changes: a refused state leaves the solver as it was
        if len(history) != len(self.history):
            raise SolverError("%s: Incorrect length of history blobs: the state has %d, this %s "
                              "solver needs %d" % (state_file, len(history), self.type, len(self.history)))
        for i, (target, values) in enumerate(zip(self.history, history)):
            if values.size != target.size:
                raise SolverError("%s: history blob %d has %d values; the parameter it belongs to "
                                  "(%s) has %d" % (state_file, i, values.size,
                                                   self._history_owner(i), target.size))
        if learned:
            weights = self._learned_net_path(learned, state_file)
            if not os.path.exists(weights):
                raise SolverError("%s: its weights, learned_net '%s', are neither in the working "
                                  "directory (%s) nor beside the solver state"
                                  % (state_file, learned, os.getcwd()))
            copy_weights(self.net, weights)
        self.iter = iteration
        self.current_step = step
        self._reload_curve()        # the curve's history up to here, when it is kept
        log.info("%s: restoring history", "SGDSolver")
        for blob in self.net.learnable_params:
            blob.settle_diff()   # a diff promised as a copy of the history gets it now
        for target, values in zip(self.history, history):
            values = values.reshape(target.shape).astype(np.float32)
            target[...] = self.net.xp.asarray(values) if self.net.xp is not np else values
        self.parallel.broadcast_params(self.net)


def _not_a_state(path):
    """Why ``path`` parsed as an empty SolverState: most often it is the caffemodel."""
    try:
        net = read_binary(path, caffe_pb2.NetParameter())
    except FormatError:
        net = None
    if net is not None and len(net.layer) + len(net.layers):
        return ("%s holds a net's weights (a .caffemodel), not a solver state: resume from the "
                ".solverstate written beside it, or fine-tune from this file with --weights" % path)
    return "%s is not a solver state: it holds no iteration and no history" % path
