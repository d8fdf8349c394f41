"""``type: "Python"`` layers: user classes written against pycaffe's ``caffe.Layer``.

As in Caffe, the user's object *is* the layer: it gets ``param_str`` and
``phase`` before ``setup``, then ``setup``/``reshape``/``forward``/``backward``
are called like any built-in's. Modules are found on ``sys.path``, in the
working directory, the prototxt's folder, paths added with
:func:`add_search_path` (``--python-path``) and the project's ``layers/``.
"""
import functools
import importlib
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

from .backend import to_host
from .blob import Blob
from .layer import BlobList, Layer, LayerError, register_factory

_extra_paths = []
# None: copy to the host only on a device; True/False force it (tests exercise the GPU path's copies).
force_host_copies = None


def add_search_path(path):
    path = os.path.abspath(os.fspath(path))
    if path not in _extra_paths:
        _extra_paths.append(path)


def shipped_layers_dir():
    """The top-level ``layers/`` folder of plugins we ship (Dice, DiceLoss)."""
    source_tree = Path(__file__).resolve().parents[1] / "layers"
    if source_tree.is_dir():
        return str(source_tree)
    try:   # a non-editable install carries them as the package protonet_layers
        import protonet_layers
        return os.path.dirname(protonet_layers.__file__)
    except ImportError:
        return str(source_tree)


def register_module_file(path, alias=None):
    """Make the Python file ``path`` importable under its own name (and ``alias``)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise PythonLayerError("Python layer file %s does not exist" % path)
    add_search_path(os.path.dirname(path))
    name = os.path.splitext(os.path.basename(path))[0]
    if alias and alias != name:
        spec = importlib.util.spec_from_file_location(alias, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[alias] = module
        spec.loader.exec_module(module)
    return name


class PythonLayerError(LayerError):
    from_plugin = False          # True: raised by the plugin's own code (see plugin_failure)


_failure_types = {}


def plugin_failure(message, exc):
    """The error for a plugin that raised ``exc``: a PythonLayerError (with the layer, its
    line and the stage in ``message``) that is also an instance of ``exc``'s own type, so
    ``except RuntimeError`` around ``caffe.Net(...)`` catches a plugin's RuntimeError as it
    does in Caffe, where the plugin's exception comes through unchanged."""
    kind = type(exc)
    cls = _failure_types.get(kind)
    if cls is None:
        try:
            # the message as given (KeyError, say, would print its repr)
            cls = type("PythonLayerError[%s]" % kind.__name__, (PythonLayerError, kind),
                       {"from_plugin": True, "__str__": Exception.__str__})
        except TypeError:          # a type that cannot be mixed in (its own instance layout)
            cls = PythonLayerError
        _failure_types[kind] = cls
    try:
        return cls(message)
    except Exception:              # a type whose constructor wants other arguments
        return PythonLayerError(message)


def _search_dirs(extra):
    dirs = [os.getcwd()] + [os.path.abspath(d) for d in extra] + list(_extra_paths)
    dirs.append(shipped_layers_dir())
    out = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def load_class(module_name, class_name, layer_name="?", search_dirs=()):
    dirs = _search_dirs(search_dirs)
    added = [d for d in dirs if d not in sys.path]
    sys.path[:0] = added
    # `import caffe` inside plugins must find protonet's drop-in module.
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.split(".")[0] != exc.name.split(".")[0]:
                # found, but the plugin itself imports something missing
                raise PythonLayerError(
                    "layer '%s' (type Python): module '%s' was found but importing it failed: "
                    "it imports '%s', which is not installed" % (layer_name, module_name, exc.name)
                ) from exc
            raise PythonLayerError(
                "layer '%s' (type Python): cannot import module '%s'; searched sys.path and %s"
                % (layer_name, module_name, ", ".join(dirs))) from None
        except Exception as exc:          # a SyntaxError or anything raised at import time
            raise PythonLayerError("layer '%s' (type Python): importing module '%s' failed: %s: %s"
                                   % (layer_name, module_name, type(exc).__name__, exc)) from exc
    finally:
        for d in added:
            try:
                sys.path.remove(d)
            except ValueError:
                pass
    cls = getattr(module, class_name, None)
    if cls is None:
        raise PythonLayerError("layer '%s' (type Python): module '%s' (%s) has no class '%s'"
                               % (layer_name, module_name, getattr(module, "__file__", "?"),
                                  class_name))
    return cls


