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


def _scale_n(param, shape):
    fan_in, fan_out = _fans(shape)
    # VarianceNorm: FAN_IN = 0, FAN_OUT = 1, AVERAGE = 2
    if param.variance_norm == 1:
        return float(fan_out)
    if param.variance_norm == 2:
        return (fan_in + fan_out) / 2.0
    return float(fan_in)


def fill_array(param, shape, dtype=np.float32):
    """A host array of ``shape`` filled as ``param`` (a FillerParameter) says."""
    shape = tuple(int(s) for s in shape)
    rng = get_rng()
    kind = param.type
    if kind == "constant":
        out = np.full(shape, param.value, dtype)
    elif kind == "uniform":
        out = rng.uniform(param.min, param.max, shape)
    elif kind == "gaussian":
        out = rng.normal(param.mean, param.std, shape)
        if param.sparse >= 0:
            # Keep each weight with probability sparse / num_outputs (shape[0]).
            if len(shape) < 2:
                raise FillerError("sparse gaussian filler needs a blob with at least 2 axes, got %s" % (shape,))
            keep = rng.random(shape) < (param.sparse / float(shape[0]))
            out = out * keep
    elif kind == "positive_unitball":
        out = rng.uniform(0.0, 1.0, shape)
        rows = shape[0] if shape else 1
        flat = out.reshape(rows, -1)
        flat /= flat.sum(axis=1, keepdims=True)
    elif kind == "xavier":
        n = _scale_n(param, shape)
        bound = np.sqrt(3.0 / n)
        out = rng.uniform(-bound, bound, shape)
    elif kind == "msra":
        n = _scale_n(param, shape)
        out = rng.normal(0.0, np.sqrt(2.0 / n), shape)
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
    return np.ascontiguousarray(out, dtype=dtype)


# Big random fills go a block at a time straight into the blob: one draw for
# CaffeNet's fc6 would hold 302 MB of float64 and a 151 MB float32 copy beside
# the blob (the peak RSS of a forward-only run). Generator draws in blocks give
# the same values as one draw.
FILL_BLOCK = 1 << 20


def _sampler(param, shape):
    """``draw(n)``: the next n values of ``param``'s i.i.d. distribution, or None."""
    rng = get_rng()
    kind = param.type
    if kind == "uniform":
        return lambda n: rng.uniform(param.min, param.max, n)
    if kind == "gaussian" and param.sparse < 0:
        return lambda n: rng.normal(param.mean, param.std, n)
    if kind == "xavier":
        bound = np.sqrt(3.0 / _scale_n(param, shape))
        return lambda n: rng.uniform(-bound, bound, n)
    if kind == "msra":
        std = np.sqrt(2.0 / _scale_n(param, shape))
        return lambda n: rng.normal(0.0, std, n)
    return None


def fill(blob, param):
    """Fill ``blob.data`` in place."""
    count = blob.count
    draw = _sampler(param, blob.shape) if count > FILL_BLOCK else None
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
