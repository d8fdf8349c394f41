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


# ---------------------------------------------------------------- the fuzz's classes (issue #15)
from protonet.data.datum import DataError, array_to_datum  # noqa: E402
from protonet.data.db import LMDBReader, write_lmdb  # noqa: E402
from protonet.digits import DatasetError, bind_dataset  # noqa: E402
from protonet.io import FormatError, parse_net, read_net, read_solver  # noqa: E402

INPUT_NET = """name: "b"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
%s
"""


def _small_lmdb(path, n=40, size=8):
    return write_lmdb(str(path), [array_to_datum(np.full((1, size, size), i % 256, np.uint8), label=i)
                                  for i in range(n)])


@pytest.mark.parametrize("keep", [0, 10, 100, 4096, 6000, 8192, 12288, 0.5, -4096, -1])
def test_a_truncated_lmdb_is_refused_before_lmdb_maps_it(tmp_path, keep):
    # lmdb maps the file as long as its header says: reading past the end is SIGBUS
    _small_lmdb(tmp_path / "db", n=300, size=16)
    data = (tmp_path / "db" / "data.mdb").read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data) if keep < 0 else keep
    (tmp_path / "db" / "data.mdb").write_bytes(data[:cut])
    with pytest.raises(DataError) as exc:
        LMDBReader(str(tmp_path / "db"))
    message = str(exc.value)
    assert str(tmp_path / "db" / "data.mdb") in message
    assert ("truncated" in message or "empty" in message or "not an LMDB" in message), message
    if cut >= 8192:      # both header pages present: the sizes are given
        assert "%d bytes, but its header says the database fills %d" % (cut, len(data)) in message


def test_an_intact_lmdb_still_opens(tmp_path):
    _small_lmdb(tmp_path / "db", n=5)
    with LMDBReader(str(tmp_path / "db")) as reader:
        assert len(reader) == 5 and [k for k, _ in reader.items()][-1] == b"000000004"


