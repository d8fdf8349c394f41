"""Upgrades of old Caffe formats to the current one, as Caffe 1.0 applies them.

Every function works on a ``caffe_pb2`` message in place and returns True when
it changed something. :func:`upgrade_net` runs the net upgrades in Caffe's
order (``UpgradeNetAsNeeded`` in ``src/caffe/util/upgrade_proto.cpp``):

1. V0 -> V1: ``layers { layer { type: "conv" ... } }`` (one flat
   V0LayerParameter per layer, lower-case type names) becomes V1 layers with
   enum types and per-type ``*_param`` messages; "padding" layers are folded
   into the conv/pool layer they feed.
2. data transformation: ``scale``/``mean_file``/``crop_size``/``mirror`` of
   V1 DATA, IMAGE_DATA and WINDOW_DATA layers move into ``transform_param``.
3. V1 -> V2: ``layers`` (enum ``type``) becomes ``layer`` (string ``type``);
   ``blobs_lr``/``weight_decay``/``param``/``blob_share_mode`` become
   ``param { lr_mult decay_mult name share_mode }``.
4. net input: ``input`` + ``input_dim`` (4 per input) or ``input_shape``
   becomes one "Input" layer named "input", placed first.
5. BatchNorm: a BatchNorm layer that declares exactly three ``param`` specs
   (the old way of freezing its statistics) gets ``lr_mult: 0`` and
   ``decay_mult: 0`` in each of them; names are kept so sharing still works.

Problems Caffe treats as fatal raise :class:`UpgradeError`, naming the source
file and the layer. Problems Caffe only logs (a V0 setting that means nothing
for the layer's type) are reported as :class:`UpgradeWarning` and the setting
is dropped, as Caffe drops it.

Also here: :func:`upgrade_solver` (``solver_type`` enum -> ``type`` string)
and :func:`upgrade_blob_shape` (legacy num/channels/height/width -> shape).
"""
import warnings

from google.protobuf.message import Message

from .proto import caffe_pb2

__all__ = [
    "UpgradeError", "UpgradeWarning", "upgrade_net", "upgrade_v0_net",
    "upgrade_data_transformation", "upgrade_v1_net", "upgrade_net_input",
    "upgrade_batch_norm", "v1_type_name", "upgrade_solver",
    "upgrade_blob_shape",
]

V1 = caffe_pb2.V1LayerParameter


class UpgradeError(ValueError):
    """An old-format file that cannot be upgraded; the message names file and layer."""


class UpgradeWarning(UserWarning):
    """A setting Caffe's upgrade drops (it logs the problem and carries on)."""


def _layer_label(index, name):
    return "layer %d %r" % (index, name) if name else "layer %d" % index


def _fail(source, index, name, message):
    raise UpgradeError("%s: %s: %s" % (source, _layer_label(index, name), message))


def _warn(source, index, name, message):
    warnings.warn("%s: %s: %s" % (source, _layer_label(index, name), message),
                  UpgradeWarning, stacklevel=4)


# -- entry point ---------------------------------------------------------------

def upgrade_net(net_param, source="<net>"):
    """Bring a NetParameter of any Caffe era to the current format, in place.

    ``source`` (the file name) only goes into error messages. Returns True when
    anything was upgraded.
    """
    if len(net_param.layer) and len(net_param.layers):
        # Caffe would silently drop the `layer` entries here; a file mixing both
        # formats is almost certainly a mistake, so we refuse it.
        raise UpgradeError(
            "%s: the net has both 'layer' (current) and 'layers' (V1/V0) entries; "
            "write it in one format (first 'layer' is %r, first 'layers' is %r)"
            % (source, net_param.layer[0].name,
               net_param.layers[0].name or net_param.layers[0].layer.name))
    changed = upgrade_v0_net(net_param, source)
    changed |= upgrade_data_transformation(net_param, source)
    changed |= upgrade_v1_net(net_param, source)
    changed |= upgrade_net_input(net_param, source)
    changed |= upgrade_batch_norm(net_param, source)
    return changed


# -- V0 -> V1 ------------------------------------------------------------------

