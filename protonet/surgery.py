"""Net surgery: weights of one net into another by layer name (``protonet surgery``).

What FCN's ``surgery.transplant`` and DIGITS' ``net_surgery.py`` do to turn
ImageNet AlexNet (``bvlc_alexnet.caffemodel``) into FCN-AlexNet: every
layer of the target net with parameters takes the parameters of the source
layer of the same name (or the name ``--rename SRC:DST`` gives it), and

* a blob of the same shape is copied;
* a blob with the same number of values is copied reshaped, in Caffe's
  row-major order: AlexNet's ``fc6`` InnerProduct weights 4096 x 9216 become
  the Convolution weights 4096 x 256 x 6 x 6 of FCN-AlexNet's ``fc6``, since
  an InnerProduct over a 256 x 6 x 6 input is that convolution;
* anything else does not fit and is named with both shapes. The usual case is
  conv1 of an RGB net (96 x 3 x 11 x 11) into a net fed gray images
  (96 x 1 x 11 x 11): ``--sum-input-channels`` sums the weights over the
  input channels, which on a gray image gives exactly what the RGB weights
  give on that image copied to three channels.

Target layers with no source keep their initial values (the target's
fillers); source layers with no target are listed and left out. The result
is the target net's parameters as a ``.caffemodel`` to start ``protonet
train --weights`` from.
"""
import os

import numpy as np

from . import backend
from .io import blob_shape, blobproto_to_array, read_net, read_net_binary


class SurgeryError(ValueError):
    """The nets or weights cannot be combined; the message says which layer and why."""


def _shape(shape):
    return "x".join(str(int(d)) for d in shape) or "(scalar)"


def _squeeze_legacy(shape):
    """Old (V1) caffemodels store every blob as 4-d num x channels x height x width:
    an InnerProduct's 4096 x 9216 weights as 1 x 1 x 4096 x 9216, a bias as 1 x 1 x 1 x 96."""
    shape = tuple(int(d) for d in shape)
    while len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    return shape


def read_source(weights, model=None):
    """{layer name: (type, [arrays])} of the layers with parameters in ``weights``.

    With ``model`` (the source's prototxt), the net is built and the weights
    loaded into it first, so that a caffemodel that does not belong to that
    net is an error naming the layer.
    """
    if not os.path.exists(weights):
        raise SurgeryError("--source-weights: %s: no such file (working directory %s)"
                           % (weights, os.getcwd()))
    from .layer import TEST
    from .net import Net, _is_hdf5
    if _is_hdf5(weights):
        # an HDF5 model stores no layer types or names of empty layers: its net says them
        if model is None:
            raise SurgeryError("%s is an HDF5 model: give its net with --source-model too"
                               % weights)
        net = Net(model, phase=TEST)
        net.copy_from(weights)
        out = {}
        for name, layer in zip(net.layer_names, net.layers):
            if layer.blobs:
                out.setdefault(name, (layer.type, [np.array(backend.to_host(b.data))
                                                   for b in layer.blobs]))
        return out
    param = read_net_binary(weights)
    stored = [lp for lp in param.layer if len(lp.blobs)]
    if not stored:
        raise SurgeryError("%s holds no layer with parameters: is it a .caffemodel?" % weights)
    if model is None:
        out = {}
        for lp in stored:
            out.setdefault(lp.name, (lp.type, [blobproto_to_array(b) for b in lp.blobs]))
        return out
    net = Net(model, phase=TEST)
    net.copy_from(param, origin=weights)
    names = {lp.name for lp in stored}
    out = {}
    for name, layer in zip(net.layer_names, net.layers):
        if name in names and layer.blobs and name not in out:
            out[name] = (layer.type, [np.array(backend.to_host(b.data)) for b in layer.blobs])
    return out


