"""Weights in files: Caffe's HDF5 weight layout and copying weights into a net.

``save_hdf5_weights`` / ``load_hdf5_weights`` read and write a
``.caffemodel.h5`` (``/data/<layer>/<i>``, + ``/diff``); ``copy_weights``
takes a .caffemodel or .caffemodel.h5. The staging helpers write a file
beside its final name and rename it into place (snapshots use them too).
h5py is optional: only these paths import it.
"""
import os

import numpy as np

from . import backend
from .io import FormatError, SolverError, discard_staged
from .log import get_logger

__all__ = ["save_hdf5_weights", "load_hdf5_weights", "copy_weights"]

log = get_logger()


def host_f32(array):
    return np.asarray(backend.to_host(array), dtype=np.float32)



def open_h5py(purpose):
    try:
        import h5py
    except ImportError as exc:
        raise SolverError("%s needs h5py (pip install h5py), or use snapshot_format: BINARYPROTO "
                          "(%s)" % (purpose, exc)) from None
    return h5py


def stage_hdf5(path, fill, purpose="HDF5 snapshots"):
    """Write an HDF5 file beside ``path`` with ``fill(h5file)``; return its hidden name
    (``os.replace`` puts it in place, as :func:`protonet.io.stage_bytes`)."""
    h5py = open_h5py(purpose)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, ".%s.%d.tmp" % (os.path.basename(path), os.getpid()))
    try:
        with h5py.File(tmp, "w") as f:
            fill(f)
    except BaseException:
        discard_staged(tmp)
        raise
    return tmp


def commit_staged(staged):
    """Put staged files in place: [(staged name, path)]. Each rename is atomic."""
    try:
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            discard_staged(tmp)
        raise


def fill_hdf5_weights(f, net, write_diff):
    groups = [f.create_group("data")] + ([f.create_group("diff")] if write_diff else [])
    owners = iter(net._param_owner)
    for name, layer in zip(net.layer_names, net._layers):
        lgroups = [g.create_group(name) for g in groups]
        for j, blob in enumerate(layer.blobs):
            if next(owners) < 0:      # Caffe saves the values of params that own themselves...
                lgroups[0].create_dataset(str(j), data=host_f32(blob.data))
            if write_diff:            # ...and every diff, shared or not
                lgroups[1].create_dataset(str(j), data=host_f32(blob.engine_diff()))


def _first_param_index(net, li):
    """Where layer ``li``'s params start in the net's list of all params (_param_owner's)."""
    return sum(len(layer.blobs) for layer in net._layers[:li])


def save_hdf5_weights(net, path, write_diff=False):
    """A ``.caffemodel.h5`` in Caffe's layout: ``/data/<layer>/<i>`` (+ ``/diff``)."""
    commit_staged([(stage_hdf5(path, lambda f: fill_hdf5_weights(f, net, write_diff)), path)])


def load_hdf5_weights(net, path):
    """Copy a ``.caffemodel.h5`` into ``net`` by layer name (Caffe's CopyTrainedLayersFromHDF5).

    Returns (number of layers copied, names of the file's layers that hold weights)."""
    h5py = open_h5py("reading %s" % path)
    if not os.path.exists(path):
        raise FormatError("%s: no such file" % path)
    index = {name: i for i, name in enumerate(net.layer_names)}
    xp = net.xp
    with h5py.File(path, "r") as f:
        if "data" not in f:
            raise FormatError("%s: not a Caffe HDF5 model (no /data group)" % path)
        copied, stored = 0, [name for name in f["data"] if len(f["data"][name])]
        for lname in f["data"]:
            li = index.get(lname)
            if li is None:
                log.info("Ignoring source layer %s", lname)
                continue
            group = f["data"][lname]
            layer = net._layers[li]
            if len(group) > len(layer.blobs):
                raise FormatError("%s: Incompatible number of blobs for layer %s (%d in the file, "
                                  "%d in the net)" % (path, lname, len(group), len(layer.blobs)))
            first = _first_param_index(net, li)
            for j, blob in enumerate(layer.blobs):
                if str(j) not in group:
                    if net._param_owner[first + j] >= 0:
                        continue        # a shared param: its owner carries the values
                    raise FormatError("%s: Incompatible number of blobs for layer %s" % (path, lname))
                values = np.asarray(group[str(j)], dtype=np.float32)
                if values.shape != blob.shape:
                    raise FormatError("%s: Cannot copy param %d weights from layer '%s'; shape "
                                      "mismatch. Source param shape is %s; target param shape is %s"
                                      % (path, j, lname, values.shape, blob.shape))
                blob.data[...] = xp.asarray(values) if xp is not np else values
            copied += bool(len(group))
    return copied, stored


def copy_weights(net, path):
    """Copy a .caffemodel or .caffemodel.h5 into ``net`` by layer name."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FormatError("%s: no such file (working directory %s)" % (path, os.getcwd()))
    net.copy_from(path)
