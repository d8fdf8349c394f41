"""Communicators for data-parallel training: one interface, two engines.

* :class:`MPIComm`: MPI through mpi4py, for processes started by ``mpirun``
  / ``mpiexec`` / ``srun`` (CPU or GPU; device arrays are staged through
  host memory).
* :class:`NCCLComm`: NCCL through CuPy (``cupy.cuda.nccl``), for one process
  per GPU on one machine (``protonet train --gpu 0,1``, pycaffe's
  ``caffe.NCCL``). Collectives run on a side stream.

Both offer the same four operations, used by
:class:`protonet.parallel.DataParallel`: ``bcast(arrays)`` (in place, from
rank 0), ``allreduce_start(arrays)`` (an in-place sum that runs while the
caller goes on; ``.wait()`` finishes it), ``agree(flags)`` (the element-wise
maximum of a few small integers over the ranks) and ``abort(message)``.

Never a silent hang: every wait polls. Over MPI each rank also sends a
heartbeat to the others from a thread; a wait gives up when a rank has shown
no sign of life for ``timeout`` seconds (``PROTONET_COMM_TIMEOUT``, 300 when
unset), names it, and aborts the job, while a root that is merely busy alone
(tests, snapshots) is waited for. (Without MPI_THREAD_MULTIPLE: a plain
deadline, then a roll call of the live ranks names the missing ones.) NCCL
waits poll with a deadline (1800 s unless ``PROTONET_COMM_TIMEOUT`` is set).
Under MPICH's ``mpiexec`` (Hydra) a rank that *dies* brings the launcher
down at once (Open MPI's mpirun is documented to abort too; not tried here):
it kills the others, and its report may name any of their PIDs; :func:`protonet.launch.watch_mpi_rank` names the rank
that died. Every rank logs ``rank R of N: pid P on HOST`` when it joins.

Also here: Caffe's process-wide solver rank and count
(``Caffe::solver_rank()`` / ``solver_count()``), which the data layers read
to take their share of the records and the solver reads to seed its
generator (``random_seed + solver_rank``).
"""
import atexit
import os
import socket
import sys
import threading
import time

import numpy as np

from . import backend
from .log import get_logger

log = get_logger()

__all__ = ["solver_rank", "solver_count", "set_solver_rank", "set_solver_count",
           "set_multiprocess", "multiprocess", "CommError", "MPI_INSTALL", "mpi_launch_env",
           "local_rank", "import_mpi", "LocalComm", "MPIComm", "NCCLComm", "nccl_available",
           "new_nccl_uid", "comm_timeout"]

# ---------------------------------------------------------------- Caffe's solver rank and count
_world = {"count": 1, "rank": 0, "multiprocess": False}


def solver_count():
    """How many solvers train together (Caffe::solver_count()); 1 without data parallelism."""
    return _world["count"]


def solver_rank():
    """This process's solver, 0 ... solver_count()-1 (Caffe::solver_rank())."""
    return _world["rank"]


def set_solver_count(count):
    count = int(count)
    if count < 1:
        raise ValueError("solver count must be at least 1, got %d" % count)
    _world["count"] = count


def set_solver_rank(rank):
    rank = int(rank)
    if rank < 0:
        raise ValueError("solver rank must be >= 0, got %d" % rank)
    _world["rank"] = rank


def set_multiprocess(flag):
    _world["multiprocess"] = bool(flag)


def multiprocess():
    return _world["multiprocess"]


def data_share(phase_is_test):
    """(rank, count) a data layer splits its records by: as Caffe's Skip(), a TEST-phase
    layer reads everything (only the root solver tests)."""
    if phase_is_test:
        return 0, 1
    rank, count = solver_rank(), solver_count()
    if rank >= count:
        raise CommError("solver rank %d is not below the solver count %d "
                        "(caffe.set_solver_rank / set_solver_count)" % (rank, count))
    return rank, count


# ---------------------------------------------------------------- errors, settings
class CommError(RuntimeError):
    """A collective failed or timed out; the message names the ranks that were lost."""


MPI_INSTALL = 'pip install -e ".[mpi]" (mpi4py and MPICH), or pip install mpi4py mpich'


