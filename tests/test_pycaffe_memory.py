"""pycaffe's memory semantics, in the style of Caffe's own python/caffe/test
(test_net.py, test_solver.py, test_python_layer.py, test_net_spec.py): hold an
array, act, assert its values.

In Caffe ``net.params[k][i].data`` and ``.diff`` are the blob's memory: a
script that holds the array sees every change the engine makes, and every
write through it counts. protonet defers some diff work (the per-iteration
clear, the copy of the momentum into the diff, low-rank products); these
tests hold the arrays the way scripts do and check that none of it shows.
"""
import numpy as np
import pytest

import caffe
from caffe import layers as L

NUM_OUTPUT = 13

# Caffe's simple_net_file (test_net.py), with Input layers so that every forward sees
# the same data and two runs can be compared.
SIMPLE_NET = """name: 'testnet' force_backward: true
layer { type: 'Input' name: 'data' top: 'data' top: 'label'
  input_param { shape { dim: 5 dim: 2 dim: 3 dim: 4 } shape { dim: 5 } } }
layer { type: 'Convolution' name: 'conv' bottom: 'data' top: 'conv'
  convolution_param { num_output: 11 kernel_size: 2 pad: 3
    weight_filler { type: 'gaussian' std: 1 }
    bias_filler { type: 'constant' value: 2 } }
    param { decay_mult: 1 } param { decay_mult: 0 } }
layer { type: 'InnerProduct' name: 'ip' bottom: 'conv' top: 'ip'
  inner_product_param { num_output: %d
    weight_filler { type: 'gaussian' std: 2.5 }
    bias_filler { type: 'constant' value: -3 } } }
layer { type: 'SoftmaxWithLoss' name: 'loss' bottom: 'ip' bottom: 'label' top: 'loss' }
""" % NUM_OUTPUT

# Caffe's TestSolver settings (test_solver.py), with a seed so that two solvers start equal.
SOLVER = """net: '%s'
base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: 'inv' gamma: 0.0001 power: 0.75
display: 0 max_iter: 100 snapshot_after_train: false random_seed: 1701
snapshot_prefix: "model"
"""


def simple_net_file(tmp_path):
    path = tmp_path / "simple_net.prototxt"
    path.write_text(SIMPLE_NET)
    return str(path)


def feed(net, seed=0):
    r = np.random.RandomState(seed)
    net.blobs["data"].data[...] = r.randn(*net.blobs["data"].data.shape)
    net.blobs["label"].data[...] = r.randint(NUM_OUTPUT, size=net.blobs["label"].data.shape)


def make_net(tmp_path):
    net = caffe.Net(simple_net_file(tmp_path), caffe.TRAIN)
    feed(net)
    return net


def make_solver(tmp_path, name="solver.prototxt"):
    path = tmp_path / name
    path.write_text(SOLVER % simple_net_file(tmp_path))
    solver = caffe.SGDSolver(str(path))
    solver.progress = False
    solver.curve_path = None
    feed(solver.net)
    return solver


def params(net):
    return [p for ps in net.params.values() for p in ps]


def gradients(net):
    """The gradient at the net's current weights, by a clear, forward and backward."""
    net.clear_param_diffs()
    net.forward()
    net.backward()
    return [p.diff.copy() for p in params(net)]


# -- test_net.py ---------------------------------------------------------------------
def test_clear_param_diffs_zeroes_a_held_diff(tmp_path):
    net = make_net(tmp_path)
    diffs = [p.diff for p in params(net)]
    net.forward()
    net.backward()
    assert all(np.abs(d).sum() > 0 for d in diffs)
    net.clear_param_diffs()
    for d in diffs:
        assert (d == 0).all()


def test_backward_adds_into_a_held_diff(tmp_path):
    net = make_net(tmp_path)
    expected = gradients(net)
    net.clear_param_diffs()
    diffs = [p.diff for p in params(net)]       # fetched after the clear, before the pass
    net.forward()
    net.backward()
    for d, g in zip(diffs, expected):
        np.testing.assert_array_equal(d, g)
    net.backward()                              # parameter gradients accumulate, as in Caffe
    for d, g in zip(diffs, expected):
        np.testing.assert_array_equal(d, 2 * g)


