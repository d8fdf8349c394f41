"""Net: a graph of layers built from a NetParameter, run forward and backward.

Construction follows Caffe: upgrade -> NetState filter -> automatic splits ->
layers created from the registry, bottoms resolved, tops created (or reused
in place), ``setup`` + ``reshape``, loss weights, parameters (sharing by
``param { name }``), then which layers and blobs need backward.
"""
import collections
import logging
import os
import re

import numpy as np
from google.protobuf import text_format

from . import backend
from .blob import Blob, BlobSizeError
from .hdf5_weights import load_hdf5_weights
from .io import (FormatError, blob_shape, blobproto_to_array, decode_text, read_net,
                 read_net_binary, write_bytes_atomic, wire_field, blobproto_bytes)
from .layer import TRAIN, TEST, LayerError, create_layer
from .log import fmt, get_logger
from .netstate import filter_net
from .proto import caffe_pb2
from .splits import insert_splits


log = get_logger("net")


class NetError(ValueError):
    """The net description is inconsistent; the message says where."""


_PHASES = {TRAIN: TRAIN, TEST: TEST, "TRAIN": TRAIN, "TEST": TEST, "train": TRAIN, "test": TEST}


def _phase(value):
    if value not in _PHASES:
        raise ValueError("phase must be TRAIN (0) or TEST (1), got %r" % (value,))
    return _PHASES[value]


_TOKEN = re.compile(r'#[^\n]*|name\s*:?\s*(?:"((?:[^"\\]|\\.)*)"|\'((?:[^\'\\]|\\.)*)\')'
                    r'|"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[{}]')


def layer_lines(text):
    """[(name, line)] of the ``name:`` field of each top-level layer block, in file order."""
    out = []
    depth = 0
    for m in _TOKEN.finditer(text):
        tok = m.group(0)
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
        elif depth == 1 and (m.group(1) is not None or m.group(2) is not None):
            name = m.group(1) if m.group(1) is not None else m.group(2)
            out.append((name, text.count("\n", 0, m.start()) + 1))
    return out


def _layer_line_list(layers, name_lines):
    """The file line of each of ``layers`` (None where unknown), matched in file order.

    Names repeat across phases (a TRAIN and a TEST "data" layer), so lines are
    matched by position; layers the file does not spell out (an Input layer
    made from legacy ``input:`` fields) get None.
    """
    out, k = [], 0
    for lp in layers:
        if k < len(name_lines) and name_lines[k][0] == lp.name:
            out.append(name_lines[k][1])
            k += 1
        else:
            out.append(None)
    return out


