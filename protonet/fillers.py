"""Weight fillers (FillerParameter), with Caffe's fan-in/fan-out rules.

fan_in = count / shape[0] and fan_out = count / shape[1] (for conv weights
(out, in, kh, kw) that is in*kh*kw and out*kh*kw), exactly as Caffe computes
them. Values are drawn on the host and copied to the blob's device.
"""
import numpy as np

from . import backend
from .rng import get_rng


class FillerError(ValueError):
    pass


def _fans(shape):
    count = int(np.prod(shape)) if len(shape) else 1
    if len(shape) < 1:
        return count, count
    fan_in = count // shape[0] if shape[0] else 0
    fan_out = count // shape[1] if len(shape) > 1 and shape[1] else count
    return fan_in, fan_out


def _scale_n(param, shape, T):
    """Caffe's n for xavier/msra, in the net's real type T."""
    fan_in, fan_out = _fans(shape)
    # VarianceNorm: FAN_IN = 0, FAN_OUT = 1, AVERAGE = 2
    if param.variance_norm == 1:
        return T(fan_out)
    if param.variance_norm == 2:
        return T(fan_in + fan_out) / T(2)
    return T(fan_in)


def fill_array(param, shape, dtype=np.float32):
    """A host array of ``shape`` filled as ``param`` (a FillerParameter) says.

    Random fillers draw from protonet.rng's main stream exactly as Caffe's do
    (values in C order, computed in the blob's real type), so a seeded run
    gets Caffe's values.
    """
    shape = tuple(int(s) for s in shape)
    count = int(np.prod(shape)) if shape else 1
    # Caffe fills Dtype blobs; other dtypes get float32 draws
    T = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    rng = get_rng()
    kind = param.type
    if kind == "constant":
        out = np.full(shape, param.value, dtype)
    elif kind == "uniform":
        out = rng.uniform(count, param.min, param.max, T)
    elif kind == "gaussian":
        out = rng.gaussian(count, param.mean, param.std, T)
        if param.sparse >= 0:
            # Keep each weight with probability sparse / num_outputs (shape[0]);
            # a dropped negative weight becomes -0.0, as Caffe's data[i] *= mask[i].
            if len(shape) < 1:
                raise FillerError("sparse gaussian filler needs a blob with at least 1 axis, got %s"
                                  % (shape,))
            keep = rng.bernoulli(count, T(param.sparse) / T(shape[0]), T)
            out *= keep.astype(T)
    elif kind == "positive_unitball":
        out = rng.uniform(count, 0, 1, T)
        rows = shape[0] if shape else 1
        flat = out.reshape(rows, -1)
        # each row over its sum, summed in order in T as Caffe does
        flat /= np.cumsum(flat, axis=1, dtype=T)[:, -1:]
    elif kind == "xavier":
        bound = np.sqrt(T(3) / _scale_n(param, shape, T))
        out = rng.uniform(count, -bound, bound, T)
    elif kind == "msra":
        std = np.sqrt(T(2) / _scale_n(param, shape, T))
        out = rng.gaussian(count, 0, std, T)
    elif kind == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise FillerError("bilinear filler needs a 4-axis blob with square kernels, got %s" % (shape,))
        k = shape[3]
        f = np.ceil(k / 2.0)
        # Caffe centres the tent at (k - 1) / (2f), in units of f.
        c = (k - 1) / (2.0 * f)
        idx = np.arange(k)
        w1 = 1 - np.abs(idx / f - c)
        kernel = w1[:, None] * w1[None, :]
        out = np.broadcast_to(kernel, shape)
    else:
        raise FillerError("unknown filler type '%s' (known: constant, uniform, gaussian, "
                          "positive_unitball, xavier, msra, bilinear)" % kind)
    return np.ascontiguousarray(out.reshape(shape), dtype=dtype)


# Big random fills go a block at a time straight into the blob: one draw for
# CaffeNet's fc6 would hold 302 MB of float64 and a 151 MB float32 copy beside
# the blob (the peak RSS of a forward-only run). Generator draws in blocks give
# the same values as one draw.
FILL_BLOCK = 1 << 20


def _sampler(param, shape, T):
    """``draw(n)``: the next n values of ``param``'s distribution in type T, or None.

    Only fillers whose values are drawn one after another qualify: the main
    stream continues across blocks, so the blocks are exactly one draw's values.
    """
    rng = get_rng()
    kind = param.type
    if kind == "uniform":
        return lambda n: rng.uniform(n, param.min, param.max, T)
    if kind == "gaussian" and param.sparse < 0:
        return lambda n: rng.gaussian(n, param.mean, param.std, T)
    if kind == "xavier":
        bound = np.sqrt(T(3) / _scale_n(param, shape, T))
        return lambda n: rng.uniform(n, -bound, bound, T)
    if kind == "msra":
        std = np.sqrt(T(2) / _scale_n(param, shape, T))
        return lambda n: rng.gaussian(n, 0, std, T)
    return None


def fill(blob, param):
    """Fill ``blob.data`` in place."""
    count = blob.count
    T = np.float64 if np.dtype(blob.dtype) == np.float64 else np.float32
    draw = _sampler(param, blob.shape, T) if count > FILL_BLOCK else None
    if draw is not None:
        flat = blob.data.reshape(-1)
        device = backend.is_device_array(flat)
        for lo in range(0, count, FILL_BLOCK):
            values = draw(min(FILL_BLOCK, count - lo)).astype(blob.dtype)
            flat[lo:lo + values.size] = blob.xp.asarray(values) if device else values
        return
    values = fill_array(param, blob.shape, blob.dtype)
    if backend.is_device_array(blob.data):
        blob.data[...] = blob.xp.asarray(values)
    else:
        blob.data[...] = values