@pytest.mark.parametrize("layer, blob, layer_name", [
    ('layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
     'inner_product_param { num_output: 3000000000 } }', "3000000000x192", "ip"),
    ('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
     'convolution_param { num_output: 4 kernel_size: 3 pad: 100000 } }', "1x4x200006x200006", "conv"),
])
def test_absurd_sizes_name_the_layer_and_the_bytes(tmp_path, monkeypatch, capsys, layer, blob,
                                                   layer_name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(INPUT_NET % layer)
    with pytest.raises(NetError) as exc:
        protonet.Net("net.prototxt", phase="TEST")
    message = str(exc.value)
    assert message.startswith("layer '%s' (type " % layer_name)
    assert "a blob of shape %s" % blob in message and "INT_MAX" in message
    assert "TiB" in message and message.endswith("at net.prototxt:3")
    assert main(["time", "--model", "net.prototxt", "--iterations", "1"]) == 1
    err = capsys.readouterr().err
    assert "a blob of shape %s" % blob in err and "Traceback" not in err


def test_a_blob_bigger_than_the_memory_is_refused_before_it_is_filled(tmp_path, monkeypatch):
    import protonet.blob as blob_module
    monkeypatch.setattr(blob_module, "_physical_memory", lambda: 1 << 20)       # 1 MiB
    (tmp_path / "net.prototxt").write_text(INPUT_NET % (
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
        'inner_product_param { num_output: 1000 } }'))
    with pytest.raises(NetError, match=r"^layer 'ip' \(type InnerProduct\): a blob of shape "
                                       r"1000x192 needs 1\.5 MiB \(data and diff\), more than "
                                       r"this machine's 1\.0 MiB of memory at "):
        protonet.Net(str(tmp_path / "net.prototxt"), phase="TEST")


def test_a_failed_allocation_names_the_layer_and_leaves_the_blob_as_it_was(tmp_path, monkeypatch):
    (tmp_path / "net.prototxt").write_text(INPUT_NET % (
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
        'inner_product_param { num_output: 2 } }'))
    net = protonet.Net(str(tmp_path / "net.prototxt"), phase="TEST")
    zeros = np.zeros

    def no_memory_for(count):
        def fake(n, *args, **kwargs):
            if n == count:
                raise MemoryError()
            return zeros(n, *args, **kwargs)
        return fake
    monkeypatch.setattr(net.blobs["data"].xp, "zeros", no_memory_for(4 * 3 * 8 * 8))
    with pytest.raises(NetError, match=r"^forward: input blob 'data' of net b: cannot allocate a "
                                       r"blob of shape 4x3x8x8: 6\.0 KiB \(data and diff\)"):
        net.forward(data=np.ones((4, 3, 8, 8), np.float32))
    assert net.blobs["data"].shape == (1, 3, 8, 8)
    # a top the layer reshapes: the layer is named
    monkeypatch.setattr(net.blobs["data"].xp, "zeros", no_memory_for(9 * 2))
    with pytest.raises(NetError, match=r"^layer 'ip' \(type InnerProduct\): cannot allocate a "
                                       r"blob of shape 9x2: 144 bytes \(data and diff\) .* at "):
        net.forward(data=np.ones((9, 3, 8, 8), np.float32))
    monkeypatch.undo()
    assert net.blobs["data"].shape == (1, 3, 8, 8) and net.blobs["ip"].shape == (1, 2)
    out = net.forward(data=np.ones((1, 3, 8, 8), np.float32))
    assert out["ip"].shape == (1, 2)


@pytest.mark.parametrize("argv, message", [
    (["data", "sunnybrook", "--images", "i", "--contours", "c", "--out", "o", "--size", "0"],
     "argument --size: 0: must be at least 1"),
    (["data", "sunnybrook", "--images", "i", "--contours", "c", "--out", "o", "--size", "-5"],
     "argument --size: -5: must be at least 1"),
    (["data", "sunnybrook", "--images", "i", "--contours", "c", "--out", "o", "--val-pct", "nan"],
     "argument --val-pct: nan: must be a finite number"),
    (["data", "sunnybrook", "--images", "i", "--contours", "c", "--out", "o", "--seed", "-1"],
     "argument --seed: -1: must be 0 or more"),
    (["data", "synth-sunnybrook", "--out", "o", "--cases", "0"], "argument --cases: 0: must be"),
    (["train", "--network", "n", "--dataset", "d", "--epochs", "0"],
     "argument --epochs: 0: must be greater than 0"),
    (["train", "--network", "n", "--dataset", "d", "--base-lr", "inf"],
     "argument --base-lr: inf: must be a finite number"),
    (["train", "--network", "n", "--dataset", "d", "--batch-size", "-2"],
     "argument --batch-size: -2: must be at least 1"),
    (["train", "--network", "n", "--dataset", "d", "--val-epochs", "-1"],
     "argument --val-epochs: -1: must be 0 or more"),
    (["train", "--solver", "s", "--iterations", "0"], "argument --iterations: 0: must be"),
    (["test", "--model", "m", "--weights", "w", "--iterations", "x"],
     "argument --iterations: 'x' is not a whole number"),
    (["time", "--model", "m", "--level", "99999999999"], "argument --level: 99999999999: must be"),
    (["infer", "x", "--model", "m", "--weights", "w", "--out", "o", "--limit", "0"],
     "argument --limit: 0: must be at least 1"),
    (["tutorial", "--epochs", "-1"], "argument --epochs: -1: must be greater than 0"),
    (["infer", "x", "--model", "m", "--weights", "w", "--out", "o", "--embed-mb", "nan"],
     "argument --embed-mb: nan: must be a finite number"),
])
def test_command_line_numbers_are_checked_where_they_are_typed(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_sunnybrook_convert_refuses_a_size_of_zero(tmp_path):
    from protonet.data.sunnybrook import SunnybrookError, convert
    for bad in (0, -5, 2.5):
        with pytest.raises(SunnybrookError, match="size must be a whole number of pixels"):
            convert(str(tmp_path), str(tmp_path), str(tmp_path / "out"), size=bad)


def test_ctrl_c_at_any_moment_is_one_line_and_status_130(tmp_path, monkeypatch, capsys):
    import protonet.cli as cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    # while the parser is built (plugins of `data` are imported then): before logging is set up
    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert main(["time", "--model", "x"]) == 130
    assert capsys.readouterr().err == "protonet: interrupted\n"
    monkeypatch.undo()
    # inside a command
    monkeypatch.setattr(cli, "time_command", interrupted)
    monkeypatch.setattr(cli, "COMMANDS", [c if c[0] != "time" else (c[0], interrupted) + c[2:]
                                          for c in cli.COMMANDS])
    assert main(["time", "--model", "x"]) == 130
    err = capsys.readouterr().err
    assert "Interrupted." in err and "Traceback" not in err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "Infinity", "1e39", "-NaN"])
