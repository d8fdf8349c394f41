"""Shared test setup, and the ``device`` fixture for protonet's GPU (CuPy) path.

The ``device`` fixture puts protonet in GPU mode on one of two array modules,
chosen by the environment variable ``PROTONET_TEST_DEVICE``:

* unset or ``fake`` (every ordinary run): tests/fakecupy.py, a NumPy-backed
  stand-in for CuPy that refuses what CuPy refuses and runs RawKernel sources
  through g++, so the device path is tested on any machine;
* ``cupy``: the real CuPy on a real GPU, loaded through
  ``protonet.backend._load_cupy()``. When CuPy cannot be imported or sees no
  CUDA device the tests FAIL (never skip) with the reason, so a GPU run cannot
  pass by testing nothing.

Running the device tests on a real GPU (CuPy installed, e.g. ``pip install
cupy-cuda12x``; g++ too, for the tests of the stand-in itself)::

    PROTONET_TEST_DEVICE=cupy python -m pytest -q tests/test_device_path.py tests/test_cuda_kernels.py tests/test_caffe_compat.py

Every test that takes the ``device`` fixture (in test_cuda_kernels.py through
its ``cp`` fixture) then runs on the GPU; the tests of the stand-in itself
(``test_fake_*``) and the rest of those files use fakecupy or NumPy directly
and run on the CPU in both settings. The header of pytest's report says which
device module the run uses. Leave ``CUPY_TF32`` unset: TF32 GEMMs are far
outside the float32 tolerances below.

Tolerances: the fake computes with NumPy and g++, so each test's own
tolerance applies unchanged. On a real GPU cuBLAS sums GEMMs in its own order,
NVRTC contracts ``a * b + c`` into FMAs and CUDA's ``expf``/``powf`` differ
from glibc's by a few ulp; comparisons of device results with host results
that go through such arithmetic use ``device.tol(rtol, atol)``, which on real
CuPy only raises them to at least ``GPU_RTOL``/``GPU_ATOL`` (1e-4/1e-5, float32).
Results exact by construction (copies, im2col, MAX pooling's choice, index
outputs) stay exact, and the Caffe parity cases keep their meta.json
tolerances, which already allow a different summation order.
"""
import collections
import os
import sys

# tests import their helpers (parity, gradcheck) as top-level modules
sys.path.insert(0, os.path.dirname(__file__))


import pytest  # noqa: E402

DEVICE_ENV = "PROTONET_TEST_DEVICE"
GPU_RTOL, GPU_ATOL = 1e-4, 1e-5


def device_choice():
    """``"fake"`` or ``"cupy"`` from PROTONET_TEST_DEVICE (unset or empty: ``"fake"``)."""
    return (os.environ.get(DEVICE_ENV) or "fake").strip().lower()


def pytest_report_header(config):
    choice = device_choice()
    what = {"fake": "tests/fakecupy.py (CPU stand-in)", "cupy": "real CuPy on a GPU"}.get(
        choice, "INVALID (device tests will fail)")
    return "protonet device tests: %s=%s -> %s" % (DEVICE_ENV, choice, what)


class DeviceUnderTest:
    """What the ``device`` fixture returns: everything a test needs device-side.

    Attribute access falls through to the array module (``device.asarray``,
    ``device.zeros``, ``device.ndarray``, ``device.cuda``,
    ``device.get_default_memory_pool()`` ...); ``module`` is the module itself
    (for code that takes an ``xp``), ``is_fake`` says which one it is,
    ``launch_counts`` counts RawKernel launches per kernel name since the
    fixture started (or ``reset_launch_counts()``), ``device_name`` is what
    ``getDeviceProperties`` calls the current device.
    """

    def __init__(self, module, is_fake, launch_counts, reset_launch_counts):
        self.module = module
        self.is_fake = is_fake
        self.launch_counts = launch_counts
        self._reset = reset_launch_counts

    def __getattr__(self, name):
        return getattr(self.module, name)

    def __repr__(self):
        return "<device under test: %s>" % ("fakecupy" if self.is_fake else "cupy")

    def reset_launch_counts(self):
        self._reset()

    @property
    def device_name(self):
        from protonet import backend
        name = self.module.cuda.runtime.getDeviceProperties(backend.device())["name"]
        return name.decode() if isinstance(name, bytes) else str(name)

    def tol(self, rtol, atol=0.0, gpu=(GPU_RTOL, GPU_ATOL)):
        """``assert_allclose`` keywords: (rtol, atol) on the fake; on real CuPy at least ``gpu``."""
        if not self.is_fake:
            rtol, atol = max(rtol, gpu[0]), max(atol, gpu[1])
        return {"rtol": rtol, "atol": atol}


