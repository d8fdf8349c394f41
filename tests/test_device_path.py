"""protonet's device (CuPy) path, run without a GPU through the stand-in tests/fakecupy.py.

With the fake installed as ``protonet.backend._cupy`` and GPU mode set, every
blob is a ``fakecupy.ndarray``, which refuses what real CuPy refuses (implicit
host conversions, host arrays in device operations, NumPy functions CuPy lacks)
and runs ``RawKernel`` sources through g++. Under it: every layer and net parity
case against real Caffe, the training trajectories, Dropout's training-time
statistics, Python-layer nets (host copies; a plugin's learnable blobs under the
solver), pycaffe's batched passes, ``protonet time --gpu 0``, ``device_query``
and ``infer --gpu 0``; and the fake itself.

The tests that take the ``device`` fixture run on real CuPy instead with
``PROTONET_TEST_DEVICE=cupy`` (see tests/conftest.py); the ``test_fake_*``
tests check the stand-in itself and always run on it.
"""
import json
import re

import numpy as np
import pytest

import fakecupy
import protonet
from logcapture import captured_log
from parity import cases, run_layer_case, run_net_case
from protonet import backend
from protonet.cli import main


def _assert_on_device(device, net):
    for name, blob in net.blobs.items():
        assert isinstance(blob.data, device.ndarray), name
        assert isinstance(blob.diff, device.ndarray), name
    for blob in net.learnable_params:
        assert isinstance(blob.data, device.ndarray) and isinstance(blob.diff, device.ndarray)


# ----------------------------------------------------------------------------- the fake itself
def test_fake_refuses_implicit_transfers():
    x = fakecupy.arange(6, dtype=np.float32).reshape(2, 3)
    host = np.ones((2, 3), np.float32)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(x)
    with pytest.raises(TypeError, match="Implicit conversion"):
        host[...] = x
    with pytest.raises(TypeError, match="Unsupported type"):
        x + host
    with pytest.raises(TypeError, match="Unsupported type"):
        np.multiply(x, np.ones((), np.float32), out=x)      # a 0-d host array too, as in CuPy
    with pytest.raises(TypeError, match="Unsupported type"):
        fakecupy.where(x > 1, x, host)
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        x[...] = host
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray"):
        fakecupy.copyto(x, host)
    # explicit transfers, and host scalars and index arrays, are fine
    x[...] = fakecupy.asarray(host * 3)
    x[0] = np.float32(7)
    x[np.array([1]), np.array([2])] = np.array([5.0], np.float32)
    np.testing.assert_array_equal(x.get(), [[7, 7, 7], [3, 3, 5]])
    copy = fakecupy.asarray(host)
    host[...] = 0
    assert float(copy.sum()) == 6.0                 # asarray copied the host array over
    np.testing.assert_array_equal(fakecupy.asnumpy(x + 1), [[8, 8, 8], [4, 4, 6]])
    with pytest.raises(ValueError, match="Unsupported dtype"):
        fakecupy.asarray(np.array(["a"]))


def test_fake_indexing_and_reductions_give_0d_device_arrays():
    x = fakecupy.arange(5, dtype=np.float32)
    item = x[3]
    assert isinstance(item, fakecupy.ndarray) and item.shape == ()
    item[...] = 9                                   # a view
    assert float(x[3]) == 9.0 and int(x[1]) == 1 and bool(x[1] > 0)
    total = x.sum()
    assert isinstance(total, fakecupy.ndarray) and total.shape == () and total.item() == 16.0
    assert isinstance(np.max(x), fakecupy.ndarray) and float(np.max(x)) == 9.0
    with pytest.raises(TypeError):
        range(x[1])                                 # CuPy arrays have no __index__
    with pytest.raises(TypeError, match="unsized"):
        len(total)
    assert x[1:3].base is x and x.base is None and "%.1f" % x[3] == "9.0"


