"""The GPU path for Python plugins: host mirrors copied around each call.

Without a GPU the engine's arrays are NumPy too, so forcing the copies runs the
same adapter a CuPy net uses; its results must equal the direct path exactly.
"""
import numpy as np
import pytest

import protonet
from protonet import python_layer

NET = """
force_backward: true
layer { name: "in" type: "Input" top: "x" top: "label"
  input_param { shape { dim: 2 dim: 3 dim: 6 dim: 5 } shape { dim: 2 dim: 1 dim: 6 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "score"
  convolution_param { num_output: 2 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "dloss" type: "Python" bottom: "score" bottom: "label" top: "dloss" loss_weight: 2
  python_param { module: "dice" layer: "DiceLoss" } }
layer { name: "dice" type: "Python" bottom: "score" bottom: "label" top: "dice"
  python_param { module: "dice" layer: "Dice" } }
"""


def _run(tmp_path, force):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    old = python_layer.force_host_copies
    python_layer.force_host_copies = force
    try:
        protonet.set_random_seed(7)
        net = protonet.Net(str(path), protonet.TRAIN)
    finally:
        python_layer.force_host_copies = old
    r = np.random.default_rng(0)
    net.blobs["x"].data[...] = r.normal(size=(2, 3, 6, 5))
    net.blobs["label"].data[...] = r.uniform(size=(2, 1, 6, 5)) < 0.3
    loss = net.forward_from_to()
    net.clear_param_diffs()
    net.backward_from_to()
    return net, loss


def test_host_copies_give_the_direct_results(tmp_path):
    direct, loss_a = _run(tmp_path, False)
    copied, loss_b = _run(tmp_path, True)
    i = copied.layer_names.index("dloss")
    assert type(copied.layers[i]).__name__ == "HostCopyLayer"
    assert type(direct.layers[i]).__name__ == "DiceLoss"
    assert copied.layers[i].type == "Python" and copied.layers[i].plugin_name == "dice.DiceLoss"
    assert loss_a == loss_b and loss_a > 0
    for name in ("dloss", "dice", "score"):
        np.testing.assert_array_equal(direct.blobs[name].data, copied.blobs[name].data)
    np.testing.assert_array_equal(direct.blobs["score"].diff, copied.blobs["score"].diff)
    np.testing.assert_array_equal(direct.blobs["x"].diff, copied.blobs["x"].diff)
    assert np.abs(copied.blobs["x"].diff).sum() > 0
    # the plugin saw host blobs of its own, not the engine's
    plugin = copied.layers[i].plugin
    assert plugin.blobs is copied.layers[i].blobs


def test_plugin_error_inside_host_copies_names_the_layer(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET.replace('bottom: "score" bottom: "label" top: "dice"',
                                'bottom: "label" bottom: "label" top: "dice"'))
    python_layer.force_host_copies = True
    try:
        with pytest.raises(python_layer.PythonLayerError, match="'dice'"):
            protonet.Net(str(path), protonet.TRAIN).forward_from_to()
    finally:
        python_layer.force_host_copies = None
