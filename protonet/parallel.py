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

__all__ = ["Solo"]


class Solo:
    """One process: nothing to share. The default strategy of every solver."""

    rank = 0
    count = 1
    is_root = True
    layer_wise = False

    def broadcast_params(self, net):
        """Make every rank's parameter values the root's (here: there is only this one)."""

    def on_layer_backward(self, net, layer_index):
        """A layer's param diffs are ready (only called when ``layer_wise`` is true)."""

    def reduce_gradients(self, net):
        """Sum the param diffs over the ranks and scale by 1/count (here: they are all there is)."""

    def agree_on_action(self, action):
        """The signal action every rank takes; one rank's own request here."""
        return action