# V0's lower-case type names; anything else (other than "padding", which is
# folded away first) is fatal in Caffe.
_V0_TYPES = {
    "accuracy": V1.ACCURACY,
    "bnll": V1.BNLL,
    "concat": V1.CONCAT,
    "conv": V1.CONVOLUTION,
    "data": V1.DATA,
    "dropout": V1.DROPOUT,
    "euclidean_loss": V1.EUCLIDEAN_LOSS,
    "flatten": V1.FLATTEN,
    "hdf5_data": V1.HDF5_DATA,
    "hdf5_output": V1.HDF5_OUTPUT,
    "im2col": V1.IM2COL,
    "images": V1.IMAGE_DATA,
    "infogain_loss": V1.INFOGAIN_LOSS,
    "innerproduct": V1.INNER_PRODUCT,
    "lrn": V1.LRN,
    "multinomial_logistic_loss": V1.MULTINOMIAL_LOGISTIC_LOSS,
    "pool": V1.POOLING,
    "relu": V1.RELU,
    "sigmoid": V1.SIGMOID,
    "softmax": V1.SOFTMAX,
    "softmax_loss": V1.SOFTMAX_LOSS,
    "split": V1.SPLIT,
    "tanh": V1.TANH,
    "window_data": V1.WINDOW_DATA,
}

