"""Caffe's file formats: prototxt (text) and binary protobuf files.

Nets and solvers are upgraded from old formats on load, as Caffe does.
Binary writes are atomic (temporary file + rename), so an interrupted
snapshot never leaves a torn file where a good one was.
"""
import os
import re
import tempfile

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from .proto import caffe_pb2


class FormatError(ValueError):
    """A file could not be read as the expected Caffe message."""


class SolverError(ValueError):
    """The solver description is inconsistent; the message names the file and field.

    Defined here, below the solver and the weight I/O that both raise it;
    :mod:`protonet.solver` re-exports it."""


def _read(path, mode):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FormatError("%s: no such file" % path) from None
    except IsADirectoryError:
        raise FormatError("%s: is a directory, expected a file" % path) from None
    if mode != "rb" and b"\0" in data[:4096]:
        # text never holds NUL bytes: a .caffemodel / .solverstate where a prototxt belongs
        raise FormatError("%s: a binary file, not a text prototxt (is it a .caffemodel or "
                          ".solverstate? weights go to --weights / weights=, states to "
                          "--snapshot)" % path)
    return data if mode == "rb" else decode_text(data)


def decode_text(data):
    """A prototxt's bytes as text. Caffe's parser takes bytes as they are, so a file that is
    not UTF-8 (a comment saved as GBK or Latin-1, say) must still load: such bytes are read
    one character each (Latin-1), which keeps every line and column where it was."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def parse_text(text, message, source="<string>"):
    """Parse protobuf text format into ``message``; errors name source:line:col."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        line, col = exc.GetLine(), exc.GetColumn()
        detail = str(exc)
        # protobuf prefixes "line:col : "; we put the file in front instead.
        if line is not None and detail.startswith("%s:%s" % (line, col)):
            detail = detail.split(":", 2)[-1].strip(" :")
        where = "%s:%s:%s" % (source, line, col) if line is not None else source
        raise FormatError("%s: cannot parse as %s: %s"
                          % (where, message.DESCRIPTOR.name, detail)) from None
    return message


def read_text(path, message):
    return parse_text(_read(path, "r"), message, source=str(path))


# -- non-finite numbers in settings ----------------------------------------
# Text format takes `nan`, `inf` and numbers too big for a float (1e39 becomes
# inf): a learning rate, a momentum or an LRN beta like that trains on garbage
# without a word. Every float field of a NetParameter / SolverParameter is
# checked when the file is read, except blob values (weights may be anything).
_SKIP_MESSAGES = ("caffe.BlobProto",)
_FLOAT_TYPES = None


def _non_finite_fields(message, path=""):
    """[(dotted path, field name, value, layer name or None)] of the non-finite floats."""
    global _FLOAT_TYPES
    from google.protobuf.descriptor import FieldDescriptor as F
    if _FLOAT_TYPES is None:
        _FLOAT_TYPES = (F.TYPE_FLOAT, F.TYPE_DOUBLE)
    out = []
    if message.DESCRIPTOR.full_name in _SKIP_MESSAGES:
        return out
    for field, value in message.ListFields():
        where = path + ("." if path else "") + field.name
        repeated = field.is_repeated if hasattr(field, "is_repeated") \
            else field.label == F.LABEL_REPEATED
        if field.type in _FLOAT_TYPES:
            values = list(value) if repeated else [value]
            for i, v in enumerate(values):
                if not np.isfinite(np.float32(v) if field.type == F.TYPE_FLOAT else v):
                    out.append(("%s[%d]" % (where, i) if repeated else where, field.name, v))
        elif field.type == F.TYPE_MESSAGE:
            for i, sub in enumerate(value if repeated else [value]):
                out.extend(_non_finite_fields(sub, "%s[%d]" % (where, i) if repeated else where))
    return out


_NUMBER = r"([-+]?(?:inf(?:inity)?|nan|(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)f?)"


def _line_of(text, field, value):
    """The line of ``field: <a value that is not finite>`` in ``text``, or None."""
    for m in re.finditer(r"(?<![\w.])%s\s*:?\s*%s(?![\w.])" % (re.escape(field), _NUMBER), text,
                         re.IGNORECASE):
        token = m.group(1)
        if token[-1] in "fF" and not token.lower().endswith("inf"):
            token = token[:-1]          # text format's float suffix: 1e39f
        try:
            number = float(token)
        except ValueError:
            continue
        with np.errstate(over="ignore"):
            if not np.isfinite(np.float32(number)) or not np.isfinite(number):
                return text.count("\n", 0, m.start()) + 1
    return None