def comm_timeout(default=300.0):
    """Seconds a rank waits for a silent one (``PROTONET_COMM_TIMEOUT``, else ``default``)."""
    raw = os.environ.get("PROTONET_COMM_TIMEOUT", "")
    if not raw:
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        raise CommError("PROTONET_COMM_TIMEOUT must be a number of seconds, got %r" % raw) from None
    if value <= 0:
        raise CommError("PROTONET_COMM_TIMEOUT must be positive, got %r" % raw)
    return value


# (rank variable, size variable, local rank variable) of the launchers we know
_LAUNCHERS = (
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),                  # MPICH Hydra, Intel MPI
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),  # Open MPI
    ("PMIX_RANK", "PMIX_SIZE", "PMIX_LOCAL_RANK"),
    ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_RANK"),  # MVAPICH
    ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),            # srun
)


def mpi_launch_env(environ=None):
    """(rank, size) when an MPI launcher started this process with more than one rank, else None.

    Read from the launcher's environment, so that a single process never
    loads MPI.
    """
    env = os.environ if environ is None else environ
    for rank_var, size_var, _ in _LAUNCHERS:
        if rank_var in env and size_var in env:
            try:
                rank, size = int(env[rank_var]), int(env[size_var])
            except ValueError:
                continue
            if size > 1:
                return rank, size
    return None


def local_rank(environ=None):
    """This process's rank among the ranks on its node, from the launcher (0 when unknown)."""
    env = os.environ if environ is None else environ
    for _, _, local_var in _LAUNCHERS:
        if local_var in env:
            try:
                return int(env[local_var])
            except ValueError:
                continue
    return 0


