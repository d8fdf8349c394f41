"""How ``protonet train`` becomes several solvers (Caffe's data-parallel training).

Three ways in, one strategy (:class:`protonet.parallel.DataParallel`):

* ``mpirun -np N protonet train ...`` (or ``mpiexec``, ``srun``): the
  launcher's environment says how many ranks there are; the ranks talk over
  MPI (:class:`protonet.comm.MPIComm`); each rank runs under a small parent
  that names it if it is killed (:func:`watch_mpi_rank`). With ``--gpu``, a rank takes the GPU
  of its node-local rank from the list (``--gpu all``: every GPU of the
  node), or the one GPU given.
* ``protonet train --gpu 0,1,2,3`` (or ``--gpu all``) outside a launcher:
  this process starts one child per GPU (the same command line, told its
  rank in the environment), and the children talk over NCCL
  (:class:`protonet.comm.NCCLComm`). The parent forwards SIGTERM/SIGHUP,
  leaves Ctrl-C to the children (the terminal sends it to all), and when a
  child fails it names that rank and ends the others.
* pycaffe's ``caffe.NCCL`` (see :mod:`caffe.pycaffe`).
"""
import os
import signal
import subprocess
import sys
import time

from . import comm, devices
from .log import get_logger
from .parallel import DataParallel

log = get_logger()

__all__ = ["join", "watch_mpi_rank", "spawn_gpu_ranks", "supervise", "SPAWN_ENV"]

#: what a parent started by ``--gpu a,b`` tells each child
SPAWN_ENV = ("PROTONET_SOLVER_RANK", "PROTONET_SOLVER_COUNT", "PROTONET_NCCL_UID")


def _spawned():
    env = os.environ
    if all(k in env for k in SPAWN_ENV):
        return int(env["PROTONET_SOLVER_RANK"]), int(env["PROTONET_SOLVER_COUNT"]), \
            bytes.fromhex(env["PROTONET_NCCL_UID"])
    return None


def wants_spawn(ids):
    """True when this process should start one child per GPU instead of training itself."""
    return len(ids) > 1 and _spawned() is None and comm.mpi_launch_env() is None


def join(ids):
    """Join the other ranks, if any: ``(strategy or None, the device ids for this process)``.

    Sets Caffe's solver rank and count first (the data layers read them when
    the nets are built), and quiets the info lines of every rank but the
    root, as Caffe logs from the root solver only.
    """
    spawned = _spawned()
    launched = comm.mpi_launch_env()
    if spawned is None and launched is None:
        return None, ids
    if spawned is not None:
        rank, count, uid = spawned
        mine = [ids[rank]] if ids else []
        devices.use_devices(list(mine), training=True)
        link = comm.NCCLComm(uid, count, rank)
    else:
        rank, count = launched
        if len(ids) > 1:
            local = comm.local_rank()
            if local >= len(ids):
                raise devices.DeviceError(
                    "--gpu %s: node-local rank %d has no GPU in the list (%d ranks on this node "
                    "need as many GPUs)" % (",".join(map(str, ids)), local, local + 1))
            ids = [ids[local]]
        devices.use_devices(list(ids), training=True)
        link = comm.MPIComm()
        if (link.rank, link.count) != (rank, count):
            log.warning("the launcher's environment says rank %d of %d, MPI says %d of %d",
                        rank, count, link.rank, link.count)
    comm.set_solver_count(link.count)
    comm.set_solver_rank(link.rank)
    comm.set_multiprocess(True)
    link.announce()
    if link.rank != 0:
        import logging
        logging.getLogger("protonet").setLevel(logging.WARNING)
    return DataParallel(link), ids