def build_target(model, input_shape=None, channels=None):
    """The target net, built in phase TEST.

    A deploy prototxt (an Input layer) is built as it is. A DIGITS train/val
    prototxt (data layers without sources) becomes its deploy net by DIGITS'
    rule, with an input of ``input_shape`` (default 1 x ``channels`` x 256 x 256:
    only the channel count matters to convolution weights).
    """
    from .digits import derive_deploy
    from .layer import TEST
    from .net import Net
    if not os.path.exists(model):
        raise SurgeryError("--target-model: %s: no such file (working directory %s)"
                           % (model, os.getcwd()))
    from . import python_layer
    python_layer.add_search_path(os.path.dirname(os.path.abspath(model)))
    param = read_net(model)
    types = {lp.type for lp in param.layer}
    if "Input" in types and input_shape is None:
        return Net(model, phase=TEST, stages=["deploy"])
    if not types & {"Data", "ImageData", "HDF5Data", "MemoryData", "Input"}:
        raise SurgeryError("%s: neither a deploy net (an Input layer) nor a train/val net (data "
                           "layers)" % model)
    if "Input" in types:
        param = _without_input_layers(param)
    shape = tuple(input_shape) if input_shape else (1, int(channels or 3), 256, 256)
    return Net(derive_deploy(param, shape), phase=TEST)


def _without_input_layers(param):
    """``param`` without its Input layers (derive_deploy adds one of the given shape)."""
    from .proto import caffe_pb2
    p = caffe_pb2.NetParameter()
    p.CopyFrom(param)
    kept = [lp for lp in p.layer if lp.type != "Input"]
    del p.layer[:]
    p.layer.extend(kept)
    return p


def _fit(src_type, dst_type, j, src, dst_shape, sum_channels):
    """(array of dst_shape, note or None), or (None, why it does not fit)."""
    src_shape = tuple(src.shape)
    if _squeeze_legacy(src_shape) == _squeeze_legacy(dst_shape):
        return src.reshape(dst_shape), None
    if src.size == int(np.prod(dst_shape, dtype=np.int64)):
        how = "%s -> %s" % (_shape(_squeeze_legacy(src_shape)), _shape(dst_shape))
        if src_type != dst_type:
            how += " (%s -> %s)" % (src_type, dst_type)
        return src.reshape(dst_shape), "reshaped " + how
    s, d = _squeeze_legacy(src_shape), tuple(int(v) for v in dst_shape)
    if j == 0 and len(s) == 4 and len(d) == 4 and (s[0], s[2], s[3]) == (d[0], d[2], d[3]):
        if sum_channels and d[1] == 1:
            return (src.reshape(s).sum(axis=1, keepdims=True, dtype=np.float64)
                    .astype(np.float32), "summed over %d input channels: %s -> %s"
                    % (s[1], _shape(s), _shape(d)))
        hint = (" (--sum-input-channels sums them into 1 channel for gray input: exact for a "
                "gray image copied to %d channels; or feed the net %d channels, e.g. a dataset "
                "made with `protonet data sunnybrook --channels rgb`)" % (s[1], s[1])
                if d[1] == 1 else "")
        return None, ("its weights take %d input channels (%s) but the target layer takes %d "
                      "(%s)%s" % (s[1], _shape(s), d[1], _shape(d), hint))
    return None, ("param %d: source shape %s (%d values), target shape %s (%d values)"
                  % (j, _shape(_squeeze_legacy(src_shape)), src.size, _shape(dst_shape),
                     int(np.prod(dst_shape, dtype=np.int64))))


