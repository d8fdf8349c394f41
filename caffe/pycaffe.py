"""pycaffe's ``Net`` on protonet: what ``python/caffe/pycaffe.py`` adds to the C++ net.

:class:`Net` is :class:`protonet.Net` plus the pycaffe names it lacks
(``_layer_names``, ``_blob_names``, ``blob_loss_weights``, ``layer_dict``,
``top_names``/``bottom_names`` by layer name, ``_top_ids``/``_bottom_ids``,
``forward_all``, ``forward_backward_all``, ``set_input_arrays``, the
``before_forward``... callbacks, ``save_hdf5``/``load_hdf5``...). Nets a solver builds are
given this class too (see :func:`as_pycaffe_net`), as pycaffe patches its one
Net class so that ``solver.net`` has the same interface. Also here: the
solvers, :class:`Timer` and :class:`NCCL` (what ``_caffe`` exports besides).
"""
import collections
import functools
import itertools
import logging
import time
import weakref

import numpy as np

import protonet
from protonet import solver as _solver
from protonet.layer import known_types, layer_class


class _NamesByLayer(collections.abc.Mapping):
    """pycaffe's ``OrderedDict`` {layer name: [blob names]} over protonet's per-layer lists.

    Iteration, ``keys()``/``values()``/``items()``, ``len``, ``in``,
    ``reversed`` and ``names['conv1']`` behave as pycaffe's OrderedDict (a
    repeated layer name keeps its first place and its last list, as building
    that dict does). The engine also indexes it by layer position
    (``names[3]``) and appends to it while building the net: those two stay.
    """

    def __init__(self, net, lists):
        self._net = net
        self._lists = lists

    def _index(self):
        # {layer name: position}: the last layer of a name wins, in first-seen order
        return dict(zip(self._net.layer_names, range(len(self._lists))))

    def __getitem__(self, key):
        if isinstance(key, str):
            try:
                return self._lists[self._index()[key]]
            except KeyError:
                raise KeyError(key) from None
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            return self._lists[key]          # the engine's positional access
        raise KeyError(key)

    def __iter__(self):
        return iter(self._index())

    def __reversed__(self):
        return reversed(list(self._index()))

    def __len__(self):
        return len(self._index())

    def __contains__(self, key):
        return isinstance(key, str) and key in self._index()

    def append(self, names):
        self._lists.append(names)

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
_touches = [0]                             # mirrors handed out so far (lets callbacks skip a sync)


def _owner(blob, field):
    """The blob whose device buffer ``blob.<field>`` views (through share_data/share_diff)."""
    attr = "_data_src" if field == "data" else "_diff_src"
    owner = blob
    while getattr(owner, attr, None) is not None and getattr(owner, attr).count == owner.count:
        owner = getattr(owner, attr)
    return owner


def _device_array(owner, field):
    # the mirror is a copy, not the device memory: reading the diff for it hands
    # nothing out, so the engine may keep deferring the device blob's clears
    return owner.data if field == "data" else owner.engine_diff()


def _host_mirror(blob, field):
    """The host array that stands for ``blob.<field>``, current with the device."""
    owner = _owner(blob, field)
    fields = _mirrors.setdefault(owner, {})
    device = _device_array(owner, field)
    entry = fields.get(field)
    if entry is None or entry[0].shape != device.shape or entry[0].dtype != device.dtype:
        entry = fields[field] = [np.empty(device.shape, device.dtype), _STALE]
    if entry[1] == _STALE:
        entry[0][...] = protonet.backend.to_host(device)
    entry[1] = _TOUCHED     # the script may write it: the device gets it back before the next run
    _touches[0] += 1
    return entry[0] if owner is blob else entry[0].reshape(blob.shape)