class Net:
    """A Caffe network.

    Forms (as pycaffe): ``Net(prototxt, phase)``, ``Net(prototxt, weights, phase)``,
    ``Net(prototxt, phase, weights=..., stages=[...], level=0)``; ``prototxt`` may
    also be a NetParameter message, whose own ``state`` is then used as given
    when ``phase`` is None.
    """

    def __init__(self, network, *args, weights=None, phase=None, level=None, stages=None,
                 dtype=np.float32):
        args = list(args)
        if args and isinstance(args[0], (str, os.PathLike)) and not isinstance(args[0], bool):
            if weights is not None:
                raise TypeError("weights given twice")
            weights = args.pop(0)
        if args:
            if phase is not None:
                raise TypeError("phase given twice")
            phase = args.pop(0)
        if args:
            raise TypeError("unexpected positional arguments %r" % (args,))

        if isinstance(network, caffe_pb2.NetParameter):
            param = caffe_pb2.NetParameter()
            param.CopyFrom(network)
            self.source = "<NetParameter %s>" % (param.name or "unnamed")
            self._lines = {}
            self._name_lines = []
            self._search_dirs = ()
            from .io import check_finite
            from .upgrade import upgrade_net
            check_finite(param, self.source)
            upgrade_net(param, source=self.source)
        else:
            self.source = os.fspath(network)
            param = read_net(self.source)
            self._search_dirs = (os.path.dirname(os.path.abspath(self.source)),)
            try:
                with open(self.source, "rb") as f:
                    self._name_lines = layer_lines(decode_text(f.read()))
            except OSError:
                self._name_lines = []
            self._lines = {}
            for name, line in reversed(self._name_lines):   # first occurrence, until filtered
                self._lines[name] = line
        if phase is not None:
            param.state.phase = _phase(phase)
        elif not isinstance(network, caffe_pb2.NetParameter):
            raise TypeError("Net(prototxt, ...) needs a phase (TRAIN or TEST)")
        if stages:
            param.state.stage.extend(stages)
        if level is not None or not isinstance(network, caffe_pb2.NetParameter):
            # Caffe's file constructor always sets the level (default 0).
            param.state.level = int(level or 0)
        self.dtype = np.dtype(dtype)
        self.xp = backend.xp()
        # callables run with the layer index around each layer's pass (Caffe's Net::Callback)
        self.before_forward_hooks, self.after_forward_hooks = [], []
        self.before_backward_hooks, self.after_backward_hooks = [], []
        self._init(param)
        if weights is not None:
            self.copy_from(weights)

    # ------------------------------------------------------------------ build
    def _where(self, layer_name):
        line = self._lines.get(layer_name)
        return " at %s:%d" % (self.source, line) if line else " in %s" % self.source

    def _init(self, in_param):
        self.phase = in_param.state.phase
        self.name = in_param.name
        self.force_backward = in_param.force_backward
        try:
            kept = []
            filtered = filter_net(in_param, kept)
            # from here on a name is one layer's: point at that one
            lines = _layer_line_list(in_param.layer, self._name_lines)
            self._lines.update((in_param.layer[i].name, lines[i]) for i in kept if lines[i])
            if log.isEnabledFor(logging.INFO):      # the dump is not free for a big net
                log.info("Initializing net from parameters: \n%s",
                         text_format.MessageToString(filtered))
            param = insert_splits(filtered, locate=self._where)
        except ValueError as exc:
            raise NetError(str(exc)) from None
        from .digits import DatasetError, check_net_pairs
        try:              # before any Data layer opens them
            check_net_pairs(param.layer)
        except DatasetError as exc:
            raise NetError("net %s%s: %s" % (self.name, self._where(""), exc)) from None
        self.param = param
        memory = 0                          # bytes of top data, as Caffe reports it
        self._layers = []           # the engine's; ``layers`` names the same list (see _blob_dict)
        self.layers = self._layers
        self.layer_names = []
        # the engine's own {name: Blob}; ``blobs`` names the same dict (caffe.Net shows a
        # device net's blobs through host mirrors there, so the engine never reads ``blobs``)
        self._blob_dict = collections.OrderedDict()
        self.blobs = self._blob_dict
        self.bottom_vecs, self.top_vecs = [], []
        self.bottom_names, self.top_names = [], []
        self.bottom_need_backward = []
        self.layer_need_backward = []
        blob_need_backward = {}
        available = {}                      # blob name -> Blob, not yet consumed
        self.inputs = []
        # parameters
        self._all_params = []               # (layer index, param index, blob)
        self._param_owner = []              # index into _all_params or -1
        self._param_names = {}
        self.learnable_params = []          # unique blobs the solver updates
        self.params_lr = []
        self.params_weight_decay = []
        self._has_lr, self._has_decay = [], []
        self._learnable_index = []          # per _all_params entry
        self.param_display_names = []

        for lp in param.layer:
            where = self._where(lp.name)
            if not lp.HasField("phase"):
                lp.phase = self.phase       # as Caffe: a layer inherits the net's (and saves it)
            if lp.propagate_down and len(lp.propagate_down) != len(lp.bottom):
                raise NetError("layer '%s'%s: propagate_down must be given once per bottom (%d), "
                               "got %d" % (lp.name, where, len(lp.bottom), len(lp.propagate_down)))
            try:
                layer = create_layer(lp, phase=lp.phase, dtype=self.dtype, xp=self.xp,
                                     search_dirs=self._search_dirs)
            except LayerError as exc:
                if getattr(exc, "from_plugin", False) and exc.__cause__ is not None:
                    # a plugin's own exception (its __init__): keep its type, add the place
                    from .python_layer import plugin_failure
                    raise plugin_failure("%s%s" % (exc, where), exc.__cause__) from exc.__cause__
                raise NetError("%s%s" % (exc, where)) from None
            li = len(self._layers)
            self._layers.append(layer)
            self.layer_names.append(lp.name)
            log.info("Creating Layer %s", lp.name)
            bottoms, bnames, bneed = [], [], []
            need_backward = False
            for j, bname in enumerate(lp.bottom):
                if bname not in available:
                    known = self._blob_dict.keys()
                    hint = ("it was consumed by an earlier layer" if bname in known
                            else "no earlier layer produces it")
                    raise NetError("Unknown bottom blob '%s' (layer '%s', bottom %d)%s: %s"
                                   % (bname, lp.name, j, where, hint))
                blob = available.pop(bname)
                log.info("%s <- %s", lp.name, bname)
                bottoms.append(blob)
                bnames.append(bname)
                nb = blob_need_backward[bname]
                if lp.propagate_down:
                    nb = bool(lp.propagate_down[j])
                bneed.append(nb)
                need_backward |= blob_need_backward[bname]
            tops, tnames = [], []
            for j, tname in enumerate(lp.top):
                if j < len(lp.bottom) and tname == lp.bottom[j]:
                    blob = bottoms[j]         # in place: the same blob
                    log.info("%s -> %s (in-place)", lp.name, tname)
                elif tname in lp.bottom:
                    blob = bottoms[list(lp.bottom).index(tname)]
                    log.info("%s -> %s (in-place)", lp.name, tname)
                else:
                    log.info("%s -> %s", lp.name, tname)
                    if tname in self._blob_dict:
                        raise NetError("Top blob '%s' produced by multiple sources (layer '%s')%s"
                                       % (tname, lp.name, where))
                    blob = Blob((), dtype=self.dtype, xp=self.xp)
                    self._blob_dict[tname] = blob
                    blob_need_backward[tname] = False
                tops.append(blob)
                tnames.append(tname)
                available[tname] = blob
                if lp.type == "Input":
                    self.inputs.append(tname)
            try:
                layer.check_arity(len(bottoms), len(tops))
                layer.setup(bottoms, tops)
                layer.reshape(bottoms, tops)
                self._set_loss_weights(layer, tops)
                if len(lp.blobs):
                    self._load_layer_blobs(layer, lp.blobs, "the prototxt")
            except (LayerError, ValueError, MemoryError) as exc:
                # a plugin's own error keeps its type; the engine's (no reshape()) names the line
                if getattr(layer, "plugin_name", None) and getattr(exc, "from_plugin", True):
                    raise self._plugin_error(layer, "setup", exc) from exc
                raise NetError("%s%s" % (_name_layer(layer, exc), where)) from None
            except Exception as exc:
                if getattr(layer, "plugin_name", None):
                    raise self._plugin_error(layer, "setup", exc) from exc
                raise
            log.info("Setting up %s", lp.name)
            for top, weight in zip(tops, layer.loss_weights):
                log.info("Top shape: %s", _shape_string(top.shape))
                if weight:
                    log.info("    with loss weight %s", fmt(weight))
                memory += top.count * self.dtype.itemsize
            log.info("Memory required for data: %d", memory)
            self.bottom_vecs.append(bottoms)
            self.top_vecs.append(tops)
            self.bottom_names.append(bnames)
            self.top_names.append(tnames)
            self.bottom_need_backward.append(bneed)

            specs = layer.layer_param.param   # a layer may add specs (BatchNorm fixes lr 0)
            if len(specs) > len(layer.blobs):
                raise NetError("layer '%s'%s: %d param specs given but the layer has %d parameter blobs"
                               % (lp.name, where, len(specs), len(layer.blobs)))
            layer.param_propagate_down = []
            for pi in range(len(layer.blobs)):
                spec = specs[pi] if pi < len(specs) else caffe_pb2.ParamSpec()
                pneed = spec.lr_mult != 0
                need_backward |= pneed
                layer.param_propagate_down.append(pneed)
            for pi in range(len(layer.blobs)):
                self._append_param(li, pi, specs, where)
            self.layer_need_backward.append(need_backward)
            if need_backward:
                for tname in tnames:
                    blob_need_backward[tname] = True

        self._prune_backward(blob_need_backward)
        self.blob_need_backward = blob_need_backward
        self.outputs = sorted(available)
        for name in self.outputs:
            log.info("This network produces output %s", name)
        log.info("Network initialization done.")
        self._param_dict = collections.OrderedDict(
            (name, layer.blobs) for name, layer in zip(self.layer_names, self._layers) if layer.blobs)
        self.params = self._param_dict
        self._relu_fused = self._fusable_relus()
        # Per layer: its bottoms' and tops' data versions after its last reshape, when that
        # reshape depends on nothing else (a layer with bottoms, not a plugin): forward skips
        # the call while they hold (Caffe reshapes every layer on every forward; on a small
        # net the Python calls cost more than the arithmetic).
        self._reshape_blobs = [list(b) + list(t) if (b and layer.reshape_from_shapes
                                                     and not getattr(layer, "plugin_name", None))
                               else None
                               for layer, b, t in zip(self._layers, self.bottom_vecs, self.top_vecs)]
        self._reshaped = [None] * len(self._layers)

    def _fusable_relus(self):
        """{conv index: relu index} where a ReLU (slope 0) works in place on the top of the
        Convolution just before it: a forward that runs both has the convolution apply it as it
        writes its top, and skips the ReLU's own pass (the blob ends the same)."""
        from .layers.conv import ConvolutionLayer
        from .layers.neuron import ReLU
        fused = {}
        for li in range(len(self._layers) - 1):
            conv, relu = self._layers[li], self._layers[li + 1]
            if type(conv) is not ConvolutionLayer or type(relu) is not ReLU or relu.negative_slope != 0:
                continue
            tops = self.top_vecs[li]
            if (len(tops) == 1 and len(self.bottom_vecs[li + 1]) == 1 and len(self.top_vecs[li + 1]) == 1
                    and self.bottom_vecs[li + 1][0] is tops[0] and self.top_vecs[li + 1][0] is tops[0]
                    and not any(conv.loss_weights) and not any(relu.loss_weights)):
                fused[li] = li + 1
        return fused

    def _set_loss_weights(self, layer, tops):
        weights = list(layer.layer_param.loss_weight)
        if not weights and layer.is_loss:
            weights = [1.0] + [0.0] * (len(tops) - 1)
        if weights and len(weights) != len(tops):
            raise layer.error("loss_weight must be unspecified or given once per top (%d tops, %d weights)"
                              % (len(tops), len(weights)))
        layer.loss_weights = weights or [0.0] * len(tops)
        for w, top in zip(layer.loss_weights, tops):
            if w:
                top.diff[...] = w

    def _append_param(self, li, pi, specs, where):
        layer = self._layers[li]
        spec = specs[pi] if pi < len(specs) else caffe_pb2.ParamSpec()
        pname = spec.name if pi < len(specs) else ""
        idx = len(self._all_params)
        blob = layer.blobs[pi]
        self._all_params.append((li, pi, blob))
        self.param_display_names.append(pname or str(pi))
        if not pname or pname not in self._param_names:
            self._param_owner.append(-1)
            if pname:
                self._param_names[pname] = idx
            self._learnable_index.append(len(self.learnable_params))
            self.learnable_params.append(blob)
            self._has_lr.append(spec.HasField("lr_mult"))
            self._has_decay.append(spec.HasField("decay_mult"))
            self.params_lr.append(spec.lr_mult)
            self.params_weight_decay.append(spec.decay_mult)
            return
        owner = self._param_names[pname]
        self._param_owner.append(owner)
        oli, opi, oblob = self._all_params[owner]
        owner_name = self.layer_names[oli]
        log.info("Sharing parameters '%s' owned by layer '%s', param index %d", pname, owner_name, opi)
        if spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE:
            if oblob.count != blob.count:
                raise NetError("Cannot share param '%s' owned by layer '%s' with layer '%s'%s; count "
                               "mismatch: owner shape %s, sharing shape %s"
                               % (pname, owner_name, layer.name, where, oblob.shape, blob.shape))
        elif oblob.shape != blob.shape:
            raise NetError("Cannot share param '%s' owned by layer '%s' with layer '%s'%s; shape "
                           "mismatch: owner shape %s, sharing shape %s"
                           % (pname, owner_name, layer.name, where, oblob.shape, blob.shape))
        lidx = self._learnable_index[owner]
        self._learnable_index.append(lidx)
        # The layer keeps its own Blob, made to view the owner's memory (Caffe's ShareData /
        # ShareDiff): a plugin that kept self.blobs[i] from setup sees the shared values.
        blob.share_data(oblob)
        blob.share_diff(oblob)
        for has, values, field in ((self._has_lr, self.params_lr, "lr_mult"),
                                   (self._has_decay, self.params_weight_decay, "decay_mult")):
            if spec.HasField(field):
                value = getattr(spec, field)
                if has[lidx] and values[lidx] != value:
                    raise NetError("Shared param '%s' has mismatched %s (layer '%s')%s"
                                   % (pname, field, layer.name, where))
                has[lidx] = True
                values[lidx] = value

    def _prune_backward(self, blob_need_backward):
        under_loss, skip = set(), set()
        for li in range(len(self._layers) - 1, -1, -1):
            layer = self._layers[li]
            contributes = False
            skip_down = True
            for j, tname in enumerate(self.top_names[li]):
                if layer.loss_weights[j] or tname in under_loss:
                    contributes = True
                if tname not in skip:
                    skip_down = False
            if self.layer_need_backward[li] and skip_down:
                self.layer_need_backward[li] = False
                self.bottom_need_backward[li] = [False] * len(self.bottom_need_backward[li])
            if not contributes:
                self.layer_need_backward[li] = False
            log.info("%s %s backward computation.", self.layer_names[li],
                     "needs" if self.layer_need_backward[li] else "does not need")
            for j, bname in enumerate(self.bottom_names[li]):
                if contributes:
                    under_loss.add(bname)
                else:
                    self.bottom_need_backward[li][j] = False
                if not self.bottom_need_backward[li][j]:
                    skip.add(bname)
        if self.force_backward:
            for li, layer in enumerate(self._layers):
                self.layer_need_backward[li] = True
                for j, bname in enumerate(self.bottom_names[li]):
                    need = self.bottom_need_backward[li][j] or layer.allow_force_backward(j)
                    self.bottom_need_backward[li][j] = need
                    blob_need_backward[bname] = blob_need_backward.get(bname, False) or need
                layer.param_propagate_down = [True] * len(layer.blobs)

    # ------------------------------------------------------------- run
    def _layer_index(self, name, default):
        if name is None:
            return default
        try:
            return self.layer_names.index(name)
        except ValueError:
            raise KeyError("no layer named '%s' in net %s" % (name, self.name)) from None

    def forward_from_to(self, start=0, end=None):
        end = len(self._layers) - 1 if end is None else end
        loss = 0.0
        # a hook may look at the convolution's top before its ReLU: no fusing then
        fusing = not (self.before_forward_hooks or self.after_forward_hooks)
        skip = -1
        for li in range(start, end + 1):
            layer, bottom, top = self._layers[li], self.bottom_vecs[li], self.top_vecs[li]
            for hook in self.before_forward_hooks:
                hook(li)
            fuse = fusing and li < end and li in self._relu_fused
            blobs = self._reshape_blobs[li]
            try:
                if blobs is None:
                    layer.reshape(bottom, top)
                elif self._reshaped[li] != [b.data_version for b in blobs]:
                    self._reshaped[li] = None       # stays unset if reshape raises
                    layer.reshape(bottom, top)
                    self._reshaped[li] = [b.data_version for b in blobs]
                if fuse:
                    layer.fused_relu = True
                    try:
                        layer.forward(bottom, top)
                    finally:
                        layer.fused_relu = False
                    skip = li + 1
                elif li != skip:
                    layer.forward(bottom, top)
            except Exception as exc:
                if getattr(layer, "plugin_name", None):
                    raise self._plugin_error(layer, "forward", exc) from exc
                if isinstance(exc, (LayerError, BlobSizeError, MemoryError)):
                    raise NetError("%s%s" % (_name_layer(layer, exc, "forward"),
                                             self._where(layer.name))) from None
                raise
            for w, t in zip(layer.loss_weights, top):
                if w:
                    loss += float((t.data * t.diff).sum())
            for hook in self.after_forward_hooks:
                hook(li)
        return loss

    def backward_from_to(self, start=None, end=0):
        start = len(self._layers) - 1 if start is None else start
        for li in range(start, end - 1, -1):
            for hook in self.before_backward_hooks:
                hook(li)
            if self.layer_need_backward[li]:
                layer = self._layers[li]
                try:
                    layer.backward(self.top_vecs[li], self.bottom_need_backward[li],
                                   self.bottom_vecs[li])
                except Exception as exc:
                    if getattr(layer, "plugin_name", None):
                        raise self._plugin_error(layer, "backward", exc) from exc
                    if isinstance(exc, (BlobSizeError, MemoryError)):
                        raise NetError("%s%s" % (_name_layer(layer, exc, "backward"),
                                                 self._where(layer.name))) from None
                    raise
            for hook in self.after_backward_hooks:
                hook(li)

    def _plugin_error(self, layer, stage, exc):
        from .python_layer import plugin_failure
        return plugin_failure("Python layer '%s' (%s) failed in %s%s: %s: %s"
                              % (layer.name, layer.plugin_name, stage, self._where(layer.name),
                                 type(exc).__name__, exc), exc)

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """Set inputs from ``kwargs`` (reshaping them if needed), run forward.

        Returns {output name: array} for the net outputs (plus ``blobs``).
        """
        self._check_blob_names(list(kwargs) + list(blobs or []), "forward")
        si = self._layer_index(start, 0)
        ei = self._layer_index(end, len(self._layers) - 1)
        old_shapes = {}
        try:
            for name, value in kwargs.items():
                self._set_input(name, value, old_shapes)
            self.last_loss = self.forward_from_to(si, ei)
        except Exception:
            # an input the net cannot take must not stay behind to fail the next run too
            for name, shape in old_shapes.items():
                self._blob_dict[name].reshape(shape)
            raise
        names = list(self.outputs) if end is None else list(self.top_names[ei])
        names += [b for b in (blobs or []) if b not in names]
        return {n: self._blob_dict[n].data for n in names}

    def _set_input(self, name, value, old_shapes):
        blob = self._blob_dict[name]
        what = "forward: input blob '%s' of net %s" % (name, self.name)
        value = self._numbers(value, what, blob.shape)
        shape = tuple(value.shape)
        try:
            if shape != blob.shape:
                old_shapes[name] = blob.shape
                blob.reshape(shape)
            blob.data[...] = self.xp.asarray(value) if self.xp is not np else value
        except BlobSizeError as exc:
            raise NetError("%s: %s" % (what, exc)) from None

    def _numbers(self, value, what, shape):
        """``value`` as an array of real numbers, or NetError naming the blob and its shape
        (NumPy would take None as NaN, complex numbers as their real part, and a string or a
        ragged list with a message that names no blob)."""
        if not (hasattr(value, "dtype") and hasattr(value, "shape")):
            try:
                value = np.asarray(value)
            except (ValueError, TypeError) as exc:
                raise NetError("%s takes an array of shape %s; got a %s that is not one (%s)"
                               % (what, _shape_text(shape), type(value).__name__, exc)) from None
        if np.dtype(value.dtype).kind not in "biuf":
            raise NetError("%s takes real numbers (shape %s); got %s values of shape %s"
                           % (what, _shape_text(shape), value.dtype, _shape_text(value.shape)))
        return value

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """Set top diffs from ``kwargs``, run backward; returns {input: diff} (+ ``diffs``)."""
        self._check_blob_names(list(kwargs) + list(diffs or []), "backward")
        for name, value in kwargs.items():
            blob = self._blob_dict[name]
            what = "backward: the diff given for blob '%s' of net %s" % (name, self.name)
            value = self._numbers(value, what, blob.shape)
            try:
                # a host array goes to a device blob as a copy (CuPy fills only from scalars)
                blob.diff[...] = self.xp.asarray(value) if self.xp is not np else value
            except ValueError as exc:
                raise NetError("%s must fit its shape %s; got shape %s (%s)"
                               % (what, _shape_text(blob.shape), _shape_text(value.shape),
                                  exc)) from None
        si = self._layer_index(start, len(self._layers) - 1)
        ei = self._layer_index(end, 0)
        self.backward_from_to(si, ei)
        names = list(self.inputs) + [d for d in (diffs or []) if d not in self.inputs]
        return {n: self._blob_dict[n].diff for n in names}

    def _check_blob_names(self, names, what):
        for name in names:
            if name not in self._blob_dict:
                raise KeyError("%s: '%s' is not a blob of net %s (inputs: %s; blobs: %s)"
                               % (what, name, self.name, ", ".join(self.inputs) or "none",
                                  ", ".join(self._blob_dict)))

    def set_input_arrays(self, data, labels):
        """Feed the net's first MemoryData layer (pycaffe's Net.set_input_arrays)."""
        for layer in self._layers:
            if layer.type == "MemoryData":
                return layer.set_input_arrays(data, labels)
        raise NetError("set_input_arrays needs a MemoryData layer; net %s has none" % self.name)

    def forward_backward(self):
        loss = self.forward_from_to()
        self.backward_from_to()
        return loss

    def reshape(self):
        self._reshaped = [None] * len(self._layers)
        for layer, bottom, top in zip(self._layers, self.bottom_vecs, self.top_vecs):
            layer.reshape(bottom, top)

    def clear_param_diffs(self):
        """Zero every parameter diff (lazily where no script holds it: see Blob.clear_diff)."""
        for blob in self.learnable_params:
            blob.clear_diff()

    # ------------------------------------------------------------ weights
    def _load_layer_blobs(self, layer, protos, origin):
        if len(protos) != len(layer.blobs):
            raise NetError("Incompatible number of blobs for layer '%s' (type %s): %s has %d, "
                           "the layer has %d" % (layer.name, layer.type, origin, len(protos),
                                                 len(layer.blobs)))
        for j, (proto, blob) in enumerate(zip(protos, layer.blobs)):
            shape = blob_shape(proto)
            if not _shape_equals(blob.shape, proto):
                raise NetError(
                    "Cannot copy param %d weights from layer '%s' (%s); shape mismatch. Source param "
                    "shape is %s; target param shape is %s. To learn this layer's parameters from "
                    "scratch rather than copying from a saved net, rename the layer.%s"
                    % (j, layer.name, origin, "x".join(map(str, shape)) or "(scalar)",
                       "x".join(map(str, blob.shape)) or "(scalar)", _channel_hint(shape, blob.shape)))
            try:
                values = blobproto_to_array(proto).reshape(blob.shape)
                diff = None
                if len(proto.double_diff) or len(proto.diff):  # a snapshot_diff model, as Caffe
                    diff = blobproto_to_array(proto, return_diff=True).reshape(blob.shape)
            except FormatError as exc:
                raise NetError("%s: param %d of layer '%s' (type %s): %s"
                               % (origin, j, layer.name, layer.type, exc)) from None
            if not np.isfinite(values).all():
                # Caffe loads them without a word; every output would be NaN
                bad = int(values.size - np.isfinite(values).sum())
                log.warning("%s: param %d of layer '%s' holds %d NaN or infinite value(s) of %d: "
                            "the file is damaged or was saved from a run that diverged"
                            % (origin, j, layer.name, bad, values.size))
            blob.data[...] = self.xp.asarray(values) if self.xp is not np else values
            if diff is not None:
                blob.set_diff(diff)

    def copy_from(self, source, origin=None, require_match=False):
        """Copy parameters by layer name from a .caffemodel (binary or HDF5) or a NetParameter.

        Layers absent from this net are ignored (as Caffe does, for fine-tuning).
        ``origin``: the file a NetParameter was read from, for the errors.
        A file that matches none of this net's layers that have parameters is
        almost surely the wrong file: a loud warning, or NetError with
        ``require_match`` (the command line's --weights). Returns the number of
        layers whose parameters were copied.
        """
        if isinstance(source, caffe_pb2.NetParameter):
            param, origin = source, origin or "the given NetParameter"
        else:
            path = os.fspath(source)
            if _is_hdf5(path):           # as Caffe's CopyTrainedLayersFrom, by content
                copied, stored = load_hdf5_weights(self, path)
                return self._check_copied(copied, stored, path, require_match)
            param, origin = read_net_binary(path), path
        index = {}
        for i, name in enumerate(self.layer_names):
            index.setdefault(name, i)       # as Caffe: the first layer of a name gets the weights
        copied = 0
        for lp in param.layer:
            li = index.get(lp.name)
            if li is None or not len(lp.blobs) and not self._layers[li].blobs:
                continue
            self._load_layer_blobs(self._layers[li], lp.blobs, origin)
            copied += bool(len(lp.blobs))
        return self._check_copied(copied, [lp.name for lp in param.layer if len(lp.blobs)],
                                  origin, require_match)

    def _check_copied(self, copied, stored, origin, require_match):
        wanted = [name for name, layer in zip(self.layer_names, self._layers) if layer.blobs]
        if wanted and not copied:
            message = ("%s holds weights for none of the layers of net %s: it has %s; the net's "
                       "layers with parameters are %s. Is it the caffemodel of this net?"
                       % (origin, self.name or "(unnamed)", _few(stored) or "no weights at all",
                          _few(wanted)))
            if require_match:
                raise NetError(message)
            log.warning("%s (nothing was copied)", message)
        return copied

    def share_with(self, other):
        """Make this net's parameter values views of ``other``'s, by layer name."""
        if self.xp is not other.xp:
            raise NetError("net '%s' (%s) cannot share weights with net '%s' (%s): build both in one "
                           "mode (protonet.set_mode_cpu/set_mode_gpu before creating them)"
                           % (self.name, self.xp.__name__, other.name, other.xp.__name__))
        index = {name: i for i, name in enumerate(other.layer_names)}
        for name, layer in zip(self.layer_names, self._layers):
            oi = index.get(name)
            if oi is None:
                continue
            src = other._layers[oi].blobs
            if len(src) != len(layer.blobs):
                raise NetError("Incompatible number of blobs for layer '%s'" % name)
            for j, (b, s) in enumerate(zip(layer.blobs, src)):
                if b.shape != s.shape:
                    raise NetError("Cannot share param %d of layer '%s'; shape mismatch: %s vs %s"
                                   % (j, name, s.shape, b.shape))
                b.share_data(s)        # values only, as Caffe's ShareTrainedLayersWith

    def to_proto_bytes(self, write_diff=False):
        """The net (layers with their blobs) serialized as a NetParameter."""
        head = caffe_pb2.NetParameter()
        head.name = self.name
        out = [head.SerializeToString()]
        for layer in self._layers:
            lp = caffe_pb2.LayerParameter()
            lp.CopyFrom(layer.layer_param)
            del lp.blobs[:]
            payload = lp.SerializeToString() + b"".join(
                wire_field(7, blobproto_bytes(b.data, b.engine_diff() if write_diff else None))
                for b in layer.blobs)
            out.append(wire_field(100, payload))
        return b"".join(out)

    def save(self, path, write_diff=False):
        """Write a .caffemodel (binary NetParameter) that Caffe can load."""
        write_bytes_atomic(path, self.to_proto_bytes(write_diff))