def transplant(net, source, renames=(), sum_input_channels=False, skip=()):
    """Copy ``source`` ({name: (type, arrays)}) into ``net``'s parameters; returns the report.

    ``renames``: (source name, target name) pairs. ``skip``: target layers
    left at their initial values. The report is a dict of lists:
    ``copied`` [(target, source, shapes, notes)], ``only_target``, ``only_source``,
    ``skipped`` and ``unfit`` [(target, source, why)]; nothing is written
    into the net when a layer does not fit.
    """
    to_source = {}
    for src, dst in renames:
        if src not in source:
            raise SurgeryError("--rename %s:%s: the source has no layer '%s' with parameters "
                               "(it has %s)" % (src, dst, src, ", ".join(source)))
        to_source[dst] = src
    seen, layers = set(), []
    for name, layer in zip(net.layer_names, net.layers):
        if layer.blobs and name not in seen:
            seen.add(name)
            layers.append((name, layer))
    missing = [dst for dst in list(to_source) + list(skip) if dst not in seen]
    if missing:
        raise SurgeryError("no layer named %s with parameters in the target net (it has %s)"
                           % (", ".join("'%s'" % m for m in missing),
                              ", ".join(n for n, _ in layers)))
    report = {"copied": [], "only_target": [], "only_source": [], "skipped": [], "unfit": []}
    plan, used = [], set()
    for name, layer in layers:
        src_name = to_source.get(name, name)
        if name in skip:
            report["skipped"].append(name)
            used.add(src_name)
            continue
        if src_name not in source:
            report["only_target"].append(name)
            continue
        used.add(src_name)
        src_type, arrays = source[src_name]
        if len(arrays) != len(layer.blobs):
            report["unfit"].append((name, src_name, "the source layer has %d parameter blob(s), "
                                    "the target layer %d" % (len(arrays), len(layer.blobs))))
            continue
        values, notes, why = [], [], None
        for j, (arr, blob) in enumerate(zip(arrays, layer.blobs)):
            fitted, note = _fit(src_type, layer.type, j, np.asarray(arr, np.float32),
                                tuple(blob.shape), sum_input_channels)
            if fitted is None:
                why = note
                break
            values.append(fitted)
            if note:
                notes.append("param %d %s" % (j, note))
        if why:
            report["unfit"].append((name, src_name, why))
            continue
        plan.append((layer, values))
        report["copied"].append((name, src_name, [_shape(b.shape) for b in layer.blobs], notes))
    report["only_source"] = [n for n in source if n not in used]
    if report["unfit"]:
        return report
    for layer, values in plan:
        for blob, v in zip(layer.blobs, values):
            blob.data[...] = net.xp.asarray(v) if net.xp is not np else v
    return report


def format_report(report):
    lines = []
    for name, src, shapes, notes in report["copied"]:
        lines.append("  %-12s <- %-12s %s%s" % (name, src, ", ".join(shapes),
                                               ("; " + "; ".join(notes)) if notes else ""))
    for name in report["skipped"]:
        lines.append("  %-12s    skipped (--skip): keeps its initial values" % name)
    for name in report["only_target"]:
        lines.append("  %-12s    only in the target: keeps its initial values (its fillers)"
                     % name)
    for name in report["only_source"]:
        lines.append("  %-12s    only in the source: not copied" % name)
    for name, src, why in report["unfit"]:
        lines.append("  %-12s <- %-12s DOES NOT FIT: %s" % (name, src, why))
    return "\n".join(lines)


def _pairs(values):
    out = []
    for value in values or []:
        for item in value.split(","):
            if not item:
                continue
            if item.count(":") != 1 or not all(item.split(":")):
                raise SurgeryError("--rename expects SOURCE:TARGET layer names, got %r" % item)
            out.append(tuple(item.split(":")))
    return out


def _names(values):
    return [n for value in values or [] for n in value.split(",") if n]


SURGERY_EXAMPLE = """example: ImageNet AlexNet -> FCN-AlexNet, as DIGITS' net_surgery.py does
  protonet surgery --source-weights bvlc_alexnet.caffemodel \\
      --source-model deploy.prototxt --target-model fcn_alexnet.prototxt \\
      --out fcn_alexnet_init.caffemodel
  protonet surgery --source-weights bvlc_alexnet.caffemodel \\
      --target-model fcn_alexnet.prototxt --sum-input-channels --out fcn_alexnet_gray.caffemodel

Layers are matched by name; fc6/fc7 (InnerProduct) go into the convolutions of
the same name, reshaped. bvlc_alexnet.caffemodel is in the BVLC model zoo
(http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel; its deploy.prototxt
is models/bvlc_alexnet/ in Caffe's repository)."""