@pytest.mark.parametrize("field, line", [("base_lr", 2), ("momentum", 4), ("gamma", 5),
                                         ("weight_decay", 6), ("clip_gradients", 7),
                                         ("delta", 8)])
def test_non_finite_solver_settings_are_refused_naming_file_line_field(tmp_path, field, line,
                                                                       value):
    fields = ["base_lr: 0.1", 'lr_policy: "step"', "momentum: 0.9", "gamma: 0.1",
              "weight_decay: 0.0005", "clip_gradients: 10", "delta: 1e-8", "stepsize: 10"]
    text = 'net: "n.prototxt"\n' + "\n".join(f if not f.startswith(field + ":")
                                            else "%s: %s" % (field, value) for f in fields) + "\n"
    (tmp_path / "solver.prototxt").write_text(text)
    with pytest.raises(FormatError) as exc:
        read_solver(str(tmp_path / "solver.prototxt"))
    assert str(exc.value).startswith("%s:%d: %s is " % (tmp_path / "solver.prototxt", line, field))
    assert "must be finite numbers" in str(exc.value)


@pytest.mark.parametrize("layer, field", [
    ('layer { name: "norm" type: "LRN" bottom: "data" top: "n"\n  lrn_param { beta: nan } }',
     "lrn_param.beta"),
    ('layer { name: "conv" type: "Convolution" bottom: "data" top: "c"\n  convolution_param '
     '{ num_output: 1 kernel_size: 1 weight_filler { type: "gaussian" std: inf } } }',
     "convolution_param.weight_filler.std"),
    ('layer { name: "scale" type: "Power" bottom: "data" top: "p"\n  power_param { scale: -inf } }',
     "power_param.scale"),
    ('layer { name: "relu" type: "ReLU" bottom: "data" top: "r"\n  relu_param '
     '{ negative_slope: 1e40 } }', "relu_param.negative_slope"),
])
def test_non_finite_layer_parameters_are_refused_naming_the_layer(tmp_path, layer, field):
    (tmp_path / "net.prototxt").write_text(INPUT_NET % layer)
    name = layer.split('"')[1]
    for read in (lambda: read_net(str(tmp_path / "net.prototxt")),
                 lambda: protonet.Net(str(tmp_path / "net.prototxt"), phase="TEST")):
        with pytest.raises(FormatError) as exc:
            read()
        assert str(exc.value).startswith("%s:4: %s of layer '%s' (type "
                                          % (tmp_path / "net.prototxt", field, name))
    with pytest.raises(FormatError, match=r"^<string>:4: %s of layer '%s'" % (field, name)):
        parse_net(INPUT_NET % layer)


def test_finite_extremes_still_load(tmp_path):
    (tmp_path / "net.prototxt").write_text(INPUT_NET % (
        'layer { name: "p" type: "Power" bottom: "data" top: "p"\n  power_param '
        '{ scale: 3.4e38 shift: -1e-45 } }'))
    net = read_net(str(tmp_path / "net.prototxt"))
    assert net.layer[1].power_param.scale == pytest.approx(3.4e38, rel=1e-6)