def test_fake_has_cupy_names_only():
    x = fakecupy.ones((2, 2), np.float32)
    assert isinstance(np.exp(x), fakecupy.ndarray) and isinstance(np.sum(x, axis=0), fakecupy.ndarray)
    for name in ("resize", "ctypes", "tostring", "itemset"):
        assert not hasattr(x, name), name
    assert not hasattr(fakecupy, "histogram_bin_edges")
    with pytest.raises(TypeError):
        np.histogram_bin_edges(x)                   # NumPy has it, CuPy 14 does not
    assert fakecupy.abs is fakecupy.absolute and fakecupy.add.name == "cupy_add"
    idx = fakecupy.asarray([0, 0, 1])
    fakecupy.add.at(x, (idx, idx), 1)
    np.testing.assert_array_equal(x.get(), [[3, 1], [1, 2]])
    np.add.at(x, idx, 1)                            # NumPy's ufunc.at dispatches to CuPy's ...
    np.testing.assert_array_equal(x.get(), [[5, 3], [2, 3]])
    with pytest.raises(TypeError):
        np.add.at(x, (idx, idx), 1)                 # ... but not with a tuple index (as in CuPy)
    with pytest.raises(NotImplementedError, match="multiply.at"):
        np.multiply.at(x, idx, 2)
    with pytest.raises(NotImplementedError, match="reduce"):
        np.maximum.reduce(x)
    with pytest.raises(TypeError, match="scatter_add"):
        fakecupy.add.at(fakecupy.zeros(3, np.int64), idx, 1)   # CuPy's atomicAdd types
    assert fakecupy.random.RandomState(2 ** 63).random_sample((3,), np.float32).dtype == np.float32
    assert fakecupy.cuda.runtime.getDeviceProperties(0)["name"] == b"protonet fake device"
    with pytest.raises(fakecupy.cuda.runtime.CUDARuntimeError):
        fakecupy.cuda.Device(1).use()


def test_fake_memory_pool_counts_live_arrays():
    pool = fakecupy.get_default_memory_pool()
    before = pool.used_bytes()
    x = fakecupy.zeros(1 << 16, np.float32)
    view = x[10:]
    assert pool.used_bytes() == before + (1 << 18)
    del x
    assert pool.used_bytes() == before + (1 << 18)    # the view keeps the buffer alive
    del view
    assert pool.used_bytes() == before and pool.total_bytes() >= before + (1 << 18)
    pool.free_all_blocks()
    assert pool.total_bytes() == pool.used_bytes()


SAXPY = r"""
extern "C" __global__ void saxpy(const float* x, float* y, float a, long long n) {
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (long long)blockDim.x * gridDim.x)
    y[i] += a * x[i];
}
"""


def test_fake_raw_kernel_runs_a_grid_stride_kernel_on_the_host():
    fakecupy.reset_launch_counts()
    kern = fakecupy.RawKernel(SAXPY, "saxpy")
    x = fakecupy.arange(1000, dtype=np.float32)
    y = fakecupy.ones(1000, dtype=np.float32)
    kern((4,), (256,), (x, y, np.float32(2), np.int64(1000)))
    np.testing.assert_array_equal(y.get(), 1 + 2 * np.arange(1000, dtype=np.float32))
    assert fakecupy.launch_counts["saxpy"] == 1
    bad = [((x, y, 2.0, np.int64(1000)), TypeError, "Python float"),
           ((x, y, np.float64(2), np.int64(1000)), TypeError, "float64 scalar for a float32"),
           ((x, y, np.float32(2), np.int32(1000)), TypeError, "int32 scalar for a int64"),
           ((x.astype(np.float64), y, np.float32(2), np.int64(1000)), TypeError, "float64 array"),
           ((x[::2], y, np.float32(2), np.int64(500)), ValueError, "C-contiguous"),
           ((x.get(), y, np.float32(2), np.int64(1000)), TypeError, "Unsupported type"),
           ((x, y, np.float32(2)), TypeError, "takes 4 arguments"),
           ((y[1:], y[:-1], np.float32(2), np.int64(999)), ValueError, "overlap")]
    for args, error, message in bad:
        with pytest.raises(error, match=message):
            kern((4,), (256,), args)
    with pytest.raises(fakecupy.cuda.runtime.CUDARuntimeError):
        kern((4,), (2048,), (x, y, np.float32(2), np.int64(1000)))
    assert fakecupy.launch_counts["saxpy"] == 1
    with pytest.raises(ValueError, match="overlap"):               # in place: refused as well
        kern((1,), (1,), (y, y, np.float32(-1), np.int64(1000)))
    assert fakecupy.launch_counts["saxpy"] == 1
    with pytest.raises(fakecupy.cuda.compiler.CompileException):
        fakecupy.RawKernel('extern "C" __global__ void broken(float* x) { __syncthreads(); }',
                           "broken")((1,), (1,), (x,))


