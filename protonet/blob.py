"""Blob: an N-d array with its gradient, reshaped in place across iterations."""
import numpy as np

from . import backend


def _count(shape):
    n = 1
    for s in shape:
        n *= s
    return n


class Blob:
    """Data and diff of one named value in the net.

    Memory is kept across reshapes: a smaller shape reuses the existing
    buffer (as Caffe keeps a blob's capacity), so per-iteration reshapes
    of the same size allocate nothing.
    """

    def __init__(self, shape=(), dtype=np.float32, xp=None):
        self.xp = xp if xp is not None else backend.xp()
        self.dtype = np.dtype(dtype)
        self._shape = None
        self._dbuf = None
        self._gbuf = None
        self._data = None
        self._diff = None
        self.reshape(shape)

    # -- shape ---------------------------------------------------------
    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise ValueError("blob dimensions must be non-negative, got %s" % (shape,))
        if shape == self._shape and self._data is not None:
            return
        count = _count(shape)
        self._shape = shape
        if self._dbuf is None or self._dbuf.size < count:
            self._dbuf = self.xp.zeros(count, self.dtype)
            self._gbuf = self.xp.zeros(count, self.dtype)
        self._data = self._dbuf[:count].reshape(shape)
        self._diff = self._gbuf[:count].reshape(shape)

    def reshape_like(self, other):
        self.reshape(other.shape)

    @property
    def shape(self):
        return self._shape

    @property
    def count(self):
        return _count(self._shape)

    @property
    def num_axes(self):
        return len(self._shape)

    def count_range(self, start, end=None):
        end = len(self._shape) if end is None else end
        return _count(self._shape[start:end])

    def canonical_axis(self, axis):
        """Caffe's CanonicalAxisIndex: negative axes count from the end."""
        n = len(self._shape)
        if not -n <= axis < max(n, 1):
            raise ValueError("axis %d out of range for a %d-axis blob %s" % (axis, n, self._shape))
        return axis + n if axis < 0 else axis

    def legacy_shape(self, i):
        """Caffe's LegacyShape: num/channels/height/width of a blob with <= 4 axes."""
        n = len(self._shape)
        if n > 4:
            raise ValueError("legacy accessors need a blob with at most 4 axes, got %s" % (self._shape,))
        if i >= n or i < -n:
            return 1
        return self._shape[i]

    num = property(lambda self: self.legacy_shape(0))
    channels = property(lambda self: self.legacy_shape(1))
    height = property(lambda self: self.legacy_shape(2))
    width = property(lambda self: self.legacy_shape(3))

    # -- values --------------------------------------------------------
    @property
    def data(self):
        return self._data

    @property
    def diff(self):
        return self._diff

    def set_data(self, values):
        self._data[...] = values

    def set_diff(self, values):
        self._diff[...] = values

    def share_data(self, other):
        """Make this blob's data a view of ``other``'s (same count required)."""
        if other.count != self.count:
            raise ValueError("share_data needs equal counts: %s vs %s" % (self._shape, other.shape))
        self._data = other.data.reshape(self._shape)

    def share_diff(self, other):
        if other.count != self.count:
            raise ValueError("share_diff needs equal counts: %s vs %s" % (self._shape, other.shape))
        self._diff = other.diff.reshape(self._shape)

    def __repr__(self):
        return "Blob(shape=%s)" % (self._shape,)
