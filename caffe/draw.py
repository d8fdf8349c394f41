"""Draw a NetParameter as a graph (pycaffe's ``caffe.draw``).

The graph is written in Graphviz's DOT language here, with no dependency;
``draw_net_to_file(net, 'net.dot')`` (or ``.gv``/``.raw``) writes that text.
Rendering to an image (``.png``, ``.svg``, ``.pdf``...) needs Graphviz's ``dot``
program (your system's graphviz package), through ``pydot`` when it is installed.
Layers are boxes (labelled name, type and, for convolution/pooling, the
geometry), blobs are octagons, in-place neuron layers are green boxes.
"""
from .proto import caffe_pb2

LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}
_TEXT_FORMATS = ("dot", "gv", "raw")


def get_pooling_types_dict():
    """{pooling enum value: name}, e.g. {0: 'MAX', 1: 'AVE', 2: 'STOCHASTIC'}."""
    desc = caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR
    return {v.number: name for name, v in desc.values_by_name.items()}


def get_edge_label(layer):
    """The label of a layer's output edges: batch size for data layers, outputs for the rest."""
    if layer.type == "Data":
        return "Batch " + str(layer.data_param.batch_size)
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_lr_mult(layer):
    """(weight lr_mult, bias lr_mult) of a Convolution/Deconvolution/InnerProduct layer."""
    lr_mult, bias_mult = 1, 1
    if len(layer.param) >= 1:
        lr_mult = layer.param[0].lr_mult
    if len(layer.param) >= 2:
        bias_mult = layer.param[1].lr_mult
    return lr_mult, bias_mult


def _first(values, default):
    return values[0] if len(values) else default


def get_layer_label(layer, rankdir, display_lrm=False):
    """``name (type)`` plus kernel/stride/pad for convolution and pooling layers."""
    separator = " " if rankdir in ("TB", "BT") else "\\n"
    parts = [layer.name, "(%s)" % layer.type]
    if layer.type in ("Convolution", "Deconvolution"):
        cp = layer.convolution_param
        parts += ["kernel size: %d" % (cp.kernel_h or _first(cp.kernel_size, 1)),
                  "stride: %d" % (cp.stride_h or _first(cp.stride, 1)),
                  "pad: %d" % (cp.pad_h or _first(cp.pad, 0))]
    elif layer.type == "Pooling":
        pp = layer.pooling_param
        parts += ["pool type: %s" % get_pooling_types_dict()[pp.pool],
                  "kernel size: %d" % (pp.kernel_h or pp.kernel_size),
                  "stride: %d" % (pp.stride_h or pp.stride),
                  "pad: %d" % (pp.pad_h or pp.pad)]
    if display_lrm and layer.type in ("Convolution", "Deconvolution", "InnerProduct"):
        lr_mult, bias_mult = get_layer_lr_mult(layer)
        if lr_mult != 1 or bias_mult != 1:
            parts.append("lr mult: %g, %g" % (lr_mult, bias_mult))
    return separator.join(parts)


def choose_color_by_layertype(layertype):
    if layertype in ("Convolution", "Deconvolution"):
        return "#FF5050"
    if layertype == "Pooling":
        return "#FF9900"
    if layertype == "InnerProduct":
        return "#CC33FF"
    return "#6495ED"


def _included(layer, phase):
    if phase is None:
        return True
    included = not len(layer.include)
    for rule in layer.include:
        if rule.HasField("phase") and rule.phase == phase:
            included = True
    for rule in layer.exclude:
        if rule.HasField("phase") and rule.phase == phase:
            included = False
    return included


def _quote(text):
    return '"%s"' % str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\\\\n", "\\n")


def _attrs(style):
    return ", ".join("%s=%s" % (k, _quote(v)) for k, v in style.items())