def add_arguments(p):
    p.add_argument("--source-weights", required=True, metavar="CAFFEMODEL",
                   help="the trained weights to copy from (e.g. bvlc_alexnet.caffemodel)")
    p.add_argument("--source-model", metavar="PROTOTXT",
                   help="the source's net (optional: a caffemodel carries its layers' shapes); "
                        "given, the weights are checked against it")
    p.add_argument("--target-model", required=True, metavar="PROTOTXT",
                   help="the net to initialise: a deploy prototxt, or a DIGITS train/val "
                        "network (its deploy net is derived)")
    p.add_argument("--out", required=True, metavar="CAFFEMODEL", help="the .caffemodel to write")
    p.add_argument("--rename", action="append", metavar="SRC:DST",
                   help="copy source layer SRC into target layer DST (repeatable, or comma "
                        "separated)")
    p.add_argument("--skip", action="append", metavar="LAYER",
                   help="leave target LAYER at its initial values (repeatable, or comma "
                        "separated)")
    p.add_argument("--sum-input-channels", action="store_true",
                   help="a layer whose weights take C input channels where the target takes 1 "
                        "(RGB conv1 into a gray net) gets them summed over the channels")
    p.add_argument("--input-shape", metavar="N,C,H,W",
                   help="input of a train/val target's derived deploy net (default 1,C,256,256 "
                        "with C the source's first convolution's input channels, or 1 with "
                        "--sum-input-channels)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")


def _first_conv_channels(source):
    """Input channels of the source's first Convolution (what a derived target input takes)."""
    for kind, arrays in source.values():
        if kind == "Convolution" and arrays:
            shape = _squeeze_legacy(arrays[0].shape)
            return int(shape[1]) if len(shape) == 4 else None
    return None


def run(args, echo=print):
    """``protonet surgery``; returns the exit status (raises SurgeryError on bad input)."""
    from .log import plural, quiet_net_setup
    if os.path.exists(args.out) and not args.force:
        raise SurgeryError("--out %s exists; pass --force to replace it" % args.out)
    shape = None
    if args.input_shape:
        try:
            shape = tuple(int(v) for v in args.input_shape.split(","))
        except ValueError:
            shape = ()
        if len(shape) != 4 or min(shape) < 1:
            raise SurgeryError("--input-shape expects four positive numbers N,C,H,W; got %r"
                               % args.input_shape)
    renames, skip = _pairs(args.rename), _names(args.skip)
    with quiet_net_setup():
        source = read_source(args.source_weights, args.source_model)
        channels = 1 if args.sum_input_channels else _first_conv_channels(source)
        net = build_target(args.target_model, input_shape=shape, channels=channels)
    report = transplant(net, source, renames, args.sum_input_channels, skip)
    echo("Net surgery: %s -> %s" % (args.source_weights, args.target_model))
    echo(format_report(report))
    if report["unfit"]:
        channels = any("--sum-input-channels" in why for _, _, why in report["unfit"])
        raise SurgeryError(
            "%s not fit (listed above); nothing written. Rename a target layer (then it starts "
            "from its fillers), --skip it, or --rename a source layer into it%s"
            % (plural(len(report["unfit"]), "layer does", "layers do"),
               " (--sum-input-channels: see above)" if channels else ""))
    if not report["copied"]:
        raise SurgeryError("no layer of %s is named as a layer of %s: nothing to copy (use "
                           "--rename SRC:DST)" % (args.target_model, args.source_weights))
    folder = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(folder, exist_ok=True)
    net.save(args.out)
    echo("Wrote %s (%s copied); fine-tune with: protonet train ... --weights %s"
         % (args.out, plural(len(report["copied"]), "layer"), args.out))
    return 0

