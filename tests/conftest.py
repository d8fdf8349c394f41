import os
import sys

# tests import their helpers (parity, gradcheck) as top-level modules
sys.path.insert(0, os.path.dirname(__file__))


import pytest  # noqa: E402


@pytest.fixture
def device(monkeypatch):
    """GPU mode on the CuPy stand-in (tests/fakecupy.py); CPU mode and the real backend afterwards."""
    import fakecupy
    from protonet import backend
    monkeypatch.setattr(backend, "_cupy", fakecupy)
    monkeypatch.setattr(backend, "_cupy_error", None)
    monkeypatch.setitem(backend._state, "mode", "cpu")
    monkeypatch.setitem(backend._state, "device", 0)
    backend.set_mode_gpu()
    fakecupy.reset_launch_counts()
    yield fakecupy
    backend.set_mode_cpu()
