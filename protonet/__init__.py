"""protonet: Caffe's formats and layers on NumPy (CPU) or CuPy (GPU).

The API is pycaffe's: ``Net(prototxt, phase, weights=...)``, ``TRAIN``/``TEST``,
``net.blobs[name].data``, ``net.params[layer][i].diff``, ``set_mode_gpu()``.
"""
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