def check_finite(message, source, text=None):
    """Refuse (FormatError) a NaN or infinite number in any setting of ``message``.

    The error names ``source``, the line (when ``text`` is the file's text),
    the field's path and, inside a net, the layer.
    """
    bad = _non_finite_fields(message)
    if not bad:
        return message
    path, field, value = bad[0]
    line = _line_of(text, field, value) if text is not None else None
    layer = ""
    if path.startswith("layer[") and isinstance(message, caffe_pb2.NetParameter):
        index = int(path[len("layer["):path.index("]")])
        lp = message.layer[index]
        layer = " of layer '%s' (type %s)" % (lp.name, lp.type)
        path = path[path.index("]") + 2:]
    where = "%s:%d" % (source, line) if line else str(source)
    more = " (and %d more)" % (len(bad) - 1) if len(bad) > 1 else ""
    raise FormatError("%s: %s%s is %s; %s settings must be finite numbers%s"
                      % (where, path, layer, _show_float(value), message.DESCRIPTOR.name, more))


def _show_float(value):
    if np.isnan(value):
        return "NaN"
    if np.isinf(value):
        return "infinite" if value > 0 else "-infinite"
    return "%r, which does not fit a 32-bit float (it reads as infinite)" % value


def read_binary(path, message):
    data = _read(path, "rb")
    if not data:
        # protobuf parses 0 bytes as an empty message: a weights file that would load nothing
        raise FormatError("%s: empty file (0 bytes), not a binary %s (an interrupted copy or "
                          "download?)" % (path, message.DESCRIPTOR.name))
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise FormatError("%s: not a binary %s, or one that is cut short or damaged (%s)"
                          % (path, message.DESCRIPTOR.name, exc)) from None
    return message


