"""pycaffe's ``Net`` on protonet: what ``python/caffe/pycaffe.py`` adds to the C++ net.

:class:`Net` is :class:`protonet.Net` plus the pycaffe names it lacks
(``_layer_names``, ``_blob_names``, ``blob_loss_weights``, ``layer_dict``,
``top_names``/``bottom_names`` by layer name, ``forward_all``,
``forward_backward_all``, ``set_input_arrays``...). Nets a solver builds are
given this class too (see :func:`as_pycaffe_net`), as pycaffe patches its one
Net class so that ``solver.net`` has the same interface.
"""
import collections
import functools
import itertools
import weakref

import numpy as np

import protonet
from protonet import solver as _solver
from protonet.layer import known_types, layer_class


class _NamesByLayer(collections.abc.Sequence):
    """pycaffe's ``{layer name: [blob names]}`` over protonet's per-layer lists.

    ``names['conv1']``, ``keys()``, ``values()``, ``items()``, ``get()`` and
    ``'conv1' in names`` read like pycaffe's OrderedDict. Integer indexing,
    ``append`` and plain iteration keep the engine's list of per-layer lists
    (protonet and its solver iterate ``net.top_names`` that way), so
    ``for x in net.top_names`` gives lists: use ``.keys()`` for the names.
    """

    def __init__(self, net, lists):
        self._net = net
        self._lists = lists

    def __getitem__(self, key):
        if isinstance(key, str):
            try:
                return self._lists[self._net.layer_names.index(key)]
            except ValueError:
                raise KeyError(key) from None
        return self._lists[key]

    def __len__(self):
        return len(self._lists)

    def __contains__(self, item):
        if isinstance(item, str):
            return item in self._net.layer_names[:len(self._lists)]
        return item in self._lists

    def append(self, names):
        self._lists.append(names)

    def keys(self):
        return list(self._net.layer_names[:len(self._lists)])

    def values(self):
        return list(self._lists)

    def items(self):
        return list(zip(self.keys(), self._lists))

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def __eq__(self, other):
        if isinstance(other, _NamesByLayer):
            other = other._lists
        if isinstance(other, collections.abc.Mapping):
            return collections.OrderedDict(self.items()) == other
        return self._lists == other

    def __repr__(self):
        return repr(collections.OrderedDict(self.items()))


# -- a device net as pycaffe shows it: host arrays, synced as Caffe's SyncedMemory ---------
#
# In Caffe, ``blob.data`` in Python is always the CPU copy: reading it copies
# from the GPU if the GPU copy is newer, and marks the CPU copy as the newest,
# so the next GPU use copies it back. Scripts rely on that
# (``net.blobs['data'].data[...] = image``, ``out['prob'].argmax()``), and
# CuPy arrays refuse both. So a caffe.Net built in GPU mode shows host
# mirrors: one NumPy array per device buffer and field, fetched when touched
# after the engine ran, and pushed back before the net runs again. Blobs that
# view another's memory (split and reshape tops, a test net's shared weights)
# show the owner's mirror, as they share one SyncedMemory in Caffe.

_STALE, _TOUCHED = 0, 1
_mirrors = weakref.WeakKeyDictionary()     # owning Blob -> {"data"/"diff": [host array, state]}


def _owner(blob, field):
    """The blob whose device buffer ``blob.<field>`` views (through share_data/share_diff)."""
    attr = "_data_src" if field == "data" else "_diff_src"
    owner = blob
    while getattr(owner, attr, None) is not None and getattr(owner, attr).count == owner.count:
        owner = getattr(owner, attr)
    return owner


def _host_mirror(blob, field):
    """The host array that stands for ``blob.<field>``, current with the device."""
    owner = _owner(blob, field)
    fields = _mirrors.setdefault(owner, {})
    device = getattr(owner, field)
    entry = fields.get(field)
    if entry is None or entry[0].shape != device.shape or entry[0].dtype != device.dtype:
        entry = fields[field] = [np.empty(device.shape, device.dtype), _STALE]
    if entry[1] == _STALE:
        entry[0][...] = protonet.backend.to_host(device)
    entry[1] = _TOUCHED     # the script may write it: the device gets it back before the next run
    return entry[0] if owner is blob else entry[0].reshape(blob.shape)


def _push(owner, field):
    """Send ``owner.<field>``'s mirror to the device if it was touched; it is stale afterwards."""
    entry = _mirrors.get(owner, {}).get(field)
    if entry is None:
        return
    if entry[1] == _TOUCHED:
        device = getattr(owner, field)
        if device.shape == entry[0].shape:     # a reshape since then drops the edit, as Caffe's
            device[...] = owner.xp.asarray(entry[0])
    entry[1] = _STALE


