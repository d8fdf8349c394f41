"""im2col / col2im for N spatial axes by strided views (NumPy and CuPy alike).

Layouts: the image is ``(N, C, *in_size)``; the column buffer is
``(C, *kernel, N, *out_size)`` -- read as a matrix it is Caffe's
``(C * prod(kernel)) x (N * prod(out_size))`` column matrix with the batch
folded into the columns, so one GEMM per group covers the whole batch.

No scatter with ``add.at``: each step copies (im2col) or adds (col2im) one
strided block, and within a block distinct columns hit distinct pixels. Per
spatial axis the plan loops over whichever is shorter, the kernel taps (each
step covers a range of output positions) or the output positions (each step
covers a range of taps). The second wins for huge kernels on tiny inputs, as
in FCN's upscore Deconvolution (kernel 63, input about 8x8).

On a GPU, 2-d plans run as one CUDA kernel each (protonet/cuda_kernels.py):
every strided step here would be a launch of its own.

Columns that fall into the zero padding are never written: a buffer created
with zeros keeps them zero, so padding costs nothing per call.

When every axis loops over taps and padding adds little (at most a quarter
of the area), im2col is instead one copy from a strided window view of the
image (of a zero-bordered copy of it when padded): NumPy then runs its
inner loop over whole output rows of every tap at once, not one Python
step per tap (2x faster for 5x5 and 6x6 kernels).
"""
import itertools

import numpy as np

from .. import ckernels, cuda_kernels
from ._scratch import scratch


def conv_out_size(size, kernel, pad, stride, dilation):
    """Convolution output length along one axis (Caffe's integer formula)."""
    extent = dilation * (kernel - 1) + 1
    return (size + 2 * pad - extent) // stride + 1


def deconv_out_size(size, kernel, pad, stride, dilation):
    """Deconvolution output length along one axis (inverse of conv_out_size)."""
    extent = dilation * (kernel - 1) + 1
    return stride * (size - 1) + extent - 2 * pad