def _few(names, limit=8):
    names = list(names)
    return ", ".join(names[:limit]) + (", ... (%d in all)" % len(names) if len(names) > limit else "")


def _shape_text(shape):
    return "x".join(map(str, shape)) if shape else "() (a scalar)"


def _name_layer(layer, exc, stage=None):
    """``exc`` as a message that names ``layer``: LayerErrors do already; a blob too big to
    hold (BlobSizeError) or NumPy's MemoryError does not know whose blob it was."""
    if isinstance(exc, LayerError):
        return str(exc)
    if isinstance(exc, MemoryError) and not isinstance(exc, BlobSizeError):
        what = "out of memory%s (%s)" % (" in " + stage if stage else "",
                                         str(exc) or type(exc).__name__)
    else:
        what = str(exc)
    if ("layer '%s'" % layer.name) in what:
        return what
    return "layer '%s' (type %s): %s" % (layer.name, layer.type, what)


def _shape_string(shape):
    """Caffe's Blob::shape_string: "10 3 227 227 (1545870)"; a scalar is "(1)"."""
    return "".join("%d " % d for d in shape) + "(%d)" % int(np.prod(shape, dtype=np.int64))


def _is_hdf5(path):
    if path.endswith(".h5"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False       # read_net_binary names the missing file


def _channel_hint(source, target):
    """Extra advice when only the input channels of a conv weight differ (RGB vs gray)."""
    if len(source) == 4 and len(target) == 4 and source[0] == target[0] \
            and source[2:] == tuple(target[2:]) and {source[1], target[1]} == {1, 3}:
        return (" The weights expect %d input channels but the net gets %d: for ImageNet-style "
                "3-channel weights, build the dataset with 3 channels (e.g. `protonet data "
                "sunnybrook --channels rgb`)." % (source[1], target[1]))
    return ""


def _shape_equals(shape, proto):
    if proto.HasField("num") or proto.HasField("channels") or proto.HasField("height") \
            or proto.HasField("width"):
        if len(shape) > 4:
            return False
        legacy = (1,) * (4 - len(shape)) + tuple(shape)
        return legacy == (proto.num, proto.channels, proto.height, proto.width)
    return tuple(shape) == tuple(proto.shape.dim)