def write_binary(path, message):
    """Serialize ``message`` to ``path`` atomically."""
    write_bytes_atomic(path, message.SerializeToString())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def stage_bytes(path, payload):
    """Write ``payload`` to a new hidden file beside ``path``, synced to disk; return its name.

    ``os.replace(staged, path)`` then puts it in place in one step, and
    :func:`discard_staged` drops it: a reader of ``path`` never sees half a file.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        # the pid in the name lets a later run tell a killed writer's leftover from a live one
        fd, tmp = tempfile.mkstemp(prefix=".%s.%d." % (os.path.basename(path), os.getpid()),
                                   dir=folder)
    except OSError as exc:        # name the file asked for, not the temporary one
        raise OSError(exc.errno, "cannot write %s (%s)" % (path, exc.strerror)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file owner-only; give it the mode open() would have
        os.chmod(tmp, 0o666 & ~_umask())
    except BaseException:
        discard_staged(tmp)
        raise
    return tmp


# stage_bytes' names (mkstemp's 8 random characters) and hdf5_weights.stage_hdf5's (.tmp)
_STAGED = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.(?:[a-z0-9_]{8}|tmp)$")


# what a solver writes beside ``snapshot_prefix``: snapshots, the curve, the folder probe
_SNAPSHOT_TARGET = re.compile(r"^(?:_iter_\d+\.(?:caffemodel|solverstate)(?:\.h5)?|_curve\.png"
                              r"|_probe)$")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:             # exists, owned by someone else
        return True
    return True


def remove_stale_staged(prefix):
    """Remove the staged files (see :func:`stage_bytes`) of the snapshots, curve and probe of
    ``prefix`` (a snapshot_prefix) that a killed process left behind; returns their paths.
    Only hidden files of exactly that pattern, whose writer is no longer running, go."""
    folder = os.path.dirname(os.fspath(prefix)) or "."
    base = os.path.basename(os.fspath(prefix))
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    removed = []
    for name in names:
        m = _STAGED.match(name)
        if not m or not _SNAPSHOT_TARGET.match(m.group("target")[len(base):]) \
                or not m.group("target").startswith(base) \
                or int(m.group("pid")) == os.getpid() or _alive(int(m.group("pid"))):
            continue
        path = os.path.join(folder, name)
        try:
            if os.path.isfile(path) and not os.path.islink(path):
                os.unlink(path)
                removed.append(path)
        except OSError:
            pass
    return removed


def discard_staged(tmp):
    try:
        os.unlink(tmp)
    except OSError:
        pass                      # already renamed into place, or never made


def write_bytes_atomic(path, payload):
    tmp = stage_bytes(path, payload)
    try:
        os.replace(tmp, path)
    except BaseException:
        discard_staged(tmp)
        raise


def write_text(path, message):
    write_bytes_atomic(path, text_format.MessageToString(message).encode())


# -- nets and solvers ------------------------------------------------------

def _upgrade_net(param, source):
    from .upgrade import upgrade_net
    upgrade_net(param, source=str(source))
    return param


def read_net(path):
    """A NetParameter from a prototxt, upgraded to the current format."""
    text = _read(path, "r")
    param = check_finite(parse_text(text, caffe_pb2.NetParameter(), str(path)), path, text)
    return _upgrade_net(param, path)


def parse_net(text, source="<string>"):
    param = check_finite(parse_text(text, caffe_pb2.NetParameter(), source), source, text)
    return _upgrade_net(param, source)


def read_net_binary(path):
    """A NetParameter from a .caffemodel (V1/V0 models are upgraded)."""
    return _upgrade_net(read_binary(path, caffe_pb2.NetParameter()), path)


def read_solver(path):
    from .upgrade import upgrade_solver
    text = _read(path, "r")
    param = check_finite(parse_text(text, caffe_pb2.SolverParameter(), str(path)), path, text)
    upgrade_solver(param, source=str(path))
    return param


# -- blobs -----------------------------------------------------------------

def blob_shape(proto):
    """Shape of a BlobProto: ``shape.dim``, else the legacy 4-d num/channels/height/width."""
    if proto.HasField("num") or proto.HasField("channels") or proto.HasField("height") \
            or proto.HasField("width"):
        return (proto.num, proto.channels, proto.height, proto.width)
    return tuple(int(d) for d in proto.shape.dim)


def blobproto_to_array(proto, return_diff=False):
    shape = blob_shape(proto)
    if return_diff:
        values = proto.double_diff if len(proto.double_diff) else proto.diff
    else:
        values = proto.double_data if len(proto.double_data) else proto.data
    arr = np.asarray(values, dtype=np.float64 if (len(proto.double_data) and not return_diff)
                     else np.float32)
    count = int(np.prod(shape)) if shape else 1
    if arr.size != count:
        raise FormatError("BlobProto holds %d values but its shape %s needs %d"
                          % (arr.size, shape, count))
    return arr.reshape(shape)


def array_to_blobproto(arr, diff=None):
    proto = caffe_pb2.BlobProto()
    arr = np.asarray(arr)
    proto.shape.dim.extend(int(d) for d in arr.shape)
    proto.data.extend(arr.astype(np.float32).ravel().tolist())
    if diff is not None:
        proto.diff.extend(np.asarray(diff, np.float32).ravel().tolist())
    return proto


# -- fast binary writing ---------------------------------------------------
# Big blobs go straight from the array's bytes into the wire format (packed
# float field) instead of through protobuf's per-element repeated fields.

def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def wire_field(number, payload):
    """A length-delimited protobuf field: tag, length, bytes."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def blobproto_bytes(data, diff=None):
    """Serialized BlobProto (shape = 7, packed float data = 5, diff = 6) for an array."""
    from . import backend
    host = np.asarray(backend.to_host(data), dtype="<f4")
    out = b""
    if host.ndim:
        # Caffe writes no shape at all for a 0-axis blob (e.g. a shared PReLU slope)
        shape = caffe_pb2.BlobShape()
        shape.dim.extend(int(d) for d in host.shape)
        out = wire_field(7, shape.SerializeToString())
    out += wire_field(5, np.ascontiguousarray(host.reshape(-1)).tobytes())
    if diff is not None:
        flat = np.asarray(backend.to_host(diff), dtype="<f4").reshape(-1)
        out += wire_field(6, np.ascontiguousarray(flat).tobytes())
    return out


def read_blobproto(path):
    """A .binaryproto file (e.g. a mean file) as a float32 array."""
    return blobproto_to_array(read_binary(path, caffe_pb2.BlobProto())).astype(np.float32)


def write_blobproto(path, arr):
    write_binary(path, array_to_blobproto(arr))
