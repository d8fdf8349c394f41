"""The schema in proto/caffe.proto, its generated module, and Caffe's files.

The round-trip tests read every prototxt, caffemodel, solverstate and
binaryproto that real Caffe wrote (tests/caffe_reference): text parsing rejects an
unknown field name, and binary files must leave nothing in unknown fields and
re-serialize to the same bytes, so a missing or misnumbered field fails here.
"""

import ast
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, text_format
from google.protobuf.message import Message

from protonet.proto import caffe_pb2

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTO_PATH = REPO_ROOT / "proto" / "caffe.proto"
SHARED = REPO_ROOT / "tests" / "caffe_reference"
PARITY = SHARED / "parity"
DIGITS = SHARED / "models" / "digits"



def _files(root, pattern):
    return sorted(root.rglob(pattern)) if root.is_dir() else []


def _ids(paths):
    return [str(path.relative_to(SHARED)) for path in paths]


# --- the generated module matches the schema ---------------------------------

def _embedded_descriptor():
    """The FileDescriptorProto bytes literally embedded in caffe_pb2.py.

    Read from the source rather than DESCRIPTOR.serialized_pb, which the upb
    runtime rebuilds (and formats float defaults differently, e.g.
    "0.999000013").
    """
    tree = ast.parse(Path(caffe_pb2.__file__).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "AddSerializedFile"):
            return node.args[0].value
    raise AssertionError("no AddSerializedFile(...) call in caffe_pb2.py")


def test_generated_module_matches_schema():
    from protonet.proto.generate import descriptor_bytes

    compiled = descriptor_pb2.FileDescriptorProto.FromString(descriptor_bytes(PROTO_PATH))
    embedded = descriptor_pb2.FileDescriptorProto.FromString(_embedded_descriptor())
    assert compiled == embedded, (
        "protonet/proto/caffe_pb2.py is out of date with proto/caffe.proto; "
        "run `python -m protonet.proto.generate`"
    )


def test_module_name_and_package():
    assert caffe_pb2.DESCRIPTOR.package == "caffe"
    assert caffe_pb2.NetParameter.DESCRIPTOR.full_name == "caffe.NetParameter"
    assert caffe_pb2.NetParameter.__module__ == "protonet.proto.caffe_pb2"


# --- completeness --------------------------------------------------------------

MESSAGES = """
BlobShape BlobProto BlobProtoVector Datum FillerParameter NetParameter
SolverParameter SolverState NetState NetStateRule ParamSpec LayerParameter
TransformationParameter LossParameter AccuracyParameter ArgMaxParameter
ClipParameter ConcatParameter BatchNormParameter BiasParameter
ContrastiveLossParameter ConvolutionParameter CropParameter DataParameter
DropoutParameter DummyDataParameter EltwiseParameter ELUParameter
EmbedParameter ExpParameter FlattenParameter HDF5DataParameter
HDF5OutputParameter HingeLossParameter ImageDataParameter
InfogainLossParameter InnerProductParameter InputParameter LogParameter
LRNParameter MemoryDataParameter MVNParameter ParameterParameter
PoolingParameter PowerParameter PythonParameter RecurrentParameter
ReductionParameter ReLUParameter ReshapeParameter ScaleParameter
SigmoidParameter SliceParameter SoftmaxParameter SwishParameter
TanHParameter TileParameter ThresholdParameter WindowDataParameter
SPPParameter V1LayerParameter V0LayerParameter PReLUParameter
""".split()


def test_every_caffe_message_is_defined():
    assert sorted(caffe_pb2.DESCRIPTOR.message_types_by_name) == sorted(MESSAGES)
    assert list(caffe_pb2.DESCRIPTOR.enum_types_by_name) == ["Phase"]
    assert (caffe_pb2.TRAIN, caffe_pb2.TEST) == (0, 1)


def test_layer_parameter_numbers():
    numbers = {f.name: f.number for f in caffe_pb2.LayerParameter.DESCRIPTOR.fields}
    assert numbers["transform_param"] == 100
    assert numbers["python_param"] == 130
    assert numbers["recurrent_param"] == 146
    assert numbers["swish_param"] == 147
    assert numbers["clip_param"] == 148
    # 102..148 are all the type-specific params, with no gaps.
    assert sorted(n for n in numbers.values() if n > 101) == list(range(102, 149))