def import_mpi():
    """mpi4py's MPI module, or a CommError that gives the install line."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise CommError("training on several processes under an MPI launcher needs mpi4py and an "
                        "MPI library: %s (%s)" % (MPI_INSTALL, exc)) from None
    return MPI


# ---------------------------------------------------------------- the shared part
_POLL_MAX = 0.002       # seconds between two polls of an unfinished collective


def _poll(test, deadline, on_timeout, progress=None):
    """Call ``test()`` until it is true; ``on_timeout()`` (which must raise) past ``deadline``."""
    pause = 0.0
    while not test():
        if progress is not None:
            progress()
        if time.monotonic() > deadline:
            on_timeout()
            raise CommError("collective timed out")       # on_timeout should have raised
        time.sleep(pause)
        pause = min(_POLL_MAX, pause + 0.0001)


class _Comm:
    """What the two engines share: rank, count, timeout and the error path."""

    rank = 0
    count = 1
    backend_name = ""

    #: seconds without a sign of life before a rank counts as lost, unless set
    default_timeout = 300.0

    def __init__(self, timeout=None):
        self.timeout = comm_timeout(self.default_timeout) if timeout is None else float(timeout)

    @property
    def is_root(self):
        return self.rank == 0

    def deadline(self):
        return time.monotonic() + self.timeout

    def close(self):
        """This rank is done with collectives (its training ended)."""

    def announce(self):
        """One line per rank: under mpiexec, a dead rank is reported by its PID."""
        log.info("%s: rank %d of %d: pid %d on %s", self.backend_name, self.rank, self.count,
                 os.getpid(), socket.gethostname())

    def fail(self, what, lost=None):
        """Log and raise a CommError for a collective that did not complete."""
        if lost:
            names = "rank%s %s" % ("s" if len(lost) > 1 else "", ", ".join(map(str, lost)))
            msg = ("%s: %s did not complete on rank %d of %d: lost %s (no sign of life for "
                   "%g s: it died or hung; see its own output)"
                   % (self.backend_name, what, self.rank, self.count, names, self.timeout))
        else:
            msg = ("%s: %s did not complete within %g s on rank %d of %d: another rank died or "
                   "hung (set PROTONET_COMM_TIMEOUT to wait longer)"
                   % (self.backend_name, what, self.timeout, self.rank, self.count))
        log.error("%s", msg)
        raise CommError(msg)


class _Done:
    def wait(self):
        pass

    def test(self):
        return True

    def progress(self):
        pass


# ---------------------------------------------------------------- one rank
class LocalComm(_Comm):
    """A group of one: every collective is the identity (pycaffe's NCCL with one solver)."""

    backend_name = "local"

    def bcast(self, arrays, root=0):
        pass

    def allreduce_start(self, arrays, what="gradient reduction"):
        return _Done()

    def agree(self, flags, what=""):
        return np.asarray(flags, dtype=np.int32)

    def barrier(self, what=""):
        pass

    def abort(self, message, code=1):
        log.error("%s", message)
        sys.exit(code)


# ---------------------------------------------------------------- MPI
class MPIComm(_Comm):
    """Collectives over an MPI communicator (COMM_WORLD by default) with mpi4py.

    Device arrays are copied to host buffers (kept for reuse), reduced, and
    copied back when the reduction is waited for.
    """

    backend_name = "MPI"
    _TAG_ROLL = 7301
    _TAG_BEAT = 7302

    def __init__(self, comm=None, timeout=None):
        super().__init__(timeout)
        MPI = self.MPI = import_mpi()
        # a private copy: our traffic never matches a user's messages
        self.comm = (comm if comm is not None else MPI.COMM_WORLD).Dup()
        self.rank = self.comm.Get_rank()
        self.count = self.comm.Get_size()
        self._staging = {}
        self._start_heartbeat()

    # -- signs of life
    def _start_heartbeat(self):
        """Every rank tells the others it is alive every ``timeout / 4`` s, from a thread.

        A wait then gives up on a rank only when nothing came from it for
        ``timeout`` seconds (dead, stopped, or its process frozen), not when the
        root is merely busy alone (tests, snapshots): those may take as long as
        they take. Needs MPI_THREAD_MULTIPLE (mpi4py asks for it); without it a
        wait gives up after ``timeout`` and a roll call names who is missing.
        """
        MPI = self.MPI
        self._seen = {r: time.monotonic() for r in range(self.count) if r != self.rank}
        self._beating = self.count > 1 and MPI.Query_thread() >= MPI.THREAD_MULTIPLE
        if not self._beating:
            return
        self._hb_comm = self.comm.Dup()
        self._hb_token = np.zeros(1, np.uint8)
        self._hb_stop = threading.Event()
        period = max(0.05, min(10.0, self.timeout / 4))

        def beat():
            while not self._hb_stop.wait(period):
                for r in self._seen:
                    # freed at once: the send completes on its own, and a peer that is gone
                    # must not block this thread
                    self._hb_comm.Isend(self._hb_token, dest=r, tag=self._TAG_BEAT).Free()

        self._hb_thread = threading.Thread(target=beat, name="protonet-heartbeat", daemon=True)
        self._hb_thread.start()
        # stop before mpi4py's MPI_Finalize at exit (atexit runs the later registration first)
        atexit.register(self.stop_heartbeat)

    def close(self):
        self.stop_heartbeat()

    def stop_heartbeat(self):
        if getattr(self, "_beating", False):
            self._hb_stop.set()
            self._hb_thread.join(5)
            self._beating = False

    def _drain(self, now):
        MPI, status, sink = self.MPI, self.MPI.Status(), np.zeros(1, np.uint8)
        while self._hb_comm.Iprobe(source=MPI.ANY_SOURCE, tag=self._TAG_BEAT, status=status):
            source = status.Get_source()
            self._hb_comm.Recv(sink, source=source, tag=self._TAG_BEAT)
            self._seen[source] = now

    # -- buffers
    def _host(self, array, key):
        if not backend.is_device_array(array):
            if not array.flags.c_contiguous:
                raise CommError("MPI: a non-contiguous array cannot be reduced in place")
            return array, None
        buf = self._staging.get(key)
        if buf is None or buf.shape != array.shape or buf.dtype != array.dtype:
            buf = self._staging[key] = np.empty(array.shape, array.dtype)
        array.get(out=buf)
        return buf, (array, buf)

    def _wait_all(self, requests, what):
        MPI = self.MPI
        if not self._beating:
            _poll(lambda: MPI.Request.Testall(requests), self.deadline(),
                  lambda: self._lost(requests, what))
            return
        start, pause = time.monotonic(), 0.0
        while not MPI.Request.Testall(requests):
            now = time.monotonic()
            self._drain(now)
            lost = [r for r, seen in self._seen.items() if now - max(seen, start) > self.timeout]
            if lost:
                self._abort_lost(what, lost)
            time.sleep(pause)
            pause = min(_POLL_MAX, pause + 0.0001)

    def progress(self, requests):
        """Let pending non-blocking collectives advance (MPICH progresses inside MPI calls)."""
        if requests:
            self.MPI.Request.Testall(requests)

    # -- operations
    def bcast(self, arrays, root=0):
        requests, back = [], []
        for i, a in enumerate(arrays):
            buf, copy = self._host(a, ("bcast", i))
            requests.append(self.comm.Ibcast(buf, root=root))
            if copy:
                back.append(copy)
        self._wait_all(requests, "broadcast of the parameters")
        for dev, buf in back:
            dev.set(buf)

    def allreduce_start(self, arrays, what="gradient reduction"):
        requests, back = [], []
        for a in arrays:
            buf, copy = self._host(a, ("reduce", id(a)))
            requests.append(self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM))
            if copy:
                back.append(copy)
        return _MPIPending(self, requests, back, what)

    def agree(self, flags, what="agreement on the next action"):
        values = np.asarray(flags, dtype=np.int32).copy()
        request = self.comm.Iallreduce(self.MPI.IN_PLACE, values, op=self.MPI.MAX)
        self._wait_all([request], what)
        return values

    def barrier(self, what="barrier"):
        self._wait_all([self.comm.Ibarrier()], what)

    def abort(self, message, code=1):
        log.error("%s", message)
        sys.stderr.flush()
        self.comm.Abort(code)

    # -- the error path
    def _abort_lost(self, what, lost):
        try:
            self.fail(what, lost)
        finally:
            sys.stderr.flush()
            self.comm.Abort(3)

    def _lost(self, requests, what):
        """A collective is overdue: find who is still there, name the others, end the job.

        The ranks that are alive are all stuck in the same collective and time
        out within about the same time: each sends its rank to the root and
        the root tells everyone which ranks it heard from. A rank that is gone
        (or hung) never answers. The job is then aborted, since MPI cannot
        finish a collective a rank left.
        """
        grace = min(30.0, max(5.0, self.timeout / 2))
        comm, tag = self.comm, self._TAG_ROLL
        lost = None
        if self.rank == 0:
            pending = {r: comm.irecv(source=r, tag=tag) for r in range(1, self.count)}
            end = time.monotonic() + grace
            heard = set()
            while pending and time.monotonic() < end:
                for r, req in list(pending.items()):
                    done, _ = req.test()
                    if done:
                        heard.add(r)
                        del pending[r]
                time.sleep(0.01)
            lost = sorted(pending)
            for r in heard:
                comm.isend(lost, dest=r, tag=tag)
        else:
            comm.isend(self.rank, dest=0, tag=tag)
            req = comm.irecv(source=0, tag=tag)
            end = time.monotonic() + 2 * grace
            while time.monotonic() < end:
                done, answer = req.test()
                if done:
                    lost = answer
                    break
                time.sleep(0.01)
            else:
                lost = [0]
        self._abort_lost(what, lost)