def test_a_digits_dataset_whose_features_and_labels_differ_in_count_is_an_error(tmp_path):
    for split, (nf, nl) in (("train_db", (6, 5)), ("val_db", (2, 2))):
        _small_lmdb(tmp_path / "ds" / split / "features", n=nf)
        _small_lmdb(tmp_path / "ds" / split / "labels", n=nl)
    param = parse_net("""name: "d"
layer { name: "data" type: "Data" top: "data" include { phase: TRAIN } data_param { batch_size: 1 } }
layer { name: "label" type: "Data" top: "label" include { phase: TRAIN } data_param { batch_size: 1 } }
layer { name: "data" type: "Data" top: "data" include { phase: TEST } data_param { batch_size: 1 } }
layer { name: "label" type: "Data" top: "label" include { phase: TEST } data_param { batch_size: 1 } }
""")
    features, labels = tmp_path / "ds" / "train_db" / "features", tmp_path / "ds" / "train_db" / "labels"
    with pytest.raises(DatasetError) as exc:
        bind_dataset(param, str(tmp_path / "ds"))
    assert "%s holds 6 records but %s holds 5" % (features, labels) in str(exc.value)
    # the train_val.prototxt a quick start wrote, run again with --solver: the net checks too
    bound = param.__class__()
    bound.CopyFrom(param)
    for lp in bound.layer:
        lp.data_param.source = str(tmp_path / "ds" / "train_db" / ("features" if lp.top[0] == "data"
                                                                   else "labels"))
        lp.data_param.backend = lp.data_param.LMDB
    with pytest.raises(NetError, match="holds 6 records but .* holds 5"):
        protonet.Net(bound, phase="TRAIN")
    # with equal counts both bind and build
    _small_lmdb(labels, n=6)
    bound = bind_dataset(param, str(tmp_path / "ds"))
    assert protonet.Net(bound, phase="TRAIN").blobs["data"].shape == (1, 1, 8, 8)


IP_NET = INPUT_NET % ('layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"\n'
                      '  inner_product_param { num_output: 2 } }')


def _ip_net(tmp_path):
    (tmp_path / "net.prototxt").write_text(IP_NET)
    return protonet.Net(str(tmp_path / "net.prototxt"), phase="TEST")


def test_an_empty_weights_file_is_refused_by_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    net = _ip_net(tmp_path)
    (tmp_path / "empty.caffemodel").write_bytes(b"")
    with pytest.raises(FormatError, match=r"^empty\.caffemodel: empty file \(0 bytes\), not a "
                                          r"binary NetParameter"):
        net.copy_from("empty.caffemodel")
    assert main(["test", "--model", "net.prototxt", "--weights", "empty.caffemodel",
                 "--iterations", "1"]) == 1
    assert "empty.caffemodel: empty file (0 bytes)" in capsys.readouterr().err