# ----------------------------------------------------------------------------- protonet on the device
@pytest.mark.parametrize("name", cases("layers"))
def test_layer_parity_on_device(device, name):
    net = run_layer_case(name)
    _assert_on_device(device, net)


@pytest.mark.parametrize("name", ["conv_basic", "deconv_group_pad", "pool_max_pad_clip",
                                  "pool_ave_pad", "lrn_across_alexnet"])
def test_vision_layers_launch_raw_kernels(device, name):
    run_layer_case(name)
    assert sum(device.launch_counts.values()) >= 2      # forward and backward


@pytest.mark.parametrize("name", cases("nets"))
def test_net_parity_on_device(device, name):
    net, _ = run_net_case(name)
    _assert_on_device(device, net)


@pytest.mark.parametrize("name", cases("train"))
def test_training_parity_on_device(device, name, tmp_path, monkeypatch):
    from test_parity_train import check_train_from_init
    solver = check_train_from_init(name, tmp_path, monkeypatch, extra_args=["--gpu", "0"])
    _assert_on_device(device, solver.net)
    assert all(isinstance(h, device.ndarray) for h in solver.history)


DROPOUT = """
force_backward: true
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 8 dim: 4 dim: 50 dim: 50 } } }
layer { name: "drop" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 0.3 } }
"""


def _dropout(device, tmp_path, seed):
    path = tmp_path / "dropout.prototxt"
    path.write_text(DROPOUT)
    protonet.set_random_seed(seed)
    net = protonet.Net(str(path), protonet.TRAIN)
    x = np.random.default_rng(1).uniform(0.5, 1.5, net.blobs["x"].shape).astype(np.float32)
    net.blobs["x"].data[...] = device.asarray(x)
    net.forward_from_to()
    net.blobs["y"].diff[...] = device.asarray(x * 2)
    net.backward_from_to()
    _assert_on_device(device, net)
    return x, net.blobs["y"].data.get(), net.blobs["x"].diff.get()


def test_dropout_at_train_time_on_device(device, tmp_path):
    x, y, dx = _dropout(device, tmp_path, 5)
    kept = y != 0
    n = kept.size
    # keep probability 0.7: within 5 standard deviations of it
    assert abs(kept.mean() - 0.7) < 5 * np.sqrt(0.7 * 0.3 / n)
    scale = np.float32(1.0 / (1.0 - 0.3))
    np.testing.assert_array_equal(y[kept], x[kept] * scale)
    np.testing.assert_array_equal(dx, np.where(kept, 2 * x * scale, 0).astype(np.float32))
    # one seed repeats the mask, another one changes it
    _, y_again, _ = _dropout(device, tmp_path, 5)
    _, y_other, _ = _dropout(device, tmp_path, 6)
    np.testing.assert_array_equal(y, y_again)
    assert (y_other != 0).mean() == pytest.approx(0.7, abs=0.02) and (y_other != y).any()


def test_dropout_on_device_drops_the_units_a_cpu_run_drops(device, tmp_path):
    # the mask is Caffe's CPU draw, made on the host and copied over: one seed, one run
    x, y, dx = _dropout(device, tmp_path, 9)
    backend.set_mode_cpu()
    try:
        protonet.set_random_seed(9)
        net = protonet.Net(str(tmp_path / "dropout.prototxt"), protonet.TRAIN)
        net.blobs["x"].data[...] = x
        net.forward_from_to()
        np.testing.assert_array_equal(y, net.blobs["y"].data)
        assert protonet.rng.get_rng().draws == x.size
    finally:
        backend.set_mode_gpu()