class _MPIPending:
    def __init__(self, comm, requests, back, what):
        self.comm, self.requests, self.back, self.what = comm, requests, back, what

    def test(self):
        return self.comm.MPI.Request.Testall(self.requests)

    def progress(self):
        self.comm.progress(self.requests)

    def wait(self):
        self.comm._wait_all(self.requests, self.what)
        for dev, buf in self.back:
            dev.set(buf)
        self.back = []


# ---------------------------------------------------------------- NCCL
def _nccl():
    cp = backend._load_cupy()
    if cp is None:
        return None
    nccl = getattr(cp.cuda, "nccl", None)
    if nccl is None and cp.__name__ == "cupy":
        try:
            from cupy.cuda import nccl     # not imported with cupy itself
        except Exception:
            return None
    if nccl is None or not getattr(nccl, "available", True):
        return None
    return nccl


def nccl_available():
    """CuPy with NCCL importable. Touches no GPU: python/train.py asks for a uid in the parent
    and then forks the ranks, which CUDA forbids once a parent has initialised it."""
    return _nccl() is not None


def new_nccl_uid():
    """A fresh NCCL unique id (bytes) that names one group of ranks."""
    nccl = _nccl()
    if nccl is None:
        raise CommError("NCCL is not available: it needs CuPy with NCCL (pip install "
                        "protonet[cuda12] and nvidia-nccl-cu12) and a GPU")
    return bytes(nccl.get_unique_id())