def sync_to_device(net):
    """Push the host mirrors of ``net``'s buffers touched since it last ran; they are then stale."""
    if net.xp is np or not _mirrors:
        return
    seen = set()
    blobs = itertools.chain(net._blob_dict.values(), (b for layer in net._layers for b in layer.blobs))
    for blob in blobs:
        for field in ("data", "diff"):
            owner = _owner(blob, field)
            if (id(owner), field) not in seen:
                seen.add((id(owner), field))
                _push(owner, field)


class HostBlob:
    """A device blob as pycaffe shows it: ``data`` and ``diff`` are host (NumPy) arrays.

    Everything else (``shape``, ``count``, ``num``, ``reshape``...) is the
    engine blob's.
    """

    __slots__ = ("blob",)

    def __init__(self, blob):
        self.blob = blob

    @property
    def data(self):
        return _host_mirror(self.blob, "data")

    @property
    def diff(self):
        return _host_mirror(self.blob, "diff")

    def reshape(self, *shape):
        for field in ("data", "diff"):      # an edit made before the reshape is kept, as in Caffe
            _push(_owner(self.blob, field), field)
        self.blob.reshape(*shape)

    def __getattr__(self, name):
        return getattr(self.blob, name)

    def __repr__(self):
        return "<HostBlob of %r>" % (self.blob,)


class HostLayer:
    """A device net's layer as pycaffe shows it: ``blobs`` are :class:`HostBlob`.

    Other attributes are the layer's (a Python layer's are its plugin's).
    """

    __slots__ = ("layer",)

    def __init__(self, layer):
        self.layer = layer

    @property
    def blobs(self):
        return [HostBlob(b) for b in self.layer.blobs]

    def __getattr__(self, name):
        return getattr(getattr(self.layer, "plugin", self.layer), name)

    def __repr__(self):
        return "<HostLayer of %r>" % (self.layer,)


def _syncs_first(method, net_of=lambda obj: obj):
    """Run the engine ``method`` after the host mirrors' edits reach the device (of ``net_of(self)``)."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        sync_to_device(net_of(self))
        return method(self, *args, **kwargs)
    return call


def _engine_view(attr, wrap, doc):
    """A property: the engine's ``attr`` on the CPU, ``wrap(engine value)`` on a device."""
    def get(self):
        value = self.__dict__[attr]
        return value if self.xp is np else wrap(value)

    def set(self, value):
        if value is not self.__dict__.get(attr):
            raise AttributeError("this attribute of a net cannot be replaced")
    return property(get, set, doc=doc)


def _names_property(attr):
    # Stored in the instance dict under the engine's own name, so a net built as
    # protonet.Net and re-classed (as_pycaffe_net) reads the same lists.
    def get(self):
        return _NamesByLayer(self, self.__dict__[attr])

    def set(self, value):
        self.__dict__[attr] = value._lists if isinstance(value, _NamesByLayer) else value
    return property(get, set, doc="{layer name: [%s blob names]}, in layer order"
                    % attr.split("_")[0])