def test_weights_that_match_no_layer_warn_in_the_library_and_stop_the_command(
        tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.chdir(tmp_path)
    net = _ip_net(tmp_path)
    (tmp_path / "other.prototxt").write_text(IP_NET.replace('name: "ip"', 'name: "fc"'))
    protonet.Net("other.prototxt", phase="TEST").save("other.caffemodel")
    before = net.params["ip"][0].data.copy()
    with caplog.at_level("WARNING", logger="protonet"):
        assert net.copy_from("other.caffemodel") == 0
    assert ("other.caffemodel holds weights for none of the layers of net b: it has fc; the "
            "net's layers with parameters are ip") in caplog.text
    np.testing.assert_array_equal(net.params["ip"][0].data, before)
    assert main(["test", "--model", "net.prototxt", "--weights", "other.caffemodel",
                 "--iterations", "1"]) == 1
    err = capsys.readouterr().err
    assert "other.caffemodel holds weights for none of the layers of net b" in err
    assert "Batch 0" not in err                          # it stopped before running
    # a file that matches is copied and counted
    net.save("own.caffemodel")
    assert net.copy_from("own.caffemodel") == 1
    # the same for HDF5 weights
    from protonet.hdf5_weights import save_hdf5_weights
    save_hdf5_weights(protonet.Net("other.prototxt", phase="TEST"), "other.caffemodel.h5")
    with pytest.raises(NetError, match=r"other\.caffemodel\.h5 holds weights for none of the "
                                       r"layers of net b: it has fc"):
        net.copy_from("other.caffemodel.h5", require_match=True)
    save_hdf5_weights(net, "own.caffemodel.h5")
    assert net.copy_from("own.caffemodel.h5", require_match=True) == 1


def test_a_blob_whose_values_do_not_fit_its_shape_names_file_and_layer(tmp_path):
    from protonet.io import read_net_binary, write_binary
    net = _ip_net(tmp_path)
    net.save(str(tmp_path / "w.caffemodel"))
    param = read_net_binary(str(tmp_path / "w.caffemodel"))
    ip = [lp for lp in param.layer if lp.name == "ip"][0]
    del ip.blobs[0].data[-5:]
    write_binary(str(tmp_path / "bad.caffemodel"), param)
    with pytest.raises(NetError) as exc:
        net.copy_from(str(tmp_path / "bad.caffemodel"))
    assert str(exc.value) == ("%s: param 0 of layer 'ip' (type InnerProduct): BlobProto holds 379 "
                              "values but its shape (2, 192) needs 384" % (tmp_path / "bad.caffemodel"))


def test_forward_and_backward_name_the_blob_and_its_shape(tmp_path):
    net = _ip_net(tmp_path)
    for value, got in ((np.full((1, 3, 8, 8), "x"), "<U1 values of shape 1x3x8x8"),
                       (None, "object values of shape \\(\\) \\(a scalar\\)"),   # NumPy: NaN
                       (np.ones((1, 3, 8, 8), complex), "complex128 values")):
        with pytest.raises(NetError, match=r"^forward: input blob 'data' of net b takes real "
                                           r"numbers \(shape 1x3x8x8\); got " + got):
            net.forward(data=value)
        assert net.blobs["data"].shape == (1, 3, 8, 8)
    with pytest.raises(NetError, match=r"^forward: input blob 'data' of net b takes an array of "
                                       r"shape 1x3x8x8; got a list that is not one"):
        net.forward(data=[[1, 2], [3]])
    net.forward(data=np.ones((1, 3, 8, 8), np.float32))
    with pytest.raises(NetError, match=r"^backward: the diff given for blob 'ip' of net b must "
                                       r"fit its shape 1x2; got shape 5x7"):
        net.backward(ip=np.ones((5, 7)))
    with pytest.raises(NetError, match=r"^backward: the diff given for blob 'ip' of net b takes "
                                       r"real numbers \(shape 1x2\); got <U1"):
        net.backward(ip=np.full((1, 2), "x"))


def test_an_empty_lmdb_given_to_infer_is_named(tmp_path, capsys):
    from protonet.data.db import LMDBWriter
    _ip_net(tmp_path).save(str(tmp_path / "w.caffemodel"))
    with LMDBWriter(str(tmp_path / "empty_db")):
        pass
    assert main(["infer", str(tmp_path / "empty_db"), "--model", str(tmp_path / "net.prototxt"),
                 "--weights", str(tmp_path / "w.caffemodel"), "--out", str(tmp_path / "o")]) == 2
    assert "input %s: the LMDB is empty (0 records)" % (tmp_path / "empty_db") \
        in capsys.readouterr().err


@pytest.mark.parametrize("content, words", [
    (b"", "not a DICOM file: the file is empty (0 bytes)"),
    (b"patient notes, not an image\n", "not a DICOM image: it has no 'DICM' marker at byte 128"),
    (b"\0" * 128 + b"DICM" + b"\2\0\1\0UL\4\0\0\0\0\0", "not a DICOM image: it has the DICOM "
                                                         "marker but no image data"),
])
def test_a_dcm_that_is_not_dicom_says_so_in_plain_words(tmp_path, content, words):
    from protonet.data.sunnybrook import DicomError, read_dicom
    from protonet.infer import InferError, read_file
    (tmp_path / "x.dcm").write_bytes(content)
    for read, error in ((read_dicom, DicomError), (read_file, InferError)):
        with pytest.raises(error) as exc:
            read(str(tmp_path / "x.dcm"))
        assert str(exc.value).startswith("%s: %s" % (tmp_path / "x.dcm", words))


def test_python_warnings_are_one_log_line_each(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text("""name: "w"
layer { name: "data" type: "DummyData" top: "data"
  dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: "constant" value: 100 } } }
layer { name: "e" type: "Exp" bottom: "data" top: "e" }
""")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["time", "--model", "net.prototxt", "--iterations", "1"]) == 0
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if "RuntimeWarning" in l]
    assert lines and all(l.startswith("W") and "] RuntimeWarning: overflow encountered in exp"
                         in l for l in lines)
    assert not any("warnings.warn" in l or l.lstrip().startswith("return") for l in err.splitlines())
    assert warnings.showwarning.__module__ == "warnings"          # put back afterwards


