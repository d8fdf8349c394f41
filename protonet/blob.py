"""Blob: an N-d array with its gradient, reshaped in place across iterations."""
import os

import numpy as np

from . import backend
from . import blas as _blas


def _count(shape):
    n = 1
    for s in shape:
        n *= s
    return n


INT_MAX = 2 ** 31 - 1       # Caffe's Blob::Reshape refuses a count above this


class BlobSizeError(ValueError):
    """A blob too big to hold: more than Caffe's INT_MAX values, or more memory than there is.
    The net adds the layer's name."""


def _human_bytes(n):
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return ("%d %s" % (n, unit)) if unit == "bytes" else "%.1f %s" % (n, unit)
        n /= 1024.0
    return "%d bytes" % n


def _physical_memory():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _check_size(shape, count, dtype, xp):
    """Refuse, before allocating, a shape Caffe would refuse (count > INT_MAX) or data+diff
    larger than the machine's memory: NumPy's zeros are lazily committed, so such a blob
    would be "allocated" and the process killed by the OOM killer when it is first filled."""
    need = 2 * count * dtype.itemsize          # data and diff
    shown = "x".join(map(str, shape))
    if count > INT_MAX:
        raise BlobSizeError("a blob of shape %s holds %d values, more than Caffe allows (%d, "
                            "INT_MAX); data and diff would need %s"
                            % (shown, count, INT_MAX, _human_bytes(need)))
    if xp is np:
        total = _physical_memory()
        if total and need > total:
            raise BlobSizeError("a blob of shape %s needs %s (data and diff), more than this "
                                "machine's %s of memory" % (shown, _human_bytes(need),
                                                            _human_bytes(total)))