def _fake_module():
    import fakecupy
    fakecupy.reset_launch_counts()
    return DeviceUnderTest(fakecupy, True, fakecupy.launch_counts, fakecupy.reset_launch_counts)


def _real_cupy(monkeypatch):
    from protonet import backend, cuda_kernels
    cp = backend._load_cupy()  # noqa: SLF001  (the backend owns the import)
    if cp is None:
        pytest.fail("%s=cupy, but CuPy could not be imported through protonet.backend: %r. "
                    "Install the CuPy wheel for this machine's CUDA (e.g. cupy-cuda12x), or unset "
                    "%s to test the device path on tests/fakecupy.py."
                    % (DEVICE_ENV, backend._cupy_error, DEVICE_ENV), pytrace=False)  # noqa: SLF001
    try:
        count = int(cp.cuda.runtime.getDeviceCount())
    except Exception as exc:  # no driver, no device
        pytest.fail("%s=cupy, but CuPy %s finds no usable GPU: %r" % (DEVICE_ENV, cp.__version__, exc),
                    pytrace=False)
    if count < 1:
        pytest.fail("%s=cupy, but CuPy %s sees no CUDA device" % (DEVICE_ENV, cp.__version__),
                    pytrace=False)

    counts = collections.Counter()
    real_raw_kernel = cp.RawKernel

    class CountingRawKernel:
        """cupy.RawKernel, counting launches by kernel name as fakecupy does."""

        def __init__(self, code, name, *args, **kwargs):
            self._kernel = real_raw_kernel(code, name, *args, **kwargs)
            self.name = name

        def __call__(self, *args, **kwargs):
            result = self._kernel(*args, **kwargs)
            counts[self.name] += 1
            return result

        def __getattr__(self, attr):
            return getattr(self._kernel, attr)

    monkeypatch.setattr(cp, "RawKernel", CountingRawKernel)
    # cuda_kernels caches compiled kernels by id(module): start (and end) with an empty
    # cache so every kernel of the test is made, and counted, through the wrapper
    monkeypatch.setattr(cuda_kernels, "_compiled", {})
    return DeviceUnderTest(cp, False, counts, counts.clear)


@pytest.fixture
def device(monkeypatch):
    """GPU mode on fakecupy or real CuPy (PROTONET_TEST_DEVICE); CPU mode and the real backend afterwards."""
    from protonet import backend
    choice = device_choice()
    if choice == "fake":
        dut = _fake_module()
    elif choice == "cupy":
        dut = _real_cupy(monkeypatch)
    else:
        pytest.fail("%s must be 'fake' (or unset) or 'cupy', not %r"
                    % (DEVICE_ENV, os.environ.get(DEVICE_ENV)), pytrace=False)
    monkeypatch.setattr(backend, "_cupy", dut.module)
    monkeypatch.setattr(backend, "_cupy_error", None)
    monkeypatch.setitem(backend._state, "mode", "cpu")
    monkeypatch.setitem(backend._state, "device", 0)
    backend.set_mode_gpu()
    dut.reset_launch_counts()
    yield dut
    backend.set_mode_cpu()