def test_a_diff_written_through_a_held_array_reaches_backward(tmp_path):
    net = make_net(tmp_path)
    expected = gradients(net)
    diffs = [p.diff for p in params(net)]
    net.clear_param_diffs()
    for d in diffs:
        d[...] = 1                              # after the clear: it must not be zeroed later
    net.forward()
    net.backward()
    for d, g in zip(diffs, expected):
        np.testing.assert_allclose(d, g + 1, rtol=1e-6, atol=1e-6)


# -- test_solver.py ------------------------------------------------------------------
def test_apply_update(tmp_path):
    # Caffe's own test
    solver = make_solver(tmp_path)
    net = solver.net
    data = net.layers[1].blobs[0].data[...]
    data[...] = 0
    net.layers[1].blobs[0].diff[...] = 1
    solver.apply_update()
    assert (data - -0.01 * np.ones(data.shape)).max() < 1e-7


def test_apply_update_takes_a_diff_written_after_the_clear(tmp_path):
    # the same with the arrays held from before a clear, as a training script holds them
    solver = make_solver(tmp_path)
    net = solver.net
    data, diff = net.layers[1].blobs[0].data, net.layers[1].blobs[0].diff
    net.clear_param_diffs()
    data[...] = 0
    diff[...] = 1
    solver.apply_update()
    np.testing.assert_allclose(data, -0.01, rtol=1e-6)
    # the diff holds the update value afterwards: lr * (1 + decay * 0) = 0.01
    np.testing.assert_allclose(diff, 0.01, rtol=1e-6)


def test_step_leaves_the_update_value_in_a_held_diff(tmp_path):
    solver = make_solver(tmp_path)
    blobs = params(solver.net)
    data = [p.data for p in blobs]
    diffs = [p.diff for p in blobs]
    decay = [1, 0, 1, 1]                        # conv's bias has decay_mult 0
    for it in range(3):
        before = [w.copy() for w in data]
        previous = [d.copy() if it else 0 * d for d in diffs]     # the last update value
        grads = gradients(solver.net)
        rate = 0.01 * (1 + 0.0001 * it) ** -0.75
        solver.step(1)
        for i, (w, d) in enumerate(zip(data, diffs)):
            # Caffe's SGD: diff = momentum * previous update + rate * (g + decay * w); w -= diff
            expect = 0.9 * previous[i] + rate * (grads[i] + 0.0005 * decay[i] * before[i])
            np.testing.assert_allclose(d, expect, rtol=2e-5, atol=1e-9)
            np.testing.assert_array_equal(w, before[i] - d)
            np.testing.assert_array_equal(d, solver.history[i])


def test_callbacks_see_caffe_values_in_held_diffs(tmp_path):
    solver = make_solver(tmp_path)
    diffs = [p.diff for p in params(solver.net)]
    at_start, at_ready = [], []
    solver.add_callback(lambda: at_start.append([d.copy() for d in diffs]),
                        lambda: at_ready.append([d.copy() for d in diffs]))
    for _ in range(3):
        expected = gradients(solver.net)
        solver.step(1)
        for d in at_start[-1]:
            assert (d == 0).all()               # cleared before on_start, as Caffe's Step
        for d, g in zip(at_ready[-1], expected):
            np.testing.assert_array_equal(d, g)


REGRESSION_NET = """name: 'lsq'
layer { type: 'Input' name: 'data' top: 'data' top: 'target'
  input_param { shape { dim: 8 dim: 3 } shape { dim: 8 dim: 1 } } }
layer { type: 'InnerProduct' name: 'ip' bottom: 'data' top: 'ip'
  inner_product_param { num_output: 1 weight_filler { type: 'gaussian' std: 1 }
                        bias_filler { type: 'gaussian' std: 1 } } }
layer { type: 'EuclideanLoss' name: 'loss' bottom: 'ip' bottom: 'target' top: 'loss' }
"""


@pytest.mark.parametrize("net_text", [SIMPLE_NET, REGRESSION_NET], ids=["simple", "regression"])
def test_holding_diffs_does_not_change_training(tmp_path, net_text):
    # whether a script looks at the diffs never changes the numbers: the engine's lazy
    # forms and the eager ones Caffe runs give the same bits (a run interrupted by a
    # signal callback and resumed from its snapshot depends on it)
    (tmp_path / "net.prototxt").write_text(net_text)
    (tmp_path / "solver.prototxt").write_text(SOLVER % (tmp_path / "net.prototxt"))
    r = np.random.RandomState(3)
    x = r.randn(8, 3).astype(np.float32)

    def run(callbacks=None, watch=False):
        solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
        solver.progress, solver.curve_path = False, None
        if net_text is SIMPLE_NET:
            feed(solver.net)
        else:
            solver.net.blobs["data"].data[...] = x
            solver.net.blobs["target"].data[...] = x @ [[1.0], [-2.0], [0.5]] + 0.3
        seen = []
        if callbacks:
            solver.add_callback(lambda: None, lambda: None)     # callbacks that touch no diff
        if watch:
            solver.add_callback(None, lambda: seen.append([p.diff.copy() for p in params(solver.net)]))
        solver.step(20)
        assert len(seen) == (20 if watch else 0)
        return [p.data.copy() for p in params(solver.net)]

    plain = run()
    for other in (run(callbacks=True), run(watch=True)):
        for a, b in zip(plain, other):
            np.testing.assert_array_equal(a, b)