def test_a_pooling_stride_far_above_the_input_builds_at_once(tmp_path):
    # found by fuzzing: stride 2147483648 made one (empty) column phase per stride step
    (tmp_path / "net.prototxt").write_text(INPUT_NET % (
        'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"\n'
        '  pooling_param { pool: MAX kernel_size: 2 stride: 2147483648 } }'))
    net = protonet.Net(str(tmp_path / "net.prototxt"), phase="TRAIN")
    x = np.arange(192, dtype=np.float32).reshape(1, 3, 8, 8)
    out = net.forward(data=x)["pool"]
    # Caffe's CEIL rounding gives 2x2 outputs; only the first window lies on the input
    assert out.shape == (1, 3, 2, 2)
    np.testing.assert_array_equal(out[0, :, 0, 0], x[0, :, :2, :2].reshape(3, -1).max(axis=1))
    assert (out[0, :, 1, :] == -np.finfo(np.float32).max).all()


def test_weights_holding_nan_are_loaded_with_a_warning_naming_file_and_layer(tmp_path, caplog):
    net = _ip_net(tmp_path)
    net.params["ip"][0].data[0, :3] = np.nan
    net.save(str(tmp_path / "nan.caffemodel"))
    other = _ip_net(tmp_path)
    with caplog.at_level("WARNING", logger="protonet"):
        other.copy_from(str(tmp_path / "nan.caffemodel"))
    assert ("%s: param 0 of layer 'ip' holds 3 NaN or infinite value(s) of 384"
            % (tmp_path / "nan.caffemodel")) in caplog.text
    assert np.isnan(other.params["ip"][0].data).sum() == 3          # loaded as Caffe does


# ---------------------------------------------------------------- the solver's share
DIVERGING_NET = """name: "div"
layer { name: "data" type: "DummyData" top: "x" top: "y"
  dummy_data_param { shape { dim: 2 dim: 1 } shape { dim: 2 dim: 1 }
    data_filler { type: "constant" value: %s } data_filler { type: "constant" value: 1000 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
  inner_product_param { num_output: 1 weight_filler { type: "constant" value: 1 } } }
layer { name: "%s" type: "%s" bottom: "ip" top: "e" }
layer { name: "loss" type: "EuclideanLoss" bottom: "e" bottom: "y" top: "loss" }
"""
SOLVER = ('net: "net.prototxt"\nbase_lr: 3\nlr_policy: "fixed"\nmax_iter: 20\nsnapshot: 1\n'
          'snapshot_prefix: "snaps/s"\nsolver_mode: CPU\n')