def _push(owner, field):
    """Send ``owner.<field>``'s mirror to the device if it was touched; it is stale afterwards."""
    entry = _mirrors.get(owner, {}).get(field)
    if entry is None:
        return
    if entry[1] == _TOUCHED:
        device = _device_array(owner, field)
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

    Other attributes are the layer's; a Python layer's are its plugin's, read and set
    (``net.layers[0].set_roidb(...)``, ``net.layers[0].mode = ...``), and it passes
    ``isinstance`` for the plugin's class, as the plugin object itself does in Caffe.
    What the net keeps on the layer (loss weights, the backward flags) is read from the net's.
    """

    __slots__ = ("layer",)
    _NET_KEEPS = frozenset(("loss_weights", "param_propagate_down"))

    def __init__(self, layer):
        object.__setattr__(self, "layer", layer)

    def _target(self, name=None):
        if name in self._NET_KEEPS:
            return self.layer
        return getattr(self.layer, "plugin", self.layer)

    @property
    def blobs(self):
        return [HostBlob(b) for b in self.layer.blobs]

    @property
    def __class__(self):
        return type(self._target())

    def __getattr__(self, name):
        return getattr(self._target(name), name)

    def __setattr__(self, name, value):
        setattr(self._target(name), name, value)

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
        """pycaffe's forward: {name: NumPy array} for the outputs (or the ``end`` layer's tops)
        and ``blobs``."""
        names = self._returned(end, self.outputs, "top_names", blobs)
        protonet.Net.forward(self, blobs=blobs, start=start, end=end, **kwargs)
        return {n: self._field(n, "data") for n in names}

    @_syncs_first
    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """pycaffe's backward: {name: NumPy diff} for the inputs (or the ``end`` layer's
        bottoms) and ``diffs``."""
        names = self._returned(end, self.inputs, "bottom_names", diffs)
        protonet.Net.backward(self, diffs=diffs, start=start, end=end, **kwargs)
        return {n: self._field(n, "diff") for n in names}

    def _returned(self, end, default, by_layer, extra):
        """The names pycaffe returns: ``default``, or the ``end`` layer's tops/bottoms, then
        ``extra``; checked before the pass runs."""
        if end is None:
            names = list(default)
        else:
            names = list(self.__dict__[by_layer][self._layer_index(end, None)])
        for name in extra or []:
            if name not in self._blob_dict:
                raise KeyError("'%s' is not a blob of net %s" % (name, self.name))
            if name not in names:
                names.append(name)
        return names

    def _field(self, name, field):
        blob = self._blob_dict[name]
        return getattr(blob, field) if self.xp is np else _host_mirror(blob, field)

    # -- Caffe's Net callbacks: func(layer index) around each layer's pass ----------------
    def before_forward(self, func):
        """Call ``func(i)`` before layer ``i`` runs forward (pycaffe 1.0's ``Net.before_forward``)."""
        self.before_forward_hooks.append(self._callback(func, "before_forward"))

    def after_forward(self, func):
        """Call ``func(i)`` after layer ``i`` ran forward."""
        self.after_forward_hooks.append(self._callback(func, "after_forward"))

    def before_backward(self, func):
        """Call ``func(i)`` before layer ``i``'s backward (also for layers that need none, as Caffe)."""
        self.before_backward_hooks.append(self._callback(func, "before_backward"))

    def after_backward(self, func):
        """Call ``func(i)`` after layer ``i``'s backward."""
        self.after_backward_hooks.append(self._callback(func, "after_backward"))

    def _callback(self, func, what):
        if not callable(func):
            raise TypeError("Net.%s needs a callable taking the layer index, not %r" % (what, func))
        if self.xp is np:
            return func
        net_ref = weakref.ref(self)        # the engine's hook list must not keep the net alive

        def run(layer_index):
            # Between layers the host mirrors are stale (sync_to_device ran before the pass or
            # after the last callback that touched one), so a read here fetches the current
            # device values; what the callback read or wrote goes back before the next layer,
            # as Caffe's SyncedMemory does for a callback touching cpu_data.
            touches = _touches[0]
            func(layer_index)
            net = net_ref()
            if net is not None and _touches[0] != touches:
                sync_to_device(net)
        return run

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

    def _bottom_ids(self, i):
        """Indices into ``_blob_names`` of layer ``i``'s bottoms."""
        return self._blob_ids(self.__dict__["bottom_names"], i)

    def _top_ids(self, i):
        """Indices into ``_blob_names`` of layer ``i``'s tops."""
        return self._blob_ids(self.__dict__["top_names"], i)

    def _blob_ids(self, lists, i):
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool) or not 0 <= i < len(lists):
            raise IndexError("layer index %r out of range: net %s has %d layers"
                             % (i, self.name, len(lists)))
        index = {name: k for k, name in enumerate(self._blob_dict)}
        return [index[name] for name in lists[i]]

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

    def save_hdf5(self, filename):
        """Write the weights as a ``.caffemodel.h5`` (Caffe's ``Net::ToHDF5``, no diffs)."""
        sync_to_device(self)
        _solver.save_hdf5_weights(self, filename)

    def load_hdf5(self, filename):
        """Copy weights by layer name from a ``.caffemodel.h5`` (Caffe's CopyTrainedLayersFromHDF5)."""
        sync_to_device(self)
        _solver.load_hdf5_weights(self, filename)

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
        from protonet import comm, parallel
        if comm.solver_count() > 1:       # caffe.set_solver_count: root-only logs until NCCL
            self.parallel = parallel.Unlinked(comm.solver_rank(), comm.solver_count())

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
    from protonet import comm, parallel
    if comm.solver_count() > 1:
        solver.parallel = parallel.Unlinked(comm.solver_rank(), comm.solver_count())
    return solver


# -- Timer and NCCL (from _caffe in pycaffe) ------------------------------------