def _ceil_div(a, b):
    return -((-a) // b)


def _axis_steps(size, out, kernel, pad, stride, dilation):
    """Steps of one axis: (mode, kernel index or slice, out index or slice, image slice).

    mode "k": fixed tap, a range of outputs; mode "o": fixed output, a range of taps.
    Steps that touch only padding are dropped.
    """
    steps = []
    if kernel <= out:
        for i in range(kernel):
            off = i * dilation - pad
            # outputs o with 0 <= o*stride + off < size
            lo = max(0, _ceil_div(-off, stride))
            hi = min(out, (size - 1 - off) // stride + 1)
            if lo < hi:
                start = lo * stride + off
                steps.append(("k", i, slice(lo, hi),
                              slice(start, start + (hi - lo - 1) * stride + 1, stride)))
    else:
        for o in range(out):
            off = o * stride - pad
            # taps i with 0 <= off + i*dilation < size
            lo = max(0, _ceil_div(-off, dilation))
            hi = min(kernel, (size - 1 - off) // dilation + 1)
            if lo < hi:
                start = off + lo * dilation
                steps.append(("o", slice(lo, hi), o,
                              slice(start, start + (hi - lo - 1) * dilation + 1, dilation)))
    return steps


class ColPlan:
    """The strided-view steps for one geometry (computed once per shape).

    ``in_size``: spatial size of the image; ``kernel``, ``pad``, ``stride``,
    ``dilation``: per-axis tuples. ``out_size`` is derived with Caffe's formula
    unless given (``pad`` is then the padding before the first window only,
    for a plan over a sub-range of a convolution's outputs).
    """

    def __init__(self, in_size, kernel, pad, stride, dilation, out_size=None):
        self.in_size = tuple(in_size)
        self.kernel = tuple(kernel)
        if out_size is None:
            self.out_size = tuple(conv_out_size(*a) for a in zip(in_size, kernel, pad, stride, dilation))
        else:
            self.out_size = tuple(out_size)
        per_axis = [_axis_steps(s, o, k, p, st, d) for s, o, k, p, st, d
                    in zip(in_size, self.out_size, kernel, pad, stride, dilation)]
        nd = len(self.in_size)
        self.steps = []
        for combo in itertools.product(*per_axis):
            k_index = tuple(c[1] for c in combo)
            o_index = tuple(c[2] for c in combo)
            img_index = (slice(None), slice(None)) + tuple(c[3] for c in combo)
            col_index = (slice(None),) + k_index + (slice(None),) + o_index
            # Integer indices drop their axis, so the column view has axes
            # (C, <tap ranges of "o" axes>, N, <output ranges of "k" axes>);
            # the image view (N, C, <ranges>) is transposed to match.
            o_axes = [2 + a for a in range(nd) if combo[a][0] == "o"]
            k_axes = [2 + a for a in range(nd) if combo[a][0] == "k"]
            perm = tuple([1] + o_axes + [0] + k_axes)
            self.steps.append((col_index, img_index, perm))
        self.pad, self.stride, self.dilation = tuple(pad), tuple(stride), tuple(dilation)
        padded_area = 1
        for n, p in zip(self.in_size, self.pad):
            padded_area *= (n + 2 * p) / n
        self.windowed = (out_size is None and all(k <= o for k, o in zip(self.kernel, self.out_size))
                         and padded_area <= 1.25)

    def writes_every_column(self, xp, dtype):
        """Whether im2col rewrites the padding columns too (then a buffer needs no zeros kept):
        windowed plans, and every 2-d plan the compiled kernel runs."""
        return self.windowed or (xp is np and len(self.in_size) == 2 and ckernels.handles(dtype))

    def col_shape(self, channels, num):
        return (channels,) + self.kernel + (num,) + self.out_size

    def im2col(self, img, col):
        """Copy ``img`` (N, C, *in_size) into ``col`` (C, *kernel, N, *out_size).

        Padding columns are left untouched (keep them zero).
        """
        if len(self.in_size) == 2 and cuda_kernels.supported(img, col):
            cuda_kernels.im2col(img, col, self.kernel, self.pad, self.stride, self.dilation, self.out_size)
            return
        if ckernels.im2col(img, col, self.kernel, self.pad, self.stride, self.dilation, self.out_size):
            return
        if self.windowed:
            col[...] = self._windows(img)
            return
        for col_index, img_index, perm in self.steps:
            col[col_index] = img[img_index].transpose(perm)

    def _windows(self, img):
        """``img``'s windows as a (C, *kernel, N, *out_size) strided view."""
        xp = np if isinstance(img, np.ndarray) else _array_module(img)
        nd = len(self.in_size)
        if any(self.pad):
            shape = img.shape[:2] + tuple(n + 2 * p for n, p in zip(self.in_size, self.pad))
            padded = scratch("im2col.padded", xp, img.dtype, shape)
            _fill_border(padded, self.pad)
            inner = tuple(slice(p, p + n) for n, p in zip(self.in_size, self.pad))
            padded[(slice(None), slice(None)) + inner] = img
            img = padded
        strides = img.strides
        view = xp.lib.stride_tricks.as_strided(
            img, shape=img.shape[:2] + self.kernel + self.out_size,
            strides=strides[:2] + tuple(strides[2 + a] * self.dilation[a] for a in range(nd))
            + tuple(strides[2 + a] * self.stride[a] for a in range(nd)))
        return view.transpose((1,) + tuple(range(2, 2 + nd)) + (0,) + tuple(range(2 + nd, 2 + 2 * nd)))

    def col2im(self, col, img):
        """Overwrite ``img`` with the sum of the columns over the taps that read each pixel."""
        if len(self.in_size) == 2 and cuda_kernels.supported(img, col):
            cuda_kernels.col2im(col, img, self.kernel, self.pad, self.stride, self.dilation, self.out_size)
            return
        if ckernels.col2im(col, img, self.kernel, self.pad, self.stride, self.dilation, self.out_size):
            return
        img.fill(0)
        for col_index, img_index, perm in self.steps:
            view = img[img_index].transpose(perm)
            view += col[col_index]


def _fill_border(padded, pad):
    """Zero the border of width ``pad`` around the spatial axes (axes 2 on) of ``padded``."""
    for a, p in enumerate(pad):
        if p:
            lead = (slice(None),) * (2 + a)
            padded[lead + (slice(0, p),)] = 0
            padded[lead + (slice(padded.shape[2 + a] - p, None),)] = 0


def _array_module(array):
    from ..backend import xp_of
    return xp_of(array)
