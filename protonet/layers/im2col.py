"""Im2col: the column matrix a Convolution would multiply, exposed as a layer."""
import numpy as np

from ..layer import Layer, register
from ._im2col import ColPlan
from .conv import conv_geometry


@register("Im2col", "IM2COL")
class Im2colLayer(Layer):
    """Caffe's Im2col.

    Reads convolution_param: kernel_size / kernel_h+kernel_w, pad / pad_h+pad_w,
    stride / stride_h+stride_w, dilation, axis. Bottom ``(*batch, C, *in)``;
    top ``(*batch, C * prod(kernel), *out)`` with Caffe's convolution output
    size; top channel ``(c * kh + i) * kw + j`` holds input channel c shifted
    by tap (i, j), zero where the tap falls into the padding.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        self.axis, self.kernel, self.pad, self.stride, self.dilation = conv_geometry(self, bottom[0])
        self.channels = bottom[0].shape[self.axis]
        self._key = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        nsp = len(self.kernel)
        if len(shape) != self.axis + 1 + nsp:
            raise self.error("bottom must keep %d axes, got shape %s" % (self.axis + 1 + nsp, shape))
        if shape != self._key:
            plan = ColPlan(shape[self.axis + 1:], self.kernel, self.pad, self.stride, self.dilation)
            if any(o <= 0 for o in plan.out_size):
                raise self.error("input spatial size %s gives an empty output %s"
                                 % (shape[self.axis + 1:], plan.out_size))
            self._plan = plan
            self._key = shape
            self.num = int(np.prod(shape[:self.axis], dtype=np.int64))
        top[0].reshape(shape[:self.axis] + (shape[self.axis] * int(np.prod(self.kernel)),)
                       + self._plan.out_size)

    def _col_view(self, arr):
        """(C, *kernel, N, *out) view of a top array."""
        nsp = len(self.kernel)
        view = arr.reshape((self.num, self.channels) + self.kernel + self._plan.out_size)
        return view.transpose((1,) + tuple(range(2, 2 + nsp)) + (0,) + tuple(range(2 + nsp, 2 + 2 * nsp)))

    def _image_view(self, arr):
        return arr.reshape((self.num, self.channels) + self._plan.in_size)

    def forward(self, bottom, top):
        # The top may have been changed in place downstream, so re-zero the padding taps.
        top[0].data.fill(0)
        self._plan.im2col(self._image_view(bottom[0].data), self._col_view(top[0].data))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            self._plan.col2im(self._col_view(top[0].diff), self._image_view(bottom[0].diff))