# ---------------------------------------------------------------- a rank under mpirun
def watch_mpi_rank():
    """Under an MPI launcher, fork: the child goes on as the rank, the parent waits for it.

    Returns None in the child, and in the parent (when the rank is done) the
    exit status to leave with. Why: when a rank is killed (SIGKILL, the
    out-of-memory killer), ``mpiexec`` kills the other ranks at once and its
    report may name the PID of any of them; the parent, which the launcher
    sees as the rank, lives on to say which rank died and how before it exits
    and the launcher ends the job. The parent forwards SIGINT, SIGTERM and
    SIGHUP to the rank; the rank dies with its parent (PR_SET_PDEATHSIG).
    Linux only; ``PROTONET_WATCH_RANK=0`` turns it off (a launcher that
    insists on one process per rank).
    """
    launched = comm.mpi_launch_env()
    if (launched is None or not sys.platform.startswith("linux")
            or os.environ.get("PROTONET_WATCH_RANK", "1") == "0"):
        return None
    import ctypes
    rank, size = launched
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:          # the parent went before prctl took effect
            os._exit(1)
        return None
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: os.kill(pid, signum))
    _, status = os.waitpid(pid, 0)          # retried after the signal handlers (PEP 475)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        log.error("rank %d of %d (pid %d) was killed by signal %d (%s); the MPI launcher ends "
                  "the other ranks", rank, size, pid, sig, signal.Signals(sig).name)
        return 128 + sig
    code = os.WEXITSTATUS(status)
    if code:
        log.error("rank %d of %d (pid %d) exited with status %d; the MPI launcher ends the other "
                  "ranks", rank, size, pid, code)
    return code


# ---------------------------------------------------------------- --gpu 0,1: one child per GPU
def spawn_gpu_ranks(ids, argv, poll=0.2):
    """Run this command line once per GPU in ``ids``; returns the exit status.

    The children get ``PROTONET_SOLVER_RANK`` / ``_COUNT`` and a fresh NCCL
    unique id in their environment. When one fails, the error names its rank,
    GPU and PID, and the others are ended (they would wait for it forever:
    NCCL has no timeout of its own).
    """
    found = devices.device_count()
    missing = [i for i in ids if i >= found]
    if missing:
        raise devices.DeviceError(
            "--gpu %s: %d GPUs requested but this machine has %d (%s)"
            % (",".join(map(str, ids)), len(ids), found,
               "no GPU is usable: %s" % devices.no_gpu_reason() if not found else
               "device ids 0..%d" % (found - 1)))
    if len(set(ids)) != len(ids):
        raise devices.DeviceError("--gpu %s names a GPU twice" % ",".join(map(str, ids)))
    if not comm.nccl_available():
        raise devices.DeviceError("--gpu %s: training on several GPUs uses NCCL through CuPy, "
                                  "which is not available here (pip install nvidia-nccl-cu12 "
                                  "beside cupy-cuda12x), or start one process per GPU with "
                                  "mpirun (%s)" % (",".join(map(str, ids)), comm.MPI_INSTALL))
    uid = comm.new_nccl_uid().hex()
    command = [sys.executable, "-m", "protonet"] + list(argv)
    log.info("Starting %d solvers, one per GPU %s (NCCL)", len(ids), ",".join(map(str, ids)))
    return supervise(command, len(ids), {"PROTONET_NCCL_UID": uid}, ids, poll)


def supervise(command, count, extra_env, ids=None, poll=0.2):
    """Start ``count`` copies of ``command`` as ranks 0..count-1 and wait for them all.

    The exit status is 0 when all succeed; else the first failure's, after
    the error line that names the rank and the others were ended.
    """
    procs = []
    previous = {}

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    # Ctrl-C reaches every child from the terminal: the parent only waits for them
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, forward)
    try:
        for rank in range(count):
            env = dict(os.environ, PROTONET_SOLVER_RANK=str(rank),
                       PROTONET_SOLVER_COUNT=str(count), **extra_env)
            procs.append(subprocess.Popen(command, env=env))
        while True:
            codes = [p.poll() for p in procs]
            failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                r = failed[0]
                code = codes[r]
                how = ("was killed by signal %d (%s)" % (-code, signal.Signals(-code).name)
                       if code < 0 else "exited with status %d" % code)
                where = " on GPU %d" % ids[r] if ids else ""
                log.error("rank %d%s (pid %d) %s; stopping the other %d rank(s)",
                          r, where, procs[r].pid, how, sum(c is None for c in codes))
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                for p in procs:
                    p.wait()
                return code if code > 0 else 128 - code
            if all(c == 0 for c in codes):
                return 0
            time.sleep(poll)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