class Blob:
    """Data and diff of one named value in the net.

    Memory is kept across reshapes: a smaller shape reuses the existing
    buffer (as Caffe keeps a blob's capacity), so per-iteration reshapes
    of the same size allocate nothing.

    ``data`` and ``diff`` are the blob's memory itself, as in Caffe: a
    script that holds the array sees every change and every write through
    it counts.

    Inside the engine the diff may lag behind: ``clear_diff()`` zeroes it
    lazily (a flag, no pass over memory), and a writer that produces a whole
    gradient asks ``grad_target()`` and may overwrite (``=``) what would have
    been an addition to zeros, which saves the clearing pass and the
    addition. ``defer_diff_copy(array)`` is the same kind of promise for a
    copy (the SGD step leaves the diff equal to the momentum history, as
    Caffe does, without copying it unless somebody reads the diff before the
    next clear), and ``defer_diff_product(a, b)`` for a low-rank product:
    FCN's fc6 weight gradient is (4096 x 81) @ (81 x 9216), and the SGD step
    can fold it into the momentum with one GEMM (beta = momentum) instead of
    writing the 151 MB gradient and reading it back.

    A held array cannot be updated lazily, so these promises are kept only
    while no array of the diff has been handed out: reading the ``diff``
    property hands it out (for good: nobody can tell when a script lets go
    of it), and from then on the clear, the copy and the product are carried
    out at once, as Caffe does. Engine code reads ``engine_diff()``, which
    carries out what is pending without handing the array out.
    """

    def __init__(self, shape=(), dtype=np.float32, xp=None):
        self.xp = xp if xp is not None else backend.xp()
        self.dtype = np.dtype(dtype)
        self._shape = None
        self._dbuf = None
        self._gbuf = None
        self._data = None
        self._diff = None
        # Counts the times ``_data`` became another array (a new shape, or a view of another
        # blob): a layer whose reshape depends only on that is skipped while it stays put.
        self.data_version = 0
        self._data_src_array = None  # the array of _data_src that _data views
        # Pending diff contents, not yet written: None, 0 (clear_diff), an
        # array to copy (defer_diff_copy) or a pair of factors (defer_diff_product).
        # Only the owner of shared diff memory has one.
        self._diff_fill = None
        self._diff_src = None       # the blob whose diff this one views (share_diff)
        self._data_src = None       # the blob whose data this one views (share_data)
        self._product_buffers = None
        # True once the diff array went to code outside the engine (the ``diff``
        # property): then nothing is deferred any more. Only the owner's counts.
        self._handed_out = False
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
        if self._diff_fill is not None and not isinstance(self._diff_fill, int):
            self._materialize_diff()    # a pending copy has the old count
        count = _count(shape)
        if self._dbuf is None or self._dbuf.size < count:
            # checked and allocated before anything changes: a refused shape leaves the blob as it was
            _check_size(shape, count, self.dtype, self.xp)
            try:
                dbuf = self.xp.zeros(count, self.dtype)
                gbuf = self.xp.zeros(count, self.dtype)
            except MemoryError:         # CuPy's OutOfMemoryError is one too
                raise BlobSizeError("cannot allocate a blob of shape %s: %s (data and diff) "
                                    "are not available" % (
                                        "x".join(map(str, shape)),
                                        _human_bytes(2 * count * self.dtype.itemsize))) from None
            self._dbuf, self._gbuf = dbuf, gbuf
        self._shape = shape
        self._data = self._dbuf[:count].reshape(shape)
        self._diff = self._gbuf[:count].reshape(shape)
        self._diff_src = None
        self._data_src = self._data_src_array = None     # nothing of another blob kept alive
        self.data_version += 1

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
        """The diff array, the blob's memory with every pending operation carried out.

        The array counts as handed out: from now on this blob's diff is never
        deferred again (see the class docstring)."""
        owner = self._diff_owner()
        owner._handed_out = True
        if owner._diff_fill is not None:
            owner._materialize_diff()
        return self._diff

    def engine_diff(self):
        """The diff array for engine code (layers, the solver, snapshots): what is pending
        is carried out, but the array does not count as handed out, so later clears
        and updates may still be deferred. Callers must not keep it past their step."""
        owner = self._diff_owner()
        if owner._diff_fill is not None:
            owner._materialize_diff()
        return self._diff

    def settle_diff(self):
        """Carry out a deferred zeroing, copy or product now."""
        self.engine_diff()

    @property
    def diff_handed_out(self):
        """Whether the diff array has gone to code outside the engine (see ``diff``)."""
        return self._diff_owner()._handed_out

    def _diff_owner(self):
        blob = self
        while blob._diff_src is not None:
            blob = blob._diff_src
        return blob

    def _materialize_diff(self):
        fill, self._diff_fill = self._diff_fill, None
        if fill is None:
            return
        if isinstance(fill, int):
            self._diff.fill(0)
        elif isinstance(fill, tuple):
            a, bt = fill
            out = self._diff.reshape(a.shape[0], bt.shape[0])
            blas = _blas.get(self.dtype) if self.xp is np else None
            if blas is not None and blas.takes(a, bt.T, out):
                blas.gemm(a, bt.T, out)     # the GEMM add_product_to_diff would have run
            else:
                self.xp.matmul(a, bt.T, out=out)
        else:
            self.xp.copyto(self._diff, fill.reshape(self._diff.shape))

    def clear_diff(self):
        """Set the diff to zero: lazily (a flag) unless its array was handed out."""
        owner = self._diff_owner()
        owner._diff_fill = 0
        if owner._handed_out:
            owner._materialize_diff()

    def defer_diff_copy(self, values):
        """Make the diff read as a copy of ``values`` (same count), copied only when read.

        The caller must leave ``values`` unchanged until the next
        ``clear_diff`` or until the diff has been read.
        """
        owner = self._diff_owner()
        if values.size != owner.count:
            raise ValueError("defer_diff_copy needs %d values, got %d" % (owner.count, values.size))
        owner._diff_fill = values
        if owner._handed_out:
            owner._materialize_diff()

    def defer_diff_product(self, a, b):
        """Make the zero-cleared diff read as ``a @ b`` (2-d; its row-major reshape).

        Copies of ``a`` and ``b.T`` are kept (in buffers reused across
        iterations), so the operands may change afterwards; the product is
        taken when the diff is read, or consumed by the solver through
        ``pending_product``. Only for a diff that ``grad_target`` said to
        overwrite.
        """
        m, n = a.shape[0], b.shape[1]
        if m * n != self.count or a.shape[1] != b.shape[0]:
            raise ValueError("defer_diff_product: %s @ %s does not fill a diff of %d values"
                             % (a.shape, b.shape, self.count))
        keep = self._product_buffers
        if keep is None or keep[0].shape != a.shape or keep[1].shape != b.T.shape:
            keep = self._product_buffers = (self.xp.empty(a.shape, self.dtype),
                                            self.xp.empty(b.T.shape, self.dtype))
        keep[0][...] = a
        keep[1][...] = b.T
        self._diff_fill = keep
        if self._handed_out:
            self._materialize_diff()

    def pending_product(self):
        """``(a, bt)`` when the diff is a promised ``a @ bt.T`` not yet taken, else None."""
        fill = self._diff_owner()._diff_fill
        return fill if isinstance(fill, tuple) else None

    def grad_target(self):
        """``(diff, overwrite)`` for a layer about to add a gradient into the diff.

        ``overwrite`` is True when the diff was cleared by ``clear_diff`` and
        nothing has touched it since: the caller must then write every
        element with ``=`` (the memory is stale), which equals adding to
        zeros. Otherwise it adds (``+=``), as Caffe's layers always do.
        Either way the diff counts as written afterwards. A diff whose array
        was handed out is never in the cleared-but-stale state (its clear is
        carried out at once), so it is always added to.
        """
        if self._diff_src is None and isinstance(self._diff_fill, int):
            self._diff_fill = None
            return self._diff, True
        return self.engine_diff(), False

    def set_data(self, values):
        self._data[...] = self._here(values)

    def set_diff(self, values):
        self.engine_diff()[...] = self._here(values)

    def _here(self, values):
        """``values`` on this blob's device: CuPy fills a device array from host scalars only."""
        return values if self.xp is np else self.xp.asarray(values)

    def share_data(self, other):
        """Make this blob's data a view of ``other``'s (same count required)."""
        if self._data_src is other and self._data_src_array is other._data:
            return      # already a view of that array (reshape would have dropped the link)
        if other.count != self.count:
            raise ValueError("share_data needs equal counts: %s vs %s" % (self._shape, other.shape))
        self._data = other.data.reshape(self._shape)
        self._data_src = other
        self._data_src_array = other._data
        self.data_version += 1

    def share_diff(self, other):
        if other.count != self.count:
            raise ValueError("share_diff needs equal counts: %s vs %s" % (self._shape, other.shape))
        if self._diff_owner()._handed_out:
            other._diff_owner()._handed_out = True     # stay eager: a script may hold this diff
        self._diff = other.engine_diff().reshape(self._shape)
        self._diff_src = other

    def __repr__(self):
        return "Blob(shape=%s)" % (self._shape,)
