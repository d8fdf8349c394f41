"""``import caffe`` for pycaffe code, backed by protonet.

Plugins (``class Dice(caffe.Layer)``) and scripts written for Caffe 1.0's
Python interface run unchanged: ``caffe.Net``, ``caffe.SGDSolver`` and the
other solvers, ``caffe.get_solver``, ``caffe.TRAIN``/``TEST``,
``caffe.set_mode_cpu``/``set_mode_gpu``/``set_device``/``set_random_seed``,
``caffe.io``, ``caffe.proto.caffe_pb2``, ``caffe.NetSpec``/``layers``/
``params``/``to_proto``, ``caffe.Classifier``, ``caffe.Detector``,
``caffe.Timer``, ``caffe.coord_map``, ``caffe.draw``, and data-parallel
training as Caffe's ``python/train.py`` does it: ``caffe.NCCL``,
``set_solver_count`` / ``set_solver_rank`` / ``set_multiprocess``,
``solver_count`` / ``solver_rank``, ``has_nccl`` (NCCL on GPUs; on the CPU
the same objects work over MPI in scripts started by ``mpirun``).

``caffe.__version__`` is the Caffe version whose interface this follows
(1.0.0); ``caffe.protonet_version`` is the engine's.
"""
import logging as _logging

import protonet as _protonet
from protonet import comm as _comm
from protonet import Layer, TRAIN, TEST, set_mode_cpu, set_mode_gpu, set_device, set_random_seed

from .pycaffe import (Net, SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver,  # noqa: F401
                      AdaDeltaSolver, AdamSolver, get_solver, layer_type_list, Timer, NCCL)
from . import io  # noqa: F401
from .classifier import Classifier  # noqa: F401
from .detector import Detector  # noqa: F401
from . import proto  # noqa: F401
from .net_spec import layers, params, NetSpec, to_proto  # noqa: F401

__version__ = "1.0.0"
protonet_version = _protonet.__version__




def init_log(level=0):
    """Show Caffe's log lines (glog format) on stderr from ``level`` up (0 INFO .. 3 FATAL)."""
    from protonet import log
    log.ensure_handler()
    levels = [_logging.INFO, _logging.WARNING, _logging.ERROR, _logging.CRITICAL]
    _logging.getLogger(log.LOGGER_NAME).setLevel(levels[min(max(int(level), 0), 3)])


def log(message):
    """Write one INFO line to Caffe's log."""
    from protonet import log as _log
    _log.ensure_handler()
    _logging.getLogger(_log.LOGGER_NAME).info("%s", message)


# Caffe's solver rank and count (one place: protonet.comm; the data layers read them)
solver_count = _comm.solver_count
set_solver_count = _comm.set_solver_count
solver_rank = _comm.solver_rank
set_solver_rank = _comm.set_solver_rank
set_multiprocess = _comm.set_multiprocess


def has_nccl():
    """True where caffe.NCCL can reduce over NCCL: CuPy with NCCL installed. (On the CPU,
    caffe.NCCL works over MPI in scripts started by mpirun.)"""
    return _comm.nccl_available()


__all__ = ["Layer", "TRAIN", "TEST", "Net", "SGDSolver", "NesterovSolver", "AdaGradSolver",
           "RMSPropSolver", "AdaDeltaSolver", "AdamSolver", "get_solver", "layer_type_list",
           "set_mode_cpu", "set_mode_gpu", "set_device", "set_random_seed", "init_log", "log",
           "solver_count", "set_solver_count", "solver_rank", "set_solver_rank",
           "set_multiprocess", "has_nccl", "io", "proto", "layers", "params", "NetSpec",
           "to_proto", "Classifier", "Detector", "Timer", "NCCL", "__version__"]