def test_python_layer_net_on_device_gets_host_copies(device, tmp_path):
    from test_python_layer_host_copies import NET
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    r = np.random.default_rng(0)
    x = r.normal(size=(2, 3, 6, 5)).astype(np.float32)
    label = (r.uniform(size=(2, 1, 6, 5)) < 0.3).astype(np.float32)
    results = {}
    for mode in ("gpu", "cpu"):
        (backend.set_mode_gpu if mode == "gpu" else backend.set_mode_cpu)()
        protonet.set_random_seed(7)
        net = protonet.Net(str(path), protonet.TRAIN)
        xp = backend.xp()
        net.blobs["x"].data[...] = xp.asarray(x)
        net.blobs["label"].data[...] = xp.asarray(label)
        loss = net.forward_from_to()
        net.clear_param_diffs()
        net.backward_from_to()
        results[mode] = (net, loss)
    net, loss = results["gpu"]
    cpu, cpu_loss = results["cpu"]
    _assert_on_device(device, net)
    i = net.layer_names.index("dloss")
    assert type(net.layers[i]).__name__ == "HostCopyLayer"
    plugin = net.layers[i].plugin
    assert plugin.xp is np and all(isinstance(b.data, np.ndarray) for b in plugin.blobs)
    assert all(isinstance(b.data, np.ndarray) for b in net.layers[i]._bottom)
    # a convolution (GEMM) and the plugin's sums: device.tol loosens these on real CuPy only
    assert loss > 0 and loss == pytest.approx(cpu_loss, rel=device.tol(1e-5)["rtol"])
    for name in ("score", "dloss", "dice"):
        np.testing.assert_allclose(net.blobs[name].data.get(), cpu.blobs[name].data,
                                   **device.tol(1e-5, 1e-6))
    np.testing.assert_allclose(net.blobs["x"].diff.get(), cpu.blobs["x"].diff, **device.tol(1e-4, 1e-6))
    assert np.abs(net.blobs["x"].diff.get()).sum() > 0


def test_python_layer_parameters_train_on_device(device, tmp_path, monkeypatch):
    """A plugin's learnable blobs live on the device for the solver; the plugin sees host mirrors."""
    import caffe
    from test_plugins import SCALE_NET, SCALE_PLUGIN
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "scale_plugin.py").write_text(SCALE_PLUGIN)
    (tmp_path / "net.prototxt").write_text(SCALE_NET)
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt" base_lr: 0.2 lr_policy: "fixed" momentum: 0.5 max_iter: 40 '
        'display: 0 snapshot: 40 snapshot_prefix: "scale"')
    data = np.linspace(-1.5, 1.5, 12, dtype=np.float32).reshape(4, 3)
    weights = {}
    for mode in ("cpu", "gpu"):
        (backend.set_mode_gpu if mode == "gpu" else backend.set_mode_cpu)()
        solver = caffe.get_solver("solver.prototxt")
        xp = backend.xp()
        solver.net.blobs["data"].set_data(data)
        solver.net.blobs["target"].set_data(3 * data)
        solver.solve()
        weights[mode] = float(solver.net.params["scale"][0].data[0])
    layer = solver.net._layers[solver.net.layer_names.index("scale")]       # the engine's layer
    assert isinstance(layer.blobs[0].data, device.ndarray) and xp is device.module
    shown = solver.net.layers[solver.net.layer_names.index("scale")]        # pycaffe's view of it
    assert isinstance(shown.blobs[0].data, np.ndarray) and shown.blobs[0].data[0] == weights["gpu"]
    assert isinstance(layer.plugin.blobs[0].data, np.ndarray)
    solver.net.forward()                        # the mirror follows the device blob at each call
    assert float(layer.plugin.blobs[0].data[0]) == weights["gpu"]
    # 40 steps through EuclideanLoss's sums: on a real GPU they round differently
    close = 1e-6 if device.is_fake else 1e-5
    assert abs(weights["gpu"] - 3) < 1e-3 and weights["gpu"] == pytest.approx(weights["cpu"], abs=close)
    again = caffe.get_solver("solver.prototxt")
    again.restore(str(tmp_path / "scale_iter_40.solverstate"))
    assert again.iter == 40 and float(again.net.params["scale"][0].data[0]) == weights["gpu"]
    assert isinstance(again.history[0], device.ndarray)