@pytest.mark.parametrize("x, layer, kind, bad_iter, value", [
    (1, "exp", "Exp", 1, "inf"),           # the step overshoots: exp overflows at the next pass
    (-1, "log", "Log", 0, "nan"),          # log of a negative input: NaN from the first pass
])
def test_a_non_finite_loss_stops_training_naming_iteration_and_layer(
        tmp_path, monkeypatch, capsys, x, layer, kind, bad_iter, value):
    import warnings
    from protonet.solver import DivergedError
    monkeypatch.chdir(tmp_path)
    (tmp_path / "snaps").mkdir()
    (tmp_path / "net.prototxt").write_text(DIVERGING_NET % (x, layer, kind))
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    solver = get_solver("solver.prototxt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(DivergedError) as exc:
            solver.solve()
    assert str(exc.value).startswith(
        "solver.prototxt: iteration %d: the loss is %s; the first layer whose output is not "
        "finite is '%s' (type %s, top 'e'). Training stopped before this update, without a "
        "snapshot of it" % (bad_iter, value, layer, kind))
    assert solver.iter == bad_iter
    # the snapshots before it stay, none was written for (or after) the bad iteration
    written = sorted(p.name for p in (tmp_path / "snaps").iterdir())
    assert written == ["s_iter_%d.%s" % (i, ext) for i in range(1, bad_iter + 1)
                       for ext in ("caffemodel", "solverstate")]
    assert np.isfinite(solver.net.params["ip"][0].data).all()        # no NaN update was made
    # the command line: one line, exit status 1
    for p in (tmp_path / "snaps").iterdir():
        p.unlink()
    assert main(["train", "--solver", "solver.prototxt", "--no-curve"]) == 1
    err = capsys.readouterr().err
    assert "iteration %d: the loss is %s; the first layer whose output is not finite is '%s'" \
        % (bad_iter, value, layer) in err and "Traceback" not in err
    snapshots = [p for p in (tmp_path / "snaps").iterdir() if p.suffix in (".caffemodel", ".solverstate")]
    assert len(snapshots) == 2 * bad_iter              # (beside them: the TensorBoard events)


def test_a_solver_without_a_net_says_the_net_is_missing(tmp_path):
    (tmp_path / "solver.prototxt").write_text("base_lr: 0.1\nmax_iter: 3\n")
    with pytest.raises(SolverError, match=r"solver\.prototxt: the net is missing: SolverParameter "
                                          r"must specify a train net"):
        get_solver(str(tmp_path / "solver.prototxt"))


def test_a_snapshot_folder_that_cannot_be_written_is_found_by_writing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(DIVERGING_NET % (1, "exp", "Exp"))
    # os.access says /proc/self is writable for root; writing a file there fails
    (tmp_path / "solver.prototxt").write_text(SOLVER.replace("snaps/s", "/proc/self/s"))
    with pytest.raises(SolverError, match=r"cannot write to snapshot_prefix '/proc/self/s' \(.+\)"):
        get_solver("solver.prototxt")
    (tmp_path / "snaps").mkdir()
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    get_solver("solver.prototxt")
    assert list((tmp_path / "snaps").iterdir()) == []              # the probe is gone


def test_temporary_snapshot_files_of_a_killed_run_are_removed_by_the_next(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys
    monkeypatch.chdir(tmp_path)
    (tmp_path / "snaps").mkdir()
    (tmp_path / "net.prototxt").write_text(DIVERGING_NET % (1, "exp", "Exp"))
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    alive = str(os.getppid())              # a live writer (another run) keeps its files
    names = {".s_iter_4.caffemodel.%s.k3j_9xqz" % dead: False,
             ".s_iter_4.solverstate.%s.ab12cd34" % dead: False,
             ".s_iter_4.caffemodel.h5.%s.tmp" % dead: False,
             ".s_curve.png.%s.zz00zz00" % dead: False,
             ".s_iter_5.caffemodel.%s.k3j_9xqz" % alive: True,
             ".secret.%s.tmp" % dead: True,                          # not a snapshot's
             ".s_notes.txt.%s.abcdefgh" % dead: True,
             "s_iter_3.caffemodel": True}
    for name in names:
        (tmp_path / "snaps" / name).write_bytes(b"x")
    get_solver("solver.prototxt")
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == sorted(
        name for name, kept in names.items() if kept)


def test_a_solverstate_blob_that_does_not_fit_names_file_and_layer(tmp_path, monkeypatch):
    from protonet.io import read_binary, write_binary
    from protonet.proto import caffe_pb2
    monkeypatch.chdir(tmp_path)
    (tmp_path / "snaps").mkdir()
    (tmp_path / "net.prototxt").write_text(DIVERGING_NET % (1, "exp", "Exp"))
    (tmp_path / "solver.prototxt").write_text(SOLVER.replace("base_lr: 3", "base_lr: 1e-9"))
    solver = get_solver("solver.prototxt")
    solver.step(1)
    model, state = solver.snapshot()
    param = read_binary(state, caffe_pb2.SolverState())
    param.history[1].shape.dim[:] = [4]                # the bias: 1 value, shape says 4
    write_binary("bad.solverstate", param)
    with pytest.raises(SolverError, match=r"^bad\.solverstate: history blob 1 \(param 1 of layer "
                                          r"'ip'\): BlobProto holds 1 values but its shape"):
        get_solver("solver.prototxt").restore("bad.solverstate")


def test_a_netparameter_message_with_nan_is_refused_too(tmp_path):
    param = parse_net(IP_NET)
    param.layer[1].inner_product_param.weight_filler.std = float("nan")
    with pytest.raises(FormatError, match=r"^<NetParameter b>: inner_product_param\.weight_filler"
                                          r"\.std of layer 'ip' \(type InnerProduct\) is NaN"):
        protonet.Net(param, phase="TEST")


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=float("nan")), "epochs must be a finite number above 0, not nan"),
    (dict(epochs=0), "epochs must be a finite number above 0, not 0"),
    (dict(base_lr=float("inf")), "base_lr must be a finite number above 0, not inf"),
    (dict(val_epochs=-1.0), "val_epochs must be a finite number 0 or more, not -1.0"),
    (dict(batch_size=0), "batch_size must be at least 1, not 0"),
])
def test_digits_solver_numbers_are_checked_in_the_library_too(tmp_path, kwargs, message):
    from protonet.digits import build_solver
    args = dict(train_val_path="t.prototxt", dataset_dir=str(tmp_path), epochs=1, base_lr=0.01)
    args.update(kwargs)
    with pytest.raises(DatasetError, match="^" + message):
        build_solver(**args)