# -- test_python_layer.py --------------------------------------------------------------
PLUGINS = """
import caffe


class LearnedScale(caffe.Layer):
    \"\"\"top = w * bottom; keeps its diff array from setup and adds into it.\"\"\"

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = 2
        self.w_diff = self.blobs[0].diff

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self.w_diff[...] += (top[0].diff * bottom[0].data).sum()
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data[0] * top[0].diff


class SetupFails(caffe.Layer):
    \"\"\"No reshape(): Caffe calls setup() first, so this error is the one raised.\"\"\"

    def setup(self, bottom, top):
        raise ValueError("setup refuses")

    def forward(self, bottom, top):
        pass


class NoReshape(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass
"""

PLUGIN_NET = """name: 'pythonnet' force_backward: true
layer { type: 'Input' name: 'data' top: 'data' input_param { shape { dim: 4 dim: 3 } } }
layer { type: 'Python' name: 'scale' bottom: 'data' top: 'y'
  python_param { module: 'memory_plugins' layer: '%s' } }
layer { type: 'EuclideanLoss' name: 'loss' bottom: 'y' bottom: 'data' top: 'loss' }
"""


def plugin_net_file(tmp_path, monkeypatch, layer):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "memory_plugins", raising=False)
    (tmp_path / "memory_plugins.py").write_text(PLUGINS)
    path = tmp_path / "plugin_net.prototxt"
    path.write_text(PLUGIN_NET % layer)
    return str(path)


def test_a_plugin_diff_kept_from_setup_is_the_blob_memory(tmp_path, monkeypatch):
    net_file = plugin_net_file(tmp_path, monkeypatch, "LearnedScale")
    (tmp_path / "s.prototxt").write_text("net: '%s' base_lr: 0.1 momentum: 0.5 lr_policy: 'fixed' "
                                         "max_iter: 10 snapshot_after_train: false" % net_file)
    solver = caffe.SGDSolver(str(tmp_path / "s.prototxt"))
    solver.progress, solver.curve_path = False, None
    x = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    solver.net.blobs["data"].data[...] = x
    kept = solver.net.layer_dict["scale"].w_diff
    w = solver.net.params["scale"][0].data
    history = 0.0
    for _ in range(3):
        before = float(w[0])
        # EuclideanLoss: d/dw of sum((w x - x)^2) / (2 N) = sum((w - 1) x^2) / N
        grad = float(((before - 1) * x.astype(np.float64) ** 2).sum() / 4)
        solver.step(1)
        history = 0.5 * history + 0.1 * grad
        np.testing.assert_allclose(kept[0], history, rtol=1e-5)     # the update value, in place
        np.testing.assert_allclose(w[0], before - history, rtol=1e-5)
    solver.net.clear_param_diffs()
    assert kept[0] == 0


def test_a_plugin_without_reshape_raises_its_setup_error(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="setup refuses"):
        caffe.Net(plugin_net_file(tmp_path, monkeypatch, "SetupFails"), caffe.TRAIN)
    with pytest.raises(Exception, match=r"memory_plugins.NoReshape defines no reshape\(\)") as info:
        caffe.Net(plugin_net_file(tmp_path, monkeypatch, "NoReshape"), caffe.TRAIN)
    assert "plugin_net.prototxt:3" in str(info.value)


# -- test_net_spec.py ------------------------------------------------------------------
def test_net_spec_type_error():
    # Caffe's own test
    data = L.DummyData(ntop=2)      # a 2-tuple of Tops
    with pytest.raises(TypeError, match=r"^Silence input 0 is not a Top \(type is <class 'tuple'>\)$"):
        L.Silence(data, ntop=0)
    L.Silence(*data, ntop=0)