def get_dot_source(caffe_net, rankdir="LR", label_edges=True, phase=None, display_lrm=False):
    """The net as Graphviz DOT text (no dependency needed)."""
    nodes, edges = {}, []
    for layer in caffe_net.layer:
        if not _included(layer, phase):
            continue
        node = "%s_%s" % (layer.name, layer.type)
        label = get_layer_label(layer, rankdir, display_lrm)
        if len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]:
            style = dict(NEURON_LAYER_STYLE)
        else:
            style = dict(LAYER_STYLE_DEFAULT, fillcolor=choose_color_by_layertype(layer.type))
        nodes[node] = dict(style, label=label)
        for bottom in layer.bottom:
            nodes.setdefault(bottom + "_blob", dict(BLOB_STYLE, label=bottom))
            edges.append((bottom + "_blob", node, None))
        edge_label = get_edge_label(layer)
        for top in layer.top:
            nodes[top + "_blob"] = dict(BLOB_STYLE, label=top)
            edges.append((node, top + "_blob", edge_label if label_edges else None))
    lines = ["digraph %s {" % _quote(caffe_net.name or "Net"), "rankdir=%s;" % _quote(rankdir)]
    lines += ["%s [%s];" % (_quote(n), _attrs(style)) for n, style in nodes.items()]
    for src, dst, label in edges:
        extra = " [label=%s]" % _quote(label) if label and label != '""' else ""
        lines.append("%s -> %s%s;" % (_quote(src), _quote(dst), extra))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _pydot():
    try:
        import pydot
    except ImportError as exc:
        raise ImportError("drawing a net as an image needs pydot and Graphviz: "
                          "`pip install pydot` and install graphviz (the `dot` program); "
                          "write a .dot file to get the graph without them (%s)" % exc) from None
    return pydot


def get_pydot_graph(caffe_net, rankdir, label_edges=True, phase=None, display_lrm=False):
    """A ``pydot.Dot`` graph of the net (needs pydot)."""
    pydot = _pydot()
    dot = get_dot_source(caffe_net, rankdir, label_edges, phase, display_lrm)
    return pydot.graph_from_dot_data(dot)[0]


GRAPHVIZ_HINT = ("install Graphviz, which provides the `dot` program (Debian/Ubuntu: "
                 "`sudo apt-get install graphviz`; macOS: `brew install graphviz`; conda: "
                 "`conda install graphviz`), or write a .dot file and render it elsewhere")


def render_dot(dot, ext):
    """DOT text rendered by Graphviz's ``dot`` program in format ``ext`` (bytes).

    RuntimeError when ``dot`` is not on the PATH (saying how to get it) or fails.
    """
    import shutil
    import subprocess
    program = shutil.which("dot")
    if program is None:
        raise RuntimeError("drawing a net as .%s needs Graphviz's `dot` program, which is not on "
                           "the PATH: %s" % (ext, GRAPHVIZ_HINT))
    done = subprocess.run([program, "-T" + ext], input=dot.encode(), capture_output=True)
    if done.returncode:
        said = done.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError("Graphviz's dot could not write format '%s': %s"
                           % (ext, said[-1] if said else "exit status %d" % done.returncode))
    return done.stdout


def draw_net(caffe_net, rankdir, ext="png", phase=None, display_lrm=False):
    """The net drawn in format ``ext`` (bytes); DOT text for 'dot'/'gv'/'raw'.

    Images come from pydot when it is installed, else from Graphviz's ``dot``
    program directly (pydot runs that program too).
    """
    if ext in _TEXT_FORMATS:
        return get_dot_source(caffe_net, rankdir, phase=phase, display_lrm=display_lrm).encode()
    try:
        import pydot  # noqa: F401
    except ImportError:
        return render_dot(get_dot_source(caffe_net, rankdir, phase=phase,
                                         display_lrm=display_lrm), ext)
    return get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm).create(
        format=ext)


def draw_net_to_file(caffe_net, filename, rankdir="LR", phase=None, display_lrm=False):
    """Draw the net to ``filename``, in the format its extension names."""
    ext = filename[filename.rfind(".") + 1:]
    data = draw_net(caffe_net, rankdir, ext, phase, display_lrm)
    with open(filename, "wb") as fid:
        fid.write(data)