class Net(protonet.Net):
    """A Caffe net with pycaffe's interface.

    ``Net(prototxt, phase)``, ``Net(prototxt, weights, phase)``,
    ``Net(prototxt, phase, weights=..., stages=[...], level=0)``. ``blobs`` and
    ``params`` are ordered by name; each blob's ``data``/``diff`` is the array
    itself (NumPy on CPU), so writes through views, ``.flat`` and fancy
    indexing reach the net.
    """

    def __init__(self, network_file, *args, **kwargs):
        # pycaffe's keyword name for the prototxt; the rest is protonet.Net's.
        super().__init__(network_file, *args, **kwargs)

    # -- blobs, params, layers: the engine's on the CPU, host mirrors of a device net ---
    blobs = _engine_view("_blob_dict", lambda d: collections.OrderedDict(
        (n, HostBlob(b)) for n, b in d.items()), "{blob name: blob}, in the net's order")
    params = _engine_view("_param_dict", lambda d: collections.OrderedDict(
        (n, [HostBlob(b) for b in blobs]) for n, blobs in d.items()),
        "{layer name: [weight, bias...]} for the layers with parameters")
    layers = _engine_view("_layers", lambda ls: [HostLayer(layer) for layer in ls], "the layers, in order")

    # every way into the engine first pushes what a script wrote into the mirrors
    forward_from_to = _syncs_first(protonet.Net.forward_from_to)
    backward_from_to = _syncs_first(protonet.Net.backward_from_to)
    forward_backward = _syncs_first(protonet.Net.forward_backward)
    reshape = _syncs_first(protonet.Net.reshape)
    clear_param_diffs = _syncs_first(protonet.Net.clear_param_diffs)
    copy_from = _syncs_first(protonet.Net.copy_from)
    share_with = _syncs_first(protonet.Net.share_with)
    to_proto_bytes = _syncs_first(protonet.Net.to_proto_bytes)
    save = _syncs_first(protonet.Net.save)

    @_syncs_first
    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """pycaffe's forward: {output (and ``blobs``) name: NumPy array}."""
        outs = protonet.Net.forward(self, blobs=blobs, start=start, end=end, **kwargs)
        if self.xp is np:
            return outs
        return {n: _host_mirror(self._blob_dict[n], "data") for n in outs}

    @_syncs_first
    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """pycaffe's backward: {input (and ``diffs``) name: NumPy array}."""
        outs = protonet.Net.backward(self, diffs=diffs, start=start, end=end, **kwargs)
        if self.xp is np:
            return outs
        return {n: _host_mirror(self._blob_dict[n], "diff") for n in outs}

    top_names = _names_property("top_names")
    bottom_names = _names_property("bottom_names")

    # -- pycaffe's underscore names -------------------------------------------
    @property
    def _layer_names(self):
        return list(self.layer_names)

    @property
    def _blob_names(self):
        return list(self.blobs.keys())

    @property
    def _blobs(self):
        return list(self.blobs.values())

    @property
    def _inputs(self):
        names = self._blob_names
        return [names.index(n) for n in self.inputs]

    @property
    def _outputs(self):
        names = self._blob_names
        return [names.index(n) for n in self.outputs]

    @property
    def _blob_loss_weights(self):
        """Loss weight of each blob in ``blobs`` order (0 for blobs that are no loss)."""
        weights = dict.fromkeys(self.blobs, 0.0)
        for layer, names in zip(self.layers, self.__dict__["top_names"]):
            for name, w in zip(names, layer.loss_weights or [0.0] * len(names)):
                weights[name] = float(w)          # the last layer writing a blob sets it, as Caffe
        return list(weights.values())

    @property
    def blob_loss_weights(self):
        """{blob name: loss weight}, in ``blobs`` order."""
        return collections.OrderedDict(zip(self._blob_names, self._blob_loss_weights))

    @property
    def layer_dict(self):
        """{layer name: layer}, in layer order."""
        return collections.OrderedDict(zip(self.layer_names, self.layers))

    def _forward(self, start, end):
        return self.forward_from_to(start, end)

    def _backward(self, start, end):
        self.backward_from_to(start, end)

    # -- batched passes ------------------------------------------------------
    def forward_all(self, blobs=None, **kwargs):
        """Run forward over inputs of any length, one batch at a time.

        ``kwargs``: {input name: array of N items}. Returns {blob name: array of
        N items} for the outputs and ``blobs`` (copies); the last batch is
        padded with zeros and the padding dropped from the results. Without
        inputs, one forward pass (data layers feed the net).
        """
        kwargs = {k: np.asarray(v) for k, v in kwargs.items()}
        all_outs = {out: [] for out in set(self.outputs + list(blobs or []))}
        batches = self._batch(kwargs) if kwargs else [{}]
        for batch in batches:
            outs = self.forward(blobs=blobs, **batch)
            for out, values in outs.items():
                all_outs[out].extend(protonet.backend.to_host(values).copy())
        return self._unpad({k: np.asarray(v) for k, v in all_outs.items()}, kwargs)

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """Forward and backward in batches; ``kwargs`` holds inputs (for forward) and
        output diffs (for backward). Returns ({blob: data}, {blob: diff}), as
        :meth:`forward_all` does for one direction."""
        kwargs = {k: np.asarray(v) for k, v in kwargs.items()}
        all_outs = {out: [] for out in set(self.outputs + list(blobs or []))}
        all_diffs = {diff: [] for diff in set(self.inputs + list(diffs or []))}
        forward_batches = self._batch({k: kwargs[k] for k in self.inputs if k in kwargs})
        backward_batches = self._batch({k: kwargs[k] for k in self.outputs if k in kwargs})
        for fb, bb in itertools.zip_longest(forward_batches, backward_batches, fillvalue={}):
            batch_blobs = self.forward(blobs=blobs, **fb)
            batch_diffs = self.backward(diffs=diffs, **bb)
            for out, values in batch_blobs.items():
                all_outs[out].extend(protonet.backend.to_host(values).copy())
            for diff, values in batch_diffs.items():
                all_diffs[diff].extend(protonet.backend.to_host(values).copy())
        return (self._unpad({k: np.asarray(v) for k, v in all_outs.items()}, kwargs),
                self._unpad({k: np.asarray(v) for k, v in all_diffs.items()}, kwargs))

    @staticmethod
    def _unpad(results, kwargs):
        if not kwargs:
            return results
        num = len(next(iter(kwargs.values())))
        return {k: v[:num] for k, v in results.items()}

    def _batch(self, blobs):
        """Split {name: array of N items} into batches of the net's batch size;
        the last one is padded with zeros."""
        if not blobs:
            return
        first = next(iter(blobs))
        num = len(blobs[first])
        batch_size = self.blobs[first].num if first in self.blobs \
            else next(iter(self.blobs.values())).num
        remainder = num % batch_size
        for b in range(num // batch_size):
            i = b * batch_size
            yield {name: blobs[name][i:i + batch_size] for name in blobs}
        if remainder > 0:
            padded = {}
            for name in blobs:
                padding = np.zeros((batch_size - remainder,) + blobs[name].shape[1:],
                                   dtype=blobs[name].dtype)
                padded[name] = np.concatenate([blobs[name][-remainder:], padding])
            yield padded

    # -- MemoryData ----------------------------------------------------------
    def set_input_arrays(self, data, labels):
        """Give the MemoryData layer (the net's first layer) the arrays it serves batches from.

        ``data``: N x C x H x W, ``labels``: N values (or N x 1 x 1 x 1); N a
        multiple of the batch size. C-contiguous arrays of the net's dtype
        are used in place, as in Caffe: later edits to them show through.
        """
        labels = np.asarray(labels)
        if labels.ndim == 1:
            labels = np.ascontiguousarray(labels[:, np.newaxis, np.newaxis, np.newaxis])
        return self._set_input_arrays(data, labels)

    def _set_input_arrays(self, data, labels):
        layer = self.layers[0] if self.layers else None
        if layer is None or layer.type != "MemoryData":
            raise RuntimeError("set_input_arrays may only be called if the first layer is a "
                               "MemoryData layer (net '%s' starts with %s)"
                               % (self.name, "no layer" if layer is None
                                  else "'%s' of type %s" % (layer.name, layer.type)))
        layer.set_input_arrays(data, labels)


def as_pycaffe_net(net):
    """Give a net built as :class:`protonet.Net` (by a solver) pycaffe's interface.

    :class:`Net` adds only methods and properties over the same state, so
    re-classing the instance is safe; nets of other subclasses are left as they are.
    """
    if net is not None and type(net) is protonet.Net:
        net.__class__ = Net
    return net


def layer_type_list():
    """The registered layer types, by their Caffe names (V1 enum aliases left out), and Python."""
    names = [n for n in known_types() if getattr(layer_class(n), "type", None) == n]
    return sorted(set(names) | {"Python"})


# -- solvers --------------------------------------------------------------------

def _pycaffe_solver(base):
    """``base`` (a protonet solver class) whose nets have pycaffe's interface."""

    def __init__(self, *args, **kwargs):
        base.__init__(self, *args, **kwargs)
        _adopt_nets(self)

    def share_weights(self, net):
        """Make ``net``'s parameters the train net's (pycaffe's ``Solver.share_weights``)."""
        net.share_with(self.net)

    def synced(name):
        # what a callback or a script wrote into the train net's mirrors counts for the
        # update and is in the snapshot; a restore's values are not overwritten by old edits
        return _syncs_first(getattr(base, name), lambda solver: solver.net)

    doc = ("%s\n\n    pycaffe's ``caffe.%s(solver_prototxt)``: ``net`` and ``test_nets`` are "
           ":class:`caffe.Net` objects." % (base.__doc__ or base.__name__, base.__name__))
    return type(base.__name__, (base,), {"__init__": __init__, "share_weights": share_weights,
                                         "apply_update": synced("apply_update"),
                                         "snapshot": synced("snapshot"), "restore": synced("restore"),
                                         "__doc__": doc, "__module__": __name__})


def _adopt_nets(solver):
    as_pycaffe_net(solver.net)
    for test_net in solver.test_nets:
        as_pycaffe_net(test_net)


SGDSolver = _pycaffe_solver(_solver.SGDSolver)
NesterovSolver = _pycaffe_solver(_solver.NesterovSolver)
AdaGradSolver = _pycaffe_solver(_solver.AdaGradSolver)
RMSPropSolver = _pycaffe_solver(_solver.RMSPropSolver)
AdaDeltaSolver = _pycaffe_solver(_solver.AdaDeltaSolver)
AdamSolver = _pycaffe_solver(_solver.AdamSolver)
_BY_BASE = {cls.__mro__[1]: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver,
                                             RMSPropSolver, AdaDeltaSolver, AdamSolver)}


def get_solver(filename):
    """The solver a solver.prototxt asks for by its ``type`` (pycaffe's ``caffe.get_solver``)."""
    solver = _solver.get_solver(filename)
    cls = _BY_BASE.get(type(solver))
    if cls is not None:
        solver.__class__ = cls          # only adds share_weights; same state
    _adopt_nets(solver)
    return solver
