"""Bad input gets an error that names the file, line and layer: the cases an audit found."""
import numpy as np
import pytest

import protonet
from protonet.cli import main
from protonet.io import write_bytes_atomic
from protonet.net import NetError
from protonet.solver import SolverError, get_solver

PLUGIN_NET = """name: "p"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 } } }
layer { name: "plug" type: "Python" bottom: "data" top: "out"
  python_param { module: "%s" layer: "Plug" } }
"""


@pytest.mark.parametrize("source, expected", [
    ("import not_installed_anywhere_zz\n",
     "module 'broken_plugin' was found but importing it failed: it imports "
     "'not_installed_anywhere_zz', which is not installed"),
    ("def (:\n", "importing module 'broken_plugin' failed: SyntaxError"),
    ("raise RuntimeError('needs a licence file')\n",
     "importing module 'broken_plugin' failed: RuntimeError: needs a licence file"),
])
def test_a_plugin_that_fails_to_import_names_layer_and_line(tmp_path, monkeypatch, capsys,
                                                            source, expected):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(__import__("sys").modules, "broken_plugin", raising=False)
    (tmp_path / "broken_plugin.py").write_text(source)
    (tmp_path / "net.prototxt").write_text(PLUGIN_NET % "broken_plugin")
    with pytest.raises(NetError) as exc:
        protonet.Net("net.prototxt", phase="TEST")
    assert "layer 'plug' (type Python)" in str(exc.value) and expected in str(exc.value)
    assert str(exc.value).endswith("at net.prototxt:3")
    # and through the command line: one line, exit status 1, no traceback
    assert main(["time", "--model", "net.prototxt", "--iterations", "1"]) == 1
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_a_missing_digits_dataset_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(PLUGIN_NET % "x")
    assert main(["train", "--network", "net.prototxt", "--dataset", "nowhere", "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert "nowhere/train_db/features: no such LMDB folder" in err and "Traceback" not in err


def test_errors_point_at_the_layer_of_the_phase_being_built(tmp_path, monkeypatch):
    # TRAIN and TEST layers often share names; the error must name the one that failed
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text("""name: "d"
layer { name: "data" type: "DummyData" top: "data"
  dummy_data_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } }
  include { phase: TRAIN } }
layer { name: "data" type: "DummyData" top: "data"
  dummy_data_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } }
  include { phase: TEST } }
layer {
  name: 'conv'
  type: "Convolution" bottom: "data" top: "conv"
  include { phase: TRAIN } }
layer {
  name: 'conv'
  type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 2 }
  include { phase: TEST } }
""")
    for phase, line in (("TRAIN", 9), ("TEST", 13)):     # single-quoted names count too
        with pytest.raises(NetError, match=r"kernel_size .* is required at net\.prototxt:%d$" % line):
            protonet.Net("net.prototxt", phase=phase)


def test_a_missing_snapshot_folder_is_found_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(PLUGIN_NET.split("layer { name: \"plug\"")[0])
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 2\n'
        'snapshot_prefix: "nodir/s"\nsolver_mode: CPU\n')      # no `snapshot:`, but after train
    # as Caffe, building the solver does not check (a script may only call step())...
    solver = get_solver("solver.prototxt")
    solver.step(1)
    # ...but solve(), which ends with a snapshot, checks before it trains
    with pytest.raises(SolverError, match="cannot write to snapshot_prefix 'nodir/s'"):
        solver.solve()
    assert solver.iter == 1
    with open("solver.prototxt", "a") as f:
        f.write("snapshot: 1\n")                      # with `snapshot:`, at once (as Caffe)
    with pytest.raises(SolverError, match="cannot write to snapshot_prefix 'nodir/s'"):
        get_solver("solver.prototxt")


def test_an_unwritable_target_is_named_not_its_temporary_file(tmp_path):
    target = tmp_path / "missing" / "w.caffemodel"
    with pytest.raises(OSError, match="cannot write %s" % str(target).replace(".", r"\.")):
        write_bytes_atomic(str(target), b"abc")


def test_forward_and_backward_name_unknown_blobs_before_running(tmp_path):
    (tmp_path / "net.prototxt").write_text("""name: "f"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "constant" value: 1 } } }
""")
    net = protonet.Net(str(tmp_path / "net.prototxt"), phase="TEST")
    net.blobs["data"].data[...] = 1
    for call in (lambda: net.forward(blobs=["nope"]), lambda: net.backward(nope=np.ones(2)),
                 lambda: net.backward(diffs=["nope"])):
        with pytest.raises(KeyError, match="'nope' is not a blob of net f"):
            call()
    # a forward that fails on the input's shape leaves the net as it was
    with pytest.raises(Exception, match="ip"):
        net.forward(data=np.zeros((3, 8, 8), np.float32))
    assert net.blobs["data"].shape == (2, 3)
    out = net.forward(data=np.full((2, 3), 2.0, np.float32))
    np.testing.assert_array_equal(out["ip"], np.full((2, 2), 6.0))
