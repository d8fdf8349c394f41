"""MemoryData: batches cut from arrays handed over by Python (pycaffe's set_input_arrays)."""
import numpy as np

from .. import rng as _rng
from ..layer import TRAIN, Layer, register


@register("MemoryData", "MEMORY_DATA")
class MemoryDataLayer(Layer):
    """Serves ``batch_size`` rows per forward from arrays given by ``set_input_arrays``.

    Reads memory_data_param batch_size, channels, height, width (all must be
    positive). Tops: data (batch_size, channels, height, width) and label,
    (batch_size,) after setup and (batch_size, 1, 1, 1) after a forward, as
    Caffe reshapes it there. Rows are served in order and wrap around; the
    arrays are not transformed (as Caffe's Reset path).
    """

    exact_num_bottom = 0
    exact_num_top = 2

    def setup(self, bottom, top):
        p = self.layer_param.memory_data_param
        self.batch_size, self.channels = int(p.batch_size), int(p.channels)
        self.height, self.width = int(p.height), int(p.width)
        if min(self.batch_size, self.channels, self.height, self.width) <= 0:
            raise self.error("batch_size, channels, height, and width must be specified and "
                             "positive in memory_data_param (got %d, %d, %d, %d)"
                             % (self.batch_size, self.channels, self.height, self.width))
        tp = self.layer_param.transform_param
        if tp.mirror or (self.phase == TRAIN and tp.crop_size):
            # Caffe's BaseDataLayer seeds a transformer generator here (one main-stream
            # draw); the arrays are never transformed, but the stream moves on as in Caffe.
            _rng.rng_rand()
        top[0].reshape((self.batch_size, self.channels, self.height, self.width))
        top[1].reshape((self.batch_size,))
        self._data = self._labels = None
        self._pos = 0

    def set_input_arrays(self, data, labels):
        """Serve batches from ``data`` (n, C, H, W) and ``labels`` (n,) or (n, 1, 1, 1).

        n must be a multiple of batch_size. Arrays already of the net's dtype
        and C-contiguous are used without a copy (later edits show through,
        as with pycaffe).
        """
        data = np.ascontiguousarray(data, dtype=self.dtype)
        labels = np.ascontiguousarray(labels, dtype=self.dtype)
        want = (self.channels, self.height, self.width)
        if data.ndim != 4 or data.shape[1:] != want:
            raise self.error("data array must have shape (n, %d, %d, %d), got %s"
                             % (want + (data.shape,)))
        if labels.ndim == 1:
            labels = labels.reshape(-1, 1, 1, 1)
        if labels.ndim != 4 or labels.shape[1:] != (1, 1, 1):
            raise self.error("labels array must have shape (n,) or (n, 1, 1, 1), got %s"
                             % (labels.shape,))
        n = data.shape[0]
        if labels.shape[0] != n:
            raise self.error("data and labels must have the same first dimension (%d vs %d)"
                             % (n, labels.shape[0]))
        if n == 0 or n % self.batch_size:
            raise self.error("the first dimension of the input arrays (%d) must be a positive "
                             "multiple of batch_size (%d)" % (n, self.batch_size))
        self._data, self._labels, self._pos = data, labels, 0

    reset = set_input_arrays

    def set_batch_size(self, batch_size):
        if self._data is not None and len(self._data) % int(batch_size):
            raise self.error("batch_size %d does not divide the %d rows already given"
                             % (batch_size, len(self._data)))
        self.batch_size = int(batch_size)
        self._pos = 0

    def allow_force_backward(self, bottom_index):
        return False

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        if self._data is None:
            raise self.error("no input yet: call set_input_arrays(data, labels) before forward")
        b, i = self.batch_size, self._pos
        top[0].reshape((b, self.channels, self.height, self.width))
        top[1].reshape((b, 1, 1, 1))
        xp = self.xp
        top[0].data[...] = self._data[i:i + b] if xp is np else xp.asarray(self._data[i:i + b])
        top[1].data[...] = self._labels[i:i + b] if xp is np else xp.asarray(self._labels[i:i + b])
        self._pos = (i + b) % len(self._data)

    def backward(self, top, propagate_down, bottom):
        pass