# Where each flat V0 setting goes: {V0 type: (V1 sub-message, field)}. A
# setting given to a type not listed is dropped with a warning. "*" means any
# type: the transformation settings go to transform_param whatever the layer.
_V0_FIELDS = {
    "num_output": {"conv": ("convolution_param", "num_output"),
                   "innerproduct": ("inner_product_param", "num_output")},
    "biasterm": {"conv": ("convolution_param", "bias_term"),
                 "innerproduct": ("inner_product_param", "bias_term")},
    "weight_filler": {"conv": ("convolution_param", "weight_filler"),
                      "innerproduct": ("inner_product_param", "weight_filler")},
    "bias_filler": {"conv": ("convolution_param", "bias_filler"),
                    "innerproduct": ("inner_product_param", "bias_filler")},
    "pad": {"conv": ("convolution_param", "pad"),
            "pool": ("pooling_param", "pad")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size"),
                   "pool": ("pooling_param", "kernel_size")},
    "group": {"conv": ("convolution_param", "group")},
    "stride": {"conv": ("convolution_param", "stride"),
               "pool": ("pooling_param", "stride")},
    "pool": {"pool": ("pooling_param", "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {"data": ("data_param", "source"),
               "hdf5_data": ("hdf5_data_param", "source"),
               "images": ("image_data_param", "source"),
               "window_data": ("window_data_param", "source"),
               "infogain_loss": ("infogain_loss_param", "source")},
    "scale": {"*": ("transform_param", "scale")},
    "meanfile": {"*": ("transform_param", "mean_file")},
    "batchsize": {"data": ("data_param", "batch_size"),
                  "hdf5_data": ("hdf5_data_param", "batch_size"),
                  "images": ("image_data_param", "batch_size"),
                  "window_data": ("window_data_param", "batch_size")},
    "cropsize": {"*": ("transform_param", "crop_size")},
    "mirror": {"*": ("transform_param", "mirror")},
    "rand_skip": {"data": ("data_param", "rand_skip"),
                  "images": ("image_data_param", "rand_skip")},
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", None)},
}
# new_num / new_channels belonged to the padding layer only; Caffe ignores them.


def _needs_v0_upgrade(net_param):
    return any(v1.HasField("layer") for v1 in net_param.layers)


def upgrade_v0_net(net_param, source="<net>"):
    """V0 layers (``layers { layer { ... } }``) -> V1 layers; True if any were V0."""
    if not _needs_v0_upgrade(net_param):
        return False
    folded = _fold_padding_layers(net_param, source)
    upgraded = []
    for index, v0_conn in enumerate(folded):
        upgraded.append(_upgrade_v0_layer(v0_conn, index, source))
    # Caffe rebuilds the NetParameter from name, layers, input, input_dim and
    # force_backward only; V0 files have no other fields, so we keep the rest.
    del net_param.layers[:]
    net_param.layers.extend(upgraded)
    return True


def _fold_padding_layers(net_param, source):
    """The V1 connections minus V0 "padding" layers, whose pad moves to their consumer.

    V0 padded with a separate layer; V1 conv and pool layers pad themselves, so
    a padding layer may feed only one conv/pool layer through a single blob.
    """
    # Which original layer last wrote each blob; -1 for net inputs.
    producer = {name: -1 for name in net_param.input}
    kept = []
    for i, conn in enumerate(net_param.layers):
        v0 = conn.layer
        is_padding = v0.type == "padding"
        if not is_padding:
            new = V1()
            new.CopyFrom(conn)
            kept.append(new)
        for j, blob in enumerate(conn.bottom):
            if blob not in producer:
                _fail(source, i, v0.name or conn.name,
                      "bottom %d is %r, which no earlier layer or net input produces"
                      % (j, blob))
            src = producer[blob]
            if src == -1:
                continue
            pad_conn = net_param.layers[src]
            if pad_conn.layer.type != "padding":
                continue
            if v0.type not in ("conv", "pool"):
                _fail(source, i, v0.name or conn.name,
                      "padding layer %r feeds a %r layer; only conv and pool layers can "
                      "absorb padding" % (pad_conn.layer.name, v0.type))
            if len(conn.bottom) != 1:
                _fail(source, i, v0.name or conn.name,
                      "a conv/pool layer fed by padding layer %r must have exactly one "
                      "bottom, not %d" % (pad_conn.layer.name, len(conn.bottom)))
            if len(pad_conn.bottom) != 1 or len(pad_conn.top) != 1:
                _fail(source, src, pad_conn.layer.name,
                      "a padding layer needs exactly one bottom and one top (has %d and %d)"
                      % (len(pad_conn.bottom), len(pad_conn.top)))
            # The consumer pads by the padding layer's amount and reads the
            # padding layer's input directly.
            kept[-1].layer.pad = pad_conn.layer.pad
            kept[-1].bottom[j] = pad_conn.bottom[0]
        for blob in conn.top:
            producer[blob] = i
    return kept


def _upgrade_v0_layer(conn, index, source):
    """One V1 connection holding a V0 ``layer`` -> a V1 layer with typed params."""
    out = V1()
    out.bottom.extend(conn.bottom)
    out.top.extend(conn.top)
    if not conn.HasField("layer"):
        # A connection without a V0 layer carries only its blob names.
        return out
    v0 = conn.layer
    if v0.HasField("name"):
        out.name = v0.name
    kind = v0.type
    if v0.HasField("type"):
        if kind not in _V0_TYPES:
            _fail(source, index, v0.name,
                  "unknown V0 layer type %r; V0 types that can be upgraded: %s"
                  % (kind, ", ".join(sorted(_V0_TYPES))))
        out.type = _V0_TYPES[kind]
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for v0_field, targets in _V0_FIELDS.items():
        if not v0.HasField(v0_field):
            continue
        target = targets.get(kind) or targets.get("*")
        if target is None:
            _warn(source, index, v0.name,
                  "V0 setting %r means nothing for a %r layer; dropped"
                  % (v0_field, kind))
            continue
        sub_name, field = target
        sub = getattr(out, sub_name)
        value = getattr(v0, v0_field)
        if field is None:
            sub.CopyFrom(value)
        elif v0_field == "pool":
            # Same member names in both enums; map by name, not number.
            name = caffe_pb2.V0LayerParameter.PoolMethod.Name(value)
            sub.pool = caffe_pb2.PoolingParameter.PoolMethod.Value(name)
        else:
            _assign(sub, field, value)
    return out


def _assign(message, field, value):
    """Set ``message.field``: append if repeated, copy if a message, else assign."""
    current = getattr(message, field)
    # Checked on the value, not the descriptor: FieldDescriptor.label is gone
    # from recent protobuf releases.
    if isinstance(current, Message):
        current.CopyFrom(value)
    elif hasattr(current, "append"):
        current.append(value)
    else:
        setattr(message, field, value)


# -- data transformation -------------------------------------------------------

_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")
_DATA_LAYER_PARAMS = {
    V1.DATA: "data_param",
    V1.IMAGE_DATA: "image_data_param",
    V1.WINDOW_DATA: "window_data_param",
}


def _needs_data_upgrade(net_param):
    for v1 in net_param.layers:
        sub_name = _DATA_LAYER_PARAMS.get(v1.type)
        if sub_name and v1.HasField(sub_name):
            sub = getattr(v1, sub_name)
            if any(sub.HasField(f) for f in _TRANSFORM_FIELDS):
                return True
    return False


def upgrade_data_transformation(net_param, source="<net>"):
    """Move V1 data layers' scale/mean_file/crop_size/mirror into transform_param."""
    if not _needs_data_upgrade(net_param):
        return False
    for v1 in net_param.layers:
        sub_name = _DATA_LAYER_PARAMS.get(v1.type)
        if sub_name is None:
            continue
        sub = getattr(v1, sub_name)
        # Caffe touches both messages of every data layer once any needs the
        # upgrade, so they are present (if empty) afterwards; we do the same to
        # give the same upgraded file.
        sub.SetInParent()
        v1.transform_param.SetInParent()
        for f in _TRANSFORM_FIELDS:
            if sub.HasField(f):
                setattr(v1.transform_param, f, getattr(sub, f))
                sub.ClearField(f)
    return True


# -- V1 -> V2 ------------------------------------------------------------------

_V1_TYPE_NAMES = {
    V1.NONE: "",
    V1.ABSVAL: "AbsVal",
    V1.ACCURACY: "Accuracy",
    V1.ARGMAX: "ArgMax",
    V1.BNLL: "BNLL",
    V1.CONCAT: "Concat",
    V1.CONTRASTIVE_LOSS: "ContrastiveLoss",
    V1.CONVOLUTION: "Convolution",
    V1.DECONVOLUTION: "Deconvolution",
    V1.DATA: "Data",
    V1.DROPOUT: "Dropout",
    V1.DUMMY_DATA: "DummyData",
    V1.EUCLIDEAN_LOSS: "EuclideanLoss",
    V1.ELTWISE: "Eltwise",
    V1.EXP: "Exp",
    V1.FLATTEN: "Flatten",
    V1.HDF5_DATA: "HDF5Data",
    V1.HDF5_OUTPUT: "HDF5Output",
    V1.HINGE_LOSS: "HingeLoss",
    V1.IM2COL: "Im2col",
    V1.IMAGE_DATA: "ImageData",
    V1.INFOGAIN_LOSS: "InfogainLoss",
    V1.INNER_PRODUCT: "InnerProduct",
    V1.LRN: "LRN",
    V1.MEMORY_DATA: "MemoryData",
    V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss",
    V1.MVN: "MVN",
    V1.POOLING: "Pooling",
    V1.POWER: "Power",
    V1.RELU: "ReLU",
    V1.SIGMOID: "Sigmoid",
    V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss",
    V1.SILENCE: "Silence",
    V1.SOFTMAX: "Softmax",
    V1.SOFTMAX_LOSS: "SoftmaxWithLoss",
    V1.SPLIT: "Split",
    V1.SLICE: "Slice",
    V1.TANH: "TanH",
    V1.WINDOW_DATA: "WindowData",
    V1.THRESHOLD: "Threshold",
}

# Every typed settings message of a V1 layer; each has a same-named field in
# LayerParameter and is copied over unchanged.
_V1_SUB_PARAMS = tuple(f.name for f in V1.DESCRIPTOR.fields if f.name.endswith("_param"))


def v1_type_name(enum_value):
    """The current type string of a V1 ``LayerType`` (number or enum name).

    ``v1_type_name(V1LayerParameter.SOFTMAX_LOSS) == "SoftmaxWithLoss"``;
    NONE maps to "".
    """
    if isinstance(enum_value, str):
        try:
            enum_value = V1.LayerType.Value(enum_value)
        except ValueError:
            raise UpgradeError("unknown V1 layer type %r" % enum_value) from None
    try:
        return _V1_TYPE_NAMES[enum_value]
    except KeyError:
        raise UpgradeError("unknown V1 layer type %r" % (enum_value,)) from None


def upgrade_v1_net(net_param, source="<net>"):
    """V1 ``layers`` -> current ``layer`` entries; True if there were any."""
    if not len(net_param.layers):
        return False
    if len(net_param.layer):
        raise UpgradeError(
            "%s: the net has both 'layer' and 'layers' entries (first 'layer' is %r); "
            "write it in one format" % (source, net_param.layer[0].name))
    upgraded = [_upgrade_v1_layer(v1, i, source) for i, v1 in enumerate(net_param.layers)]
    del net_param.layers[:]
    net_param.layer.extend(upgraded)
    return True


def _upgrade_v1_layer(v1, index, source):
    out = caffe_pb2.LayerParameter()
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    if v1.HasField("name"):
        out.name = v1.name
    out.include.extend(v1.include)
    out.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        out.type = _V1_TYPE_NAMES[v1.type]
    out.blobs.extend(v1.blobs)

    # The four per-blob lists of V1 become one ParamSpec per blob; a list
    # shorter than the others leaves that setting at its default.
    def spec(i):
        while len(out.param) <= i:
            out.param.add()
        return out.param[i]

    for i, name in enumerate(v1.param):
        spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        spec(i).share_mode = caffe_pb2.ParamSpec.DimCheckMode.Value(
            V1.DimCheckMode.Name(mode))
    for i, lr in enumerate(v1.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        spec(i).decay_mult = decay

    out.loss_weight.extend(v1.loss_weight)
    for sub_name in _V1_SUB_PARAMS:
        if v1.HasField(sub_name):
            getattr(out, sub_name).CopyFrom(getattr(v1, sub_name))
    if v1.HasField("layer"):
        # Only reachable for hand-built messages: upgrade_v0_net consumes every
        # V0 layer first. Caffe ignores the leftover, and so do we.
        _warn(source, index, v1.name, "leftover V0 'layer' settings ignored")
    return out


# -- net inputs ------------------------------------------------------------------

def upgrade_net_input(net_param, source="<net>"):
    """Net-level ``input`` fields -> an "Input" layer named "input", placed first.

    Shapes come from ``input_shape`` (one per input) when given, else from
    ``input_dim`` (four per input: num, channels, height, width). An ``input``
    without either is what old caffemodels hold: it is simply removed.
    """
    if not len(net_param.input):
        return False
    names = list(net_param.input)
    shapes = list(net_param.input_shape)
    dims = list(net_param.input_dim)
    if shapes or dims:
        # Caffe 1.0 uses input_shape when both are present.
        if shapes and len(shapes) != len(names):
            raise UpgradeError(
                "%s: net inputs %s need one input_shape each, got %d"
                % (source, names, len(shapes)))
        if not shapes and len(dims) != 4 * len(names):
            raise UpgradeError(
                "%s: net inputs %s need 4 input_dim values each (%d in all), got %d"
                % (source, names, 4 * len(names), len(dims)))
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        layer.top.extend(names)
        for i in range(len(names)):
            shape = layer.input_param.shape.add()
            if shapes:
                shape.CopyFrom(shapes[i])
            else:
                shape.dim.extend(dims[4 * i:4 * i + 4])
        # The input layer goes first so every later layer finds its tops.
        rest = list(net_param.layer)
        del net_param.layer[:]
        net_param.layer.append(layer)
        net_param.layer.extend(rest)
    net_param.ClearField("input")
    net_param.ClearField("input_shape")
    net_param.ClearField("input_dim")
    return True


# -- BatchNorm -------------------------------------------------------------------

def upgrade_batch_norm(net_param, source="<net>"):
    """Freeze the three ``param`` specs an old-style BatchNorm layer declares.

    BatchNorm's blobs (mean, variance, moving-average factor) are statistics,
    not learned weights: Caffe 1.0 sets ``lr_mult`` and ``decay_mult`` of such
    specs to 0 and keeps their names, so named sharing between two BatchNorm
    layers survives (an earlier Caffe cleared the specs, which broke sharing).
    """
    changed = False
    for layer in net_param.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0
            changed = True
    return changed


# -- solver ----------------------------------------------------------------------

_SOLVER_TYPE_NAMES = {
    caffe_pb2.SolverParameter.SGD: "SGD",
    caffe_pb2.SolverParameter.NESTEROV: "Nesterov",
    caffe_pb2.SolverParameter.ADAGRAD: "AdaGrad",
    caffe_pb2.SolverParameter.RMSPROP: "RMSProp",
    caffe_pb2.SolverParameter.ADADELTA: "AdaDelta",
    caffe_pb2.SolverParameter.ADAM: "Adam",
}


def upgrade_solver(solver_param, source="<solver>"):
    """The legacy ``solver_type`` enum -> the ``type`` string; True if it was set.

    Caffe 1.0 refuses any file that sets both fields; we accept both when they
    name the same update rule and refuse them when they disagree.
    """
    if not solver_param.HasField("solver_type"):
        return False
    name = _SOLVER_TYPE_NAMES.get(solver_param.solver_type)
    if name is None:
        raise UpgradeError("%s: unknown solver_type %r" % (source, solver_param.solver_type))
    if solver_param.HasField("type") and solver_param.type != name:
        raise UpgradeError(
            "%s: solver_type: %s (the old enum) and type: %r disagree; set only 'type'"
            % (source, caffe_pb2.SolverParameter.SolverType.Name(solver_param.solver_type),
               solver_param.type))
    solver_param.type = name
    solver_param.ClearField("solver_type")
    return True


# -- blobs -----------------------------------------------------------------------

_LEGACY_DIMS = ("num", "channels", "height", "width")


def upgrade_blob_shape(blob_proto):
    """Legacy num/channels/height/width of a BlobProto -> its 4-d ``shape``.

    As in Caffe's ``Blob::FromProto``, any one legacy field makes the blob 4-d
    (unset ones count as 0) and takes precedence over ``shape``. The legacy
    fields are cleared afterwards. Returns True if there were any.
    """
    if not any(blob_proto.HasField(f) for f in _LEGACY_DIMS):
        return False
    dims = [getattr(blob_proto, f) for f in _LEGACY_DIMS]
    blob_proto.shape.ClearField("dim")
    blob_proto.shape.dim.extend(dims)
    for f in _LEGACY_DIMS:
        blob_proto.ClearField(f)
    return True