class Timer:
    """pycaffe's ``caffe.Timer``: ``start()``, ``stop()``, elapsed ``ms`` (and ``seconds``).

    In GPU mode (at ``start``) it times with CUDA events on the current stream
    and ``stop`` waits for the device, as Caffe's Timer, so queued kernels
    count; on the CPU it reads a wall clock. Caffe's CPU timer gives whole
    milliseconds; this one keeps the fraction. Reading ``ms`` while running
    stops the timer, as in Caffe.
    """

    def __init__(self):
        self._running = False
        self._has_run = False
        self._xp = None              # the device module the running period is timed on, or None
        self._start = self._stop = None

    def start(self):
        if self._running:
            return
        xp = protonet.backend.xp()
        if xp is np:
            self._xp, self._start = None, time.perf_counter()
        else:
            self._xp, self._start = xp, xp.cuda.Event()
            self._start.record()
        self._running = self._has_run = True

    def stop(self):
        if not self._running:
            return
        if self._xp is None:
            self._stop = time.perf_counter()
        else:
            self._stop = self._xp.cuda.Event()
            self._stop.record()
            self._stop.synchronize()
        self._running = False

    @property
    def ms(self):
        """Milliseconds between the last ``start`` and ``stop`` (0, with a warning, if never started)."""
        if not self._has_run:
            logging.getLogger(protonet.log.LOGGER_NAME).warning(
                "Timer has never been run before reading time.")
            return 0.0
        if self._running:
            self.stop()
        if self._xp is None:
            return (self._stop - self._start) * 1e3
        return float(self._xp.cuda.get_elapsed_time(self._start, self._stop))

    @property
    def seconds(self):
        return self.ms / 1e3


class NCCL:
    """pycaffe's ``caffe.NCCL(solver, uid)``: the solvers of several processes train as one.

    As in Caffe's ``python/train.py``: every process sets
    ``caffe.set_solver_count`` / ``set_solver_rank`` (and the GPU), builds
    its solver, then ``nccl = caffe.NCCL(solver, uid)``, ``nccl.bcast()``
    (rank 0's weights to all), ``solver.add_callback(nccl)`` (the gradients
    are summed over the ranks and scaled by 1/N before each update) and, for
    ``layer_wise_reduce``, ``solver.net.after_backward(nccl)``.

    The engine behind it: NCCL through CuPy in GPU mode, when ``uid`` came
    from :meth:`new_uid` on a machine with NCCL; otherwise MPI (mpi4py), for
    scripts started by ``mpirun`` on the CPU, whose ranks must match
    ``solver_rank`` / ``solver_count``. With one solver it does nothing.
    Every rank must pass the same NCCL uid: train.py makes it once in the
    parent before starting the ranks (under mpirun with GPUs, broadcast rank
    0's, e.g. ``MPI.COMM_WORLD.bcast(uid)``).
    Only rank 0 logs iterations, tests and snapshots once this is made.
    """

    def __init__(self, solver, uid):
        from protonet import backend, comm
        from protonet.parallel import DataParallel
        count, rank = comm.solver_count(), comm.solver_rank()
        if (backend.mode() == "gpu" and isinstance(uid, (bytes, bytearray))
                and uid != _MPI_UID and comm.nccl_available()):
            link = comm.NCCLComm(bytes(uid), count, rank)
        elif count == 1:
            link = comm.LocalComm()
        else:
            link = comm.MPIComm()
            if (link.rank, link.count) != (rank, count):
                raise comm.CommError(
                    "caffe.NCCL over MPI: solver rank %d of %d (caffe.set_solver_rank / "
                    "set_solver_count) but this is MPI rank %d of %d; start the script with "
                    "mpirun -np %d and set them from MPI" % (rank, count, link.rank, link.count,
                                                            count))
        if count > 1:
            link.announce()
        self.solver = solver
        self._strategy = DataParallel(link, drive="callbacks")
        solver.parallel = self._strategy

    @staticmethod
    def new_uid():
        """An NCCL unique id (bytes) where NCCL is available, else a token that picks MPI."""
        from protonet import comm
        if comm.nccl_available():
            return comm.new_nccl_uid()
        return _MPI_UID

    def bcast(self):
        """Give every rank rank 0's weights (Caffe's ``NCCL::Broadcast``)."""
        self._strategy.broadcast_params(self.solver.net)

    # the solver callback (solver.add_callback(nccl))
    def on_start(self):
        pass

    def on_gradients_ready(self):
        self._strategy.finish_reduction(self.solver.net)

    # the Net callback (solver.net.after_backward(nccl)): start this layer's reduction now
    def __call__(self, layer_index):
        self._strategy.on_layer_backward(self.solver.net, layer_index)


_MPI_UID = b"protonet-mpi"