def test_v1_layer_type_values():
    # Caffe's V1 LayerType enum uses exactly the numbers 0..39.
    values = caffe_pb2.V1LayerParameter.LayerType.values()
    assert sorted(values) == list(range(40))
    assert caffe_pb2.V1LayerParameter.DECONVOLUTION == 39
    assert caffe_pb2.V1LayerParameter.ABSVAL == 35


# --- defaults that layer and solver code relies on -----------------------------

def test_layer_defaults():
    conv = caffe_pb2.ConvolutionParameter()
    assert conv.bias_term is True and conv.group == 1 and conv.axis == 1
    assert conv.engine == caffe_pb2.ConvolutionParameter.DEFAULT

    pool = caffe_pb2.PoolingParameter()
    assert pool.pool == caffe_pb2.PoolingParameter.MAX
    assert pool.stride == 1 and pool.pad == 0
    assert pool.round_mode == caffe_pb2.PoolingParameter.CEIL

    lrn = caffe_pb2.LRNParameter()
    assert (lrn.local_size, lrn.alpha, lrn.beta, lrn.k) == (5, 1.0, pytest.approx(0.75), 1.0)
    assert lrn.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS

    assert caffe_pb2.DropoutParameter().dropout_ratio == 0.5
    assert caffe_pb2.LossParameter().normalization == caffe_pb2.LossParameter.VALID
    assert not caffe_pb2.LossParameter().HasField("normalize")

    bn = caffe_pb2.BatchNormParameter()
    assert bn.moving_average_fraction == pytest.approx(0.999)
    assert bn.eps == pytest.approx(1e-5)
    assert not bn.HasField("use_global_stats")

    assert caffe_pb2.ReductionParameter().coeff == 1.0
    assert caffe_pb2.ReductionParameter().operation == caffe_pb2.ReductionParameter.SUM
    assert caffe_pb2.EltwiseParameter().stable_prod_grad is True
    assert caffe_pb2.EltwiseParameter().operation == caffe_pb2.EltwiseParameter.SUM
    assert caffe_pb2.ThresholdParameter().threshold == 0.0
    assert caffe_pb2.ELUParameter().alpha == 1.0
    assert caffe_pb2.SwishParameter().beta == 1.0
    assert caffe_pb2.MVNParameter().eps == pytest.approx(1e-9)
    assert caffe_pb2.MVNParameter().normalize_variance is True
    assert caffe_pb2.InnerProductParameter().bias_term is True
    assert caffe_pb2.ScaleParameter().bias_term is False
    assert caffe_pb2.ExpParameter().base == -1.0 and caffe_pb2.LogParameter().base == -1.0
    assert caffe_pb2.FlattenParameter().end_axis == -1
    assert caffe_pb2.ReshapeParameter().num_axes == -1
    assert caffe_pb2.CropParameter().axis == 2
    assert caffe_pb2.FillerParameter().type == "constant"
    assert caffe_pb2.FillerParameter().std == 1.0 and caffe_pb2.FillerParameter().sparse == -1
    assert caffe_pb2.ParamSpec().lr_mult == 1.0 and caffe_pb2.ParamSpec().decay_mult == 1.0
    assert caffe_pb2.NetState().phase == caffe_pb2.TEST
    assert caffe_pb2.DataParameter().backend == caffe_pb2.DataParameter.LEVELDB
    assert caffe_pb2.HingeLossParameter().norm == caffe_pb2.HingeLossParameter.L1


def test_clip_bounds_are_required():
    clip = caffe_pb2.ClipParameter()
    assert not clip.IsInitialized()
    assert sorted(clip.FindInitializationErrors()) == ["max", "min"]
    clip.min, clip.max = -1.0, 1.0
    assert clip.IsInitialized()