def test_pycaffe_batched_passes_take_host_arrays_on_device(device, tmp_path):
    import caffe
    path = tmp_path / "ip.prototxt"
    path.write_text('force_backward: true input: "data" input_shape { dim: 2 dim: 3 } '
                    'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "out" '
                    'inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }')
    x = np.arange(15, dtype=np.float32).reshape(5, 3)
    d = np.linspace(-1, 1, 10, dtype=np.float32).reshape(5, 2)
    results = {}
    for mode in ("gpu", "cpu"):
        (backend.set_mode_gpu if mode == "gpu" else backend.set_mode_cpu)()
        caffe.set_random_seed(1)
        net = caffe.Net(str(path), caffe.TRAIN)
        results[mode] = net.forward_backward_all(data=x, out=d)     # host arrays in, host out
    (gpu_out, gpu_diff), (cpu_out, cpu_diff) = results["gpu"], results["cpu"]
    assert isinstance(gpu_out["out"], np.ndarray) and gpu_diff["data"].shape == (5, 3)
    # InnerProduct's GEMMs: cuBLAS on a real GPU (device.tol)
    np.testing.assert_allclose(gpu_out["out"], cpu_out["out"], **device.tol(1e-6))
    np.testing.assert_allclose(gpu_diff["data"], cpu_diff["data"], **device.tol(1e-6))
    assert np.abs(gpu_diff["data"]).sum() > 0


TIME_NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "relu" type: "ReLU" bottom: "pool" top: "pool" }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
"""


def test_time_command_on_device(device, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(TIME_NET)
    backend.set_mode_cpu()
    with captured_log() as stream:
        assert main(["time", "--model", "net.prototxt", "--iterations", "2", "--gpu", "0",
                     "--json"]) == 0
        assert main(["device_query", "--gpu", "0"]) == 0
    assert backend.mode() == "gpu"
    report = json.loads(capsys.readouterr().out)
    assert report["device"] == "gpu:0" and report["iterations"] == 2
    assert [l["name"] for l in report["layers"]] == ["data", "conv", "pool", "relu", "ip"]
    assert all(l["forward_ms"] >= 0 and l["backward_ms"] >= 0 for l in report["layers"])
    log = stream.getvalue()
    name = device.device_name              # "protonet fake device" on the fake
    props = device.cuda.runtime.getDeviceProperties(0)
    assert "Use GPU with device ID 0" in log and "GPU device name: %s" % name in log
    assert re.search(r"Name: +%s" % re.escape(name), log)
    assert re.search(r"Total global memory: +%d" % props["totalGlobalMem"], log)
    if device.is_fake:
        assert props["totalGlobalMem"] == 16 << 30
    assert sum(device.launch_counts.values()) > 0
    count = device.cuda.runtime.getDeviceCount()            # 1 on the fake
    assert main(["time", "--model", "net.prototxt", "--iterations", "1", "--gpu", str(count)]) == 1
    assert "GPU %d requested but only %d GPU(s) are usable" % (count, count) in capsys.readouterr().err


def test_train_command_on_device(device, tmp_path, monkeypatch, capsys):
    from test_cli import NET, SOLVER
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(NET)
    # solver_mode: GPU in the file picks device_id's GPU, as `caffe train` does without -gpu
    (tmp_path / "solver.prototxt").write_text((SOLVER % 5).replace("solver_mode: CPU",
                                                                   "solver_mode: GPU"))
    backend.set_mode_cpu()
    with captured_log() as stream:
        assert main(["train", "--solver", "solver.prototxt", "--no-curve"]) == 0
    log = stream.getvalue()
    assert "Using GPUs 0" in log and "GPU 0: %s" % device.device_name in log
    assert "Use GPU with device ID" not in log          # test's and time's words, not train's
    assert backend.mode() == "gpu"
    assert (tmp_path / "snap_iter_5.caffemodel").exists()


def test_nets_of_different_modes_cannot_share_weights(device):
    from protonet.net import NetError
    text = ('name: "n" input: "x" input_shape { dim: 1 dim: 3 } '
            'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 } }')
    gpu_net = protonet.Net(text_format_net(text), protonet.TEST)
    backend.set_mode_cpu()
    cpu_net = protonet.Net(text_format_net(text), protonet.TEST)
    with pytest.raises(NetError, match="cannot share weights.*one mode"):
        cpu_net.share_with(gpu_net)


def text_format_net(text):
    from google.protobuf import text_format
    from protonet.proto import caffe_pb2
    return text_format.Merge(text, caffe_pb2.NetParameter())


def test_plugins_run_as_caffe_runs_them_on_device(device, tmp_path, monkeypatch):
    """Plugins on a device net see host arrays; in-place tops, late blobs, their own
    exceptions and attributes set through net.layers behave as on the CPU."""
    from test_plugins import check_caffe_way_plugins
    check_caffe_way_plugins(tmp_path, monkeypatch)