def test_a_solverstate_whose_weights_are_gone_names_both(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "snaps").mkdir()
    (tmp_path / "net.prototxt").write_text(DIVERGING_NET % (1, "exp", "Exp"))
    (tmp_path / "solver.prototxt").write_text(SOLVER.replace("base_lr: 3", "base_lr: 1e-9"))
    solver = get_solver("solver.prototxt")
    solver.step(1)
    model, state = solver.snapshot()
    (tmp_path / model).unlink()
    with pytest.raises(SolverError, match=r"^snaps/s_iter_1\.solverstate: its weights, learned_net "
                                          r"'snaps/s_iter_1\.caffemodel', are neither in the "
                                          r"working directory"):
        get_solver("solver.prototxt").restore(state)
    (tmp_path / "cut.solverstate").write_bytes((tmp_path / state).read_bytes()[:-3])
    with pytest.raises(FormatError, match=r"^cut\.solverstate: not a binary SolverState, or one "
                                          r"that is cut short or damaged"):
        get_solver("solver.prototxt").restore("cut.solverstate")


def test_files_given_in_each_others_place_are_named_for_what_they_are(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "snaps").mkdir()
    (tmp_path / "net.prototxt").write_text(DIVERGING_NET % (1, "exp", "Exp"))
    (tmp_path / "solver.prototxt").write_text(SOLVER.replace("base_lr: 3", "base_lr: 1e-9"))
    solver = get_solver("solver.prototxt")
    solver.step(2)
    model, state = solver.snapshot()
    fresh = get_solver("solver.prototxt")
    with pytest.raises(SolverError, match=r"^snaps/s_iter_2\.caffemodel holds a net's weights \(a "
                                          r"\.caffemodel\), not a solver state"):
        fresh.restore(model)
    assert fresh.iter == 0                       # a refused state changes nothing
    for path, read in ((model, lambda p: protonet.Net(p, phase="TEST")),
                       (state, get_solver)):
        with pytest.raises(FormatError, match=r"^%s: a binary file, not a text prototxt"
                                              % path.replace(".", r"\.")):
            read(path)
    fresh.restore(state)
    assert fresh.iter == 2