def create_python_layer(layer_param, phase, dtype=np.float32, xp=None, search_dirs=(),
                        host_copies=None):
    """The plugin object for a ``type: "Python"`` layer.

    On the GPU (``xp`` is not NumPy) plugins see host NumPy blobs, as in
    Caffe: they are wrapped in :class:`HostCopyLayer`, which copies around
    each call. A plugin class that sets ``device_arrays = True`` gets the
    device blobs directly. ``host_copies`` forces either choice (tests).
    """
    pp = layer_param.python_param
    if not pp.module or not pp.layer:
        raise PythonLayerError("layer '%s' (type Python): python_param needs both 'module' and "
                               "'layer'" % layer_param.name)
    cls = load_class(pp.module, pp.layer, layer_param.name, search_dirs)
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise PythonLayerError("layer '%s' (type Python): %s.%s must subclass caffe.Layer"
                               % (layer_param.name, pp.module, pp.layer))
    if host_copies is None:
        host_copies = force_host_copies
    if host_copies is None:
        host_copies = xp is not None and xp is not np and not getattr(cls, "device_arrays", False)
    obj = cls.__new__(cls)
    xp_used = np if host_copies else xp
    Layer.__init__(obj, layer_param, phase=phase, dtype=dtype, xp=xp_used)
    if cls.__init__ is not Layer.__init__:
        # Caffe constructs the plugin with its LayerParameter, so its own __init__ runs; a
        # super().__init__(param) in it must not undo the phase, dtype and arrays set here
        try:
            cls.__init__(obj, layer_param)
        except Exception as exc:
            raise plugin_failure("Python layer '%s' (%s.%s) failed in __init__: %s: %s"
                                 % (layer_param.name, pp.module, pp.layer, type(exc).__name__,
                                    exc), exc) from exc
        obj.phase, obj.dtype, obj.xp = phase, np.dtype(dtype), xp_used
    obj.param_str = pp.param_str
    obj.plugin_name = "%s.%s" % (pp.module, pp.layer)
    obj.type = "Python"          # pycaffe's net.layers[i].type for a plugin
    if type(obj).reshape is Layer.reshape:
        # refused only when called, after setup() as in Caffe: setup's own error comes first
        obj.reshape = functools.partial(_no_reshape, obj)
    if host_copies:
        return HostCopyLayer(obj, layer_param, phase, dtype, xp)
    return obj


def _no_reshape(plugin, bottom, top):
    raise PythonLayerError("layer '%s' (type Python): %s defines no reshape(); Caffe calls it after "
                           "setup() and before every forward" % (plugin.name, plugin.plugin_name))