def test_solver_defaults():
    solver = caffe_pb2.SolverParameter()
    assert solver.type == "SGD"
    assert solver.momentum2 == pytest.approx(0.999)
    assert solver.delta == pytest.approx(1e-8)
    assert solver.rms_decay == pytest.approx(0.99)
    assert solver.snapshot_format == caffe_pb2.SolverParameter.BINARYPROTO
    assert solver.solver_mode == caffe_pb2.SolverParameter.GPU
    assert solver.solver_type == caffe_pb2.SolverParameter.SGD
    assert solver.regularization_type == "L2"
    assert solver.clip_gradients == -1.0
    assert solver.random_seed == -1
    assert (solver.average_loss, solver.iter_size) == (1, 1)
    assert solver.test_initialization is True and solver.snapshot_after_train is True
    # Caffe gives lr_policy no default: an unset policy is an error, not "fixed".
    assert solver.lr_policy == "" and not solver.HasField("lr_policy")
    assert not caffe_pb2.SolverParameter.DESCRIPTOR.fields_by_name["lr_policy"].has_default_value


# --- Caffe's own files parse completely ----------------------------------------

PROTOTXTS = _files(PARITY, "*.prototxt") + _files(DIGITS, "*.prototxt")
CAFFEMODELS = _files(PARITY, "*.caffemodel")
SOLVERSTATES = _files(PARITY, "*.solverstate")
BINARYPROTOS = _files(PARITY, "*.binaryproto")


def _unknown_field_paths(message, path="root"):
    """Paths of every (sub)message that holds unknown fields."""
    try:
        from google.protobuf.unknown_fields import UnknownFieldSet
        count = len(UnknownFieldSet(message))
    except ImportError:  # protobuf < 4.24
        count = len(message.UnknownFields())
    found = [path] if count else []
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        items = [value] if isinstance(value, Message) else value
        for index, item in enumerate(items):
            found += _unknown_field_paths(item, f"{path}.{field.name}[{index}]")
    return found


def test_unknown_field_check_sees_nested_unknowns():
    layer = caffe_pb2.LayerParameter(name="conv")
    layer.blobs.add().data.append(1.0)
    # Field 999 with varint 1, appended inside blobs[0] and at the top level.
    blob = layer.blobs[0].SerializeToString() + b"\xb8\x3e\x01"
    data = b"\x0a\x04conv" + b"\x3a" + bytes([len(blob)]) + blob + b"\xb8\x3e\x01"
    parsed = caffe_pb2.LayerParameter.FromString(data)
    assert _unknown_field_paths(parsed) == ["root", "root.blobs[0]"]


def _check_binary(path, message_class):
    data = path.read_bytes()
    message = message_class.FromString(data)
    assert _unknown_field_paths(message) == [], f"{path}: fields unknown to the schema"
    # Caffe and protobuf both write fields in number order, so a complete
    # schema reproduces the file byte for byte.
    assert message.SerializeToString() == data, f"{path}: re-serialized bytes differ"
    return message


def test_fixture_sets_are_present():
    assert PARITY.is_dir(), f"no Caffe reference fixtures at {PARITY} (tests/caffe_reference/parity)"
    assert len(PROTOTXTS) > 100 and CAFFEMODELS and SOLVERSTATES and BINARYPROTOS
    assert any(path.name.startswith("solver") for path in PROTOTXTS)


@pytest.mark.parametrize("path", PROTOTXTS, ids=_ids(PROTOTXTS))
def test_prototxt_parses(path):
    kind = caffe_pb2.SolverParameter if path.name.startswith("solver") else caffe_pb2.NetParameter
    text = path.read_text(encoding="utf-8")
    message = text_format.Parse(text, kind())  # raises on any unknown field name
    assert message.ListFields(), f"{path} parsed to an empty message"
    again = text_format.Parse(text_format.MessageToString(message), kind())
    assert again == message


@pytest.mark.parametrize("path", CAFFEMODELS, ids=_ids(CAFFEMODELS))
def test_caffemodel_parses(path):
    net = _check_binary(path, caffe_pb2.NetParameter)
    assert net.layer or net.layers


@pytest.mark.parametrize("path", SOLVERSTATES, ids=_ids(SOLVERSTATES))
def test_solverstate_parses(path):
    state = _check_binary(path, caffe_pb2.SolverState)
    assert state.iter > 0 and state.history


@pytest.mark.parametrize("path", BINARYPROTOS, ids=_ids(BINARYPROTOS))
def test_binaryproto_parses(path):
    blob = _check_binary(path, caffe_pb2.BlobProto)
    assert blob.data or blob.double_data
