"""Transient buffers shared by all layers of a thread.

Some layer buffers live only within one call: the col2im input of a
convolution's backward, the zero-bordered image of an im2col, the column
phases of a pooling pass. Layers run one at a time, so one buffer per use
(per name), grown to the largest size asked for, serves every layer instead
of one per layer. Per thread, so nets run from different threads never share.
"""
import threading

import numpy as np

_local = threading.local()


def scratch(name, xp, dtype, shape, zero=False):
    """A ``shape`` view of the thread's buffer ``name`` (contents undefined unless ``zero``)."""
    count = 1
    for s in shape:
        count *= int(s)
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    key = (name, xp.__name__, np.dtype(dtype).str)
    buf = bufs.get(key)
    if buf is None or buf.size < count:
        buf = bufs[key] = xp.empty(count, dtype)
    view = buf[:count].reshape(shape)
    if zero:
        view.fill(0)
    return view