class HostCopyLayer(Layer):
    """Runs a plugin on host (NumPy) mirrors of its blobs when the net lives on a device.

    Bottom data are copied in before ``reshape``/``forward``, top data out after
    ``forward``; for ``backward`` top diffs go in and the requested bottom diffs
    come out. The plugin's own parameter blobs are host mirrors too: the layer's
    ``blobs`` (which the net loads, shares and the solver updates) are device
    blobs after ``setup``, copied to the plugin's before ``forward`` and
    ``backward`` and back after them (data after ``forward``, diffs after
    ``backward``), as Caffe syncs them.
    """

    reshape_from_shapes = False      # the plugin's reshape is user code: run it every time

    def __init__(self, plugin, layer_param, phase, dtype, xp):
        Layer.__init__(self, layer_param, phase=phase, dtype=dtype, xp=xp)
        self.plugin = plugin
        self.plugin_name = plugin.plugin_name
        self.type = "Python"
        self.blobs = plugin.blobs
        self._bottom, self._top = [], []

    @staticmethod
    def _mirror(blobs, hosts, dtype):
        while len(hosts) < len(blobs):
            hosts.append(Blob((), dtype=dtype, xp=np))
        for blob, host in zip(blobs, hosts):
            if host.shape != blob.shape:
                host.reshape(blob.shape)
        return hosts[:len(blobs)]

    def _bottoms_in(self, bottom):
        hosts = self._mirror(bottom, self._bottom, self.dtype)
        for blob, host in zip(bottom, hosts):
            host.data[...] = to_host(blob.data)
        return hosts

    def _top_hosts(self, bottom, top, bottom_hosts, fill=None):
        """The plugin's tops: an in-place top is its bottom's host blob, as in Caffe (one
        Blob); the others are mirrors holding the device top's current ``fill`` ("data"
        or "diff"), since a plugin may read a top before it writes it."""
        mirrors = self._mirror(top, self._top, self.dtype)
        hosts = []
        for blob, mirror in zip(top, mirrors):
            same = [h for b, h in zip(bottom, bottom_hosts) if b is blob]
            if same:
                hosts.append(same[0])
                continue
            if fill is not None:
                getattr(mirror, fill)[...] = to_host(getattr(blob, fill))
            hosts.append(mirror)
        return hosts

    def _tops_out(self, top, hosts, what="data"):
        for blob, host in zip(top, hosts):
            if blob.shape != host.shape:
                blob.reshape(host.shape)
            getattr(blob, what)[...] = self.xp.asarray(getattr(host, what))

    def setup(self, bottom, top):
        hosts = self._bottoms_in(bottom)
        tops = self._top_hosts(bottom, top, hosts)
        self.plugin.setup(hosts, tops)
        self._tops_out(top, tops)           # what setup wrote is there before any forward
        if self.xp is not np:
            # the solver's history and every other parameter live on the device
            self.blobs = BlobList(self)
            self._add_param_mirrors()

    def _add_param_mirrors(self):
        """Device blobs for plugin parameters that have none yet (added in setup or, as
        Caffe allows, in the first reshape, before the net reads the layer's blobs)."""
        if self.blobs is self.plugin.blobs:
            return
        for host in self.plugin.blobs[len(self.blobs):]:
            self.blobs.add_blob(*host.shape).data[...] = self.xp.asarray(host.data)

    def _params_in(self, diffs=False):
        if self.blobs is not self.plugin.blobs:
            for blob, host in zip(self.blobs, self.plugin.blobs):
                host.data[...] = to_host(blob.data)
                if diffs:
                    # the plugin adds to it, as Caffe's layers do
                    host.diff[...] = to_host(blob.engine_diff())

    def _params_out(self, what="data"):
        if self.blobs is not self.plugin.blobs:
            for blob, host in zip(self.blobs, self.plugin.blobs):
                device = blob.data if what == "data" else blob.engine_diff()
                device[...] = self.xp.asarray(getattr(host, what))

    def reshape(self, bottom, top):
        hosts = self._bottoms_in(bottom)
        tops = self._top_hosts(bottom, top, hosts)
        self.plugin.reshape(hosts, tops)
        self._add_param_mirrors()
        for blob, host in zip(top, tops):
            blob.reshape(host.shape)

    def forward(self, bottom, top):
        hosts = self._bottoms_in(bottom)
        tops = self._top_hosts(bottom, top, hosts, fill="data")
        self._params_in()
        self.plugin.forward(hosts, tops)
        self._params_out()              # a plugin may update its blobs (running statistics)
        self._tops_out(top, tops)

    def backward(self, top, propagate_down, bottom):
        hosts = self._bottoms_in(bottom)
        for blob, host in zip(bottom, hosts):
            host.diff[...] = to_host(blob.diff)      # an in-place top's diff is this one
        tops = self._top_hosts(bottom, top, hosts, fill="diff")
        for blob, host in zip(top, tops):
            if host.shape != blob.shape:
                host.reshape(blob.shape)
        self.plugin.param_propagate_down = self.param_propagate_down
        self._params_in(diffs=True)
        self.plugin.backward(tops, propagate_down, hosts)
        self._params_out("diff")
        for blob, host, down in zip(bottom, hosts, propagate_down):
            if down:
                blob.diff[...] = self.xp.asarray(host.diff)

    def allow_force_backward(self, bottom_index):
        return self.plugin.allow_force_backward(bottom_index)


register_factory("Python", create_python_layer)
