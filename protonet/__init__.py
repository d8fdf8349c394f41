"""protonet: Caffe's formats and layers on NumPy (CPU) or CuPy (GPU).

The API is pycaffe's: ``Net(prototxt, phase, weights=...)``, ``TRAIN``/``TEST``,
``net.blobs[name].data``, ``net.params[layer][i].diff``, ``set_mode_gpu()``.
"""
import sys as _sys


def _openblas_thread_timeout():
    """OpenBLAS's idle workers spin for 2^28 cycles (about 0.1 s) after each GEMM, on the cores
    protonet's compiled kernels and NumPy passes then need: CaffeNet's non-GEMM time fell from
    230-290 to 160 ms per forward-backward without them. 2^18 cycles (a tenth of a millisecond)
    keeps them ready between the GEMMs of one layer and lets them sleep through the passes
    between layers. OpenBLAS reads the setting when it loads (with NumPy), so it is set only
    when NumPy is not loaded yet and the user has set neither of its names."""
    import os
    if "numpy" not in _sys.modules and not any(
            os.environ.get(v) for v in ("OPENBLAS_THREAD_TIMEOUT", "GOTO_THREAD_TIMEOUT")):
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(OPENBLAS_THREAD_TIMEOUT)


OPENBLAS_THREAD_TIMEOUT = 18
_openblas_thread_timeout()


def _started_as_command():
    """Whether this import is the start of the ``protonet`` command (its console script, or
    ``python -m protonet``), before any of protonet.cli has run."""
    argv = getattr(_sys, "orig_argv", None) or []
    if "-m" in argv[:-1] and argv[argv.index("-m") + 1] == __name__ or "-m" + __name__ in argv:
        return True
    import os
    return bool(_sys.argv) and os.path.basename(_sys.argv[0]) in ("protonet", "protonet.exe")


if _started_as_command():
    # Ctrl-C while the command is still importing NumPy and friends: one line, status 130
    # (the interpreter still exits by SIGINT), as protonet.cli.main does once it runs.
    _previous_hook = _sys.excepthook

    def _interrupted_hook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            _sys.stderr.write("protonet: interrupted\n")
        else:
            _previous_hook(kind, value, tb)
    _sys.excepthook = _interrupted_hook

from .backend import set_mode_cpu, set_mode_gpu, set_device
from .layer import TRAIN, TEST, Layer, register
from .net import Net, NetError
from .rng import set_random_seed
from .solver import get_solver
from .update_rules import (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver,
                           AdaDeltaSolver, AdamSolver)

__version__ = "0.1.0"

__all__ = ["Net", "NetError", "Layer", "register", "TRAIN", "TEST", "set_mode_cpu",
           "set_mode_gpu", "set_device", "set_random_seed", "get_solver", "SGDSolver",
           "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver", "AdamSolver",
           "__version__"]