class NCCLComm(_Comm):
    """Collectives with NCCL on a side stream (one GPU per rank, one rank per process).

    The side stream first waits for the work queued so far on the current
    stream (the backward pass that wrote the gradients); waiting for a
    reduction polls an event with the deadline, and the current stream then
    waits for the side stream.
    """

    backend_name = "NCCL"
    # no heartbeat here: a wait is bounded by this alone, so it must outlast the root's tests
    # and snapshots; a rank that dies is named by the parent process (--gpu a,b, train.py)
    default_timeout = 1800.0

    def __init__(self, uid, count, rank, timeout=None):
        super().__init__(timeout)
        nccl = _nccl()
        if nccl is None:
            raise CommError("NCCL is not available: it needs CuPy with NCCL and a GPU")
        self.nccl = nccl
        self.cp = backend._load_cupy()
        self.count, self.rank = int(count), int(rank)
        if not 0 <= self.rank < self.count:
            raise CommError("NCCL: rank %d is not in 0..%d" % (self.rank, self.count - 1))
        self.comm = nccl.NcclCommunicator(self.count, bytes(uid), self.rank)
        self.stream = self.cp.cuda.Stream(non_blocking=True)
        self._flags = None

    def _dtype(self, a):
        n = self.nccl
        table = {np.dtype(np.float32): n.NCCL_FLOAT32, np.dtype(np.float64): n.NCCL_FLOAT64,
                 np.dtype(np.int32): n.NCCL_INT32}
        try:
            return table[np.dtype(a.dtype)]
        except KeyError:
            raise CommError("NCCL: cannot reduce arrays of %s" % a.dtype) from None

    def _check(self, a):
        if not backend.is_device_array(a):
            raise CommError("NCCL reduces device arrays; got a host array (set_mode_gpu first)")
        if not a.flags.c_contiguous:
            raise CommError("NCCL: a non-contiguous array cannot be reduced in place")

    def _after_current(self):
        self.stream.wait_event(self.cp.cuda.get_current_stream().record())

    def _wait_event(self, event, what):
        _poll(lambda: event.done, self.deadline(), lambda: self._lost(what))
        self.cp.cuda.get_current_stream().wait_event(event)

    def bcast(self, arrays, root=0):
        self._after_current()
        for a in arrays:
            self._check(a)
            self.comm.bcast(a.data.ptr, a.size, self._dtype(a), root, self.stream.ptr)
        self._wait_event(self.stream.record(), "broadcast of the parameters")

    def allreduce_start(self, arrays, what="gradient reduction"):
        self._after_current()
        for a in arrays:
            self._check(a)
            self.comm.allReduce(a.data.ptr, a.data.ptr, a.size, self._dtype(a),
                                self.nccl.NCCL_SUM, self.stream.ptr)
        return _NCCLPending(self, self.stream.record(), what)

    def agree(self, flags, what="agreement on the next action"):
        values = self.cp.asarray(np.asarray(flags, dtype=np.int32))
        self._after_current()
        self.comm.allReduce(values.data.ptr, values.data.ptr, values.size, self.nccl.NCCL_INT32,
                            self.nccl.NCCL_MAX, self.stream.ptr)
        self._wait_event(self.stream.record(), what)
        return self.cp.asnumpy(values)

    def barrier(self, what="barrier"):
        self.agree([0], what)

    def abort(self, message, code=1):
        log.error("%s", message)
        try:
            self.comm.abort()
        finally:
            sys.stderr.flush()
            os._exit(code)

    def _lost(self, what):
        # NCCL has no roll call: the launcher (protonet train --gpu, or the parent process of
        # python/train.py) names the rank that exited; a hung one times out here everywhere.
        try:
            self.fail(what)
        finally:
            try:
                self.comm.abort()
            except Exception:
                pass


class _NCCLPending:
    def __init__(self, comm, event, what):
        self.comm, self.event, self.what = comm, event, what

    def test(self):
        return self.event.done

    def progress(self):
        pass

    def wait(self):
        self.comm._wait_event(self.event, self.what)
