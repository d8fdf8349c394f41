"""The one place that decides between NumPy (CPU) and CuPy (GPU).

Layers never import cupy: they call ``xp_of(array)`` (the module that owns an
array) or ``xp()`` (the module of the current mode) and write one code path.
"""
import numpy as np

_state = {"mode": "cpu", "device": 0}
_cupy = None
_cupy_error = None


def _load_cupy():
    global _cupy, _cupy_error
    if _cupy is None and _cupy_error is None:
        try:
            import cupy  # the only cupy import in protonet
            _cupy = cupy
        except Exception as exc:  # ImportError, or a CUDA library failing to load
            _cupy_error = exc
    return _cupy


def cupy_available():
    cp = _load_cupy()
    if cp is None:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def set_mode_cpu():
    _state["mode"] = "cpu"


def set_mode_gpu():
    cp = _load_cupy()
    if cp is None:
        raise RuntimeError(
            "GPU mode needs CuPy: install it with `pip install protonet[cuda12]` or [cuda13] "
            "(a cupy-cudaXXx wheel matching your CUDA). Original error: %r" % (_cupy_error,))
    cp.cuda.Device(_state["device"]).use()
    _state["mode"] = "gpu"


def set_device(device_id):
    _state["device"] = int(device_id)
    if _state["mode"] == "gpu":
        _cupy.cuda.Device(_state["device"]).use()


def mode():
    return _state["mode"]


def device():
    return _state["device"]


def xp():
    """Array module for newly created arrays under the current mode."""
    return _cupy if _state["mode"] == "gpu" else np


def xp_of(*arrays):
    """Array module that owns these arrays (NumPy unless one is a CuPy array)."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def is_device_array(a):
    return _cupy is not None and isinstance(a, _cupy.ndarray)


def to_host(a):
    """A NumPy array for ``a`` (no copy when it already is one)."""
    if is_device_array(a):
        return _cupy.asnumpy(a)
    return a


def to_device(a, dtype=None):
    """``a`` as an array of the current mode's module."""
    m = xp()
    if m is np:
        return np.asarray(to_host(a), dtype=dtype)
    return m.asarray(a, dtype=dtype)
