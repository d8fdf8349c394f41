"""Convolution and Deconvolution: GEMMs over an im2col column buffer.

Both layers share one base. Its geometry is always that of a convolution
running from the "image side" (the larger, un-strided side) to the "column
side": for Convolution the image side is the bottom, for Deconvolution it is
the top. The weight is ``(column-side channels, image-side channels / group,
*kernel)``, which gives Caffe's ``(num_output, C/group, kh, kw)`` for
Convolution and ``(C_in, num_output/group, kh, kw)`` for Deconvolution.

The three primitives (shapes per group g, K = image channels/group * taps,
P = column-side spatial size, N = batch):
  image -> column side:  y[n, g] = W[g] @ im2col(x)[g, :, n]   (conv forward)
  column side -> image:  x = col2im(W[g]^T @ y[n, g])           (conv backward-data)
  weight gradient:       dW[g] += y[g] @ im2col(x)[g]^T over all n and positions
so Deconvolution's forward is Convolution's backward-data and vice versa.
The column buffer holds the whole batch, ``(C, *kernel, N, *out)``, so each
GEMM covers every image; it is allocated once per input shape.
"""
import numpy as np

from ..layer import Layer, register
from .. import fillers
from ._im2col import ColPlan, conv_out_size, deconv_out_size


def conv_geometry(layer, bottom0):
    """Kernel, pad, stride, dilation and channel axis from convolution_param, with Caffe's checks.

    Returns ``(axis, kernel, pad, stride, dilation)``, per-axis tuples over the
    spatial axes (all axes after ``axis``).
    """
    p = layer.layer_param.convolution_param
    try:
        axis = bottom0.canonical_axis(p.axis)
    except ValueError as exc:
        raise layer.error("convolution_param.axis: %s" % exc)
    nsp = bottom0.num_axes - axis - 1

    def per_axis(name, values, h, w, has_hw, default):
        if has_hw:
            if nsp != 2:
                raise layer.error("%s_h/%s_w can only be used with 2 spatial axes, the bottom has %d"
                                  % (name, name, nsp))
            if len(values):
                raise layer.error("give either %s or %s_h/%s_w, not both" % (name, name, name))
            return (int(h), int(w))
        if len(values) == 0:
            if default is None:
                raise layer.error("kernel_size (or kernel_h and kernel_w) is required")
            return (default,) * nsp
        if len(values) == 1:
            return (int(values[0]),) * nsp
        if len(values) != nsp:
            raise layer.error("%s must be given once or once per spatial axis (%d given, %d spatial axes)"
                              % (name, len(values), nsp))
        return tuple(int(v) for v in values)

    has_kernel_hw = p.HasField("kernel_h") or p.HasField("kernel_w")
    if has_kernel_hw and not (p.HasField("kernel_h") and p.HasField("kernel_w")):
        raise layer.error("a non-square kernel needs both kernel_h and kernel_w")
    kernel = per_axis("kernel_size", p.kernel_size, p.kernel_h, p.kernel_w, has_kernel_hw, None)
    stride = per_axis("stride", p.stride, p.stride_h, p.stride_w,
                      p.HasField("stride_h") or p.HasField("stride_w"), 1)
    pad = per_axis("pad", p.pad, p.pad_h, p.pad_w, p.HasField("pad_h") or p.HasField("pad_w"), 0)
    dilation = per_axis("dilation", p.dilation, 0, 0, False, 1)
    if any(k <= 0 for k in kernel):
        raise layer.error("kernel dimensions must be positive, got %s" % (kernel,))
    if any(s <= 0 for s in stride):
        raise layer.error("stride dimensions must be positive, got %s" % (stride,))
    if any(d <= 0 for d in dilation):
        raise layer.error("dilation dimensions must be positive, got %s" % (dilation,))
    return axis, kernel, pad, stride, dilation


def _any_bit_set(a):
    """Whether a contiguous float array has any non-zero bit (-0.0 counts as set).

    A max over the bits as unsigned integers runs at memory speed; ``any()``
    on floats is half as fast.
    """
    return bool(a.reshape(-1).view("u%d" % a.dtype.itemsize).max())


class _ConvolutionBase(Layer):
    min_bottom = 1
    min_top = 1
    equal_num_bottom_top = True
    # Deconvolution: the image side is the top.
    reverse = False

    def setup(self, bottom, top):
        p = self.layer_param.convolution_param
        (self.axis, self.kernel, self.pad, self.stride,
         self.dilation) = conv_geometry(self, bottom[0])
        self.num_spatial = len(self.kernel)
        # im2col is the identity for 1x1 kernels with stride 1 and no pad.
        self.is_1x1 = all(k == 1 and s == 1 and q == 0
                          for k, s, q in zip(self.kernel, self.stride, self.pad))
        self.channels = bottom[0].shape[self.axis]
        self.num_output = int(p.num_output)
        if self.num_output <= 0:
            raise self.error("convolution_param.num_output must be positive, got %d" % self.num_output)
        self.group = int(p.group)
        if self.group <= 0 or self.channels % self.group:
            raise self.error("group %d must divide the %d input channels" % (self.group, self.channels))
        if self.num_output % self.group:
            raise self.error("num_output %d must be a multiple of group %d" % (self.num_output, self.group))
        if self.reverse:
            self.col_channels, self.img_channels = self.channels, self.num_output
        else:
            self.col_channels, self.img_channels = self.num_output, self.channels
        weight_shape = (self.col_channels, self.img_channels // self.group) + self.kernel
        self.bias_term = bool(p.bias_term)
        self.blobs = [self.new_blob(weight_shape)]
        fillers.fill(self.blobs[0], p.weight_filler)
        if self.bias_term:
            self.blobs.append(self.new_blob((self.num_output,)))
            fillers.fill(self.blobs[1], p.bias_filler)
        self._key = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != self.axis + 1 + self.num_spatial:
            raise self.error("bottom must keep %d axes, got shape %s"
                             % (self.axis + 1 + self.num_spatial, shape))
        if shape[self.axis] != self.channels:
            raise self.error("bottom has %d channels on axis %d; the layer was set up for %d"
                             % (shape[self.axis], self.axis, self.channels))
        for i, b in enumerate(bottom[1:], 1):
            if b.shape != shape:
                raise self.error("all bottoms must have the same shape: bottom 0 is %s, bottom %d is %s"
                                 % (shape, i, b.shape))
        in_spatial = shape[self.axis + 1:]
        size_fn = deconv_out_size if self.reverse else conv_out_size
        out_spatial = tuple(size_fn(*a) for a in zip(in_spatial, self.kernel, self.pad,
                                                      self.stride, self.dilation))
        if any(o <= 0 for o in out_spatial):
            raise self.error("input spatial size %s gives an empty output %s (kernel %s, pad %s, stride %s, "
                             "dilation %s)" % (in_spatial, out_spatial, self.kernel, self.pad,
                                               self.stride, self.dilation))
        top_shape = shape[:self.axis] + (self.num_output,) + out_spatial
        for t in top:
            t.reshape(top_shape)
        num = int(np.prod(shape[:self.axis], dtype=np.int64))
        img_spatial, col_spatial = (out_spatial, in_spatial) if self.reverse else (in_spatial, out_spatial)
        key = (num, img_spatial)
        if key != self._key:
            self._key = key
            self.num = num
            self.img_spatial = img_spatial
            self.col_spatial = col_spatial
            self.P = int(np.prod(col_spatial, dtype=np.int64))
            self.Kg = self.img_channels // self.group * int(np.prod(self.kernel, dtype=np.int64))
            self.Cg = self.col_channels // self.group
            self._plan = None if self.is_1x1 else ColPlan(img_spatial, self.kernel, self.pad,
                                                          self.stride, self.dilation)
            self._col = None    # im2col target: padding entries stay zero
            self._dcol = None   # GEMM output for col2im: fully overwritten
            self._col_holds = None  # which bottom's im2col the buffer holds (conv forward)
            self._cside = None
            self._wtmp = None

    # -- buffers -------------------------------------------------------
    def _col_buffer(self):
        if self._col is None:
            shape = (self.img_channels,) + self.kernel + (self.num,) + self.col_spatial
            self._col = self.xp.zeros(shape, self.dtype)
        return self._col

    def _dcol_buffer(self):
        if self._dcol is None:
            shape = (self.img_channels,) + self.kernel + (self.num,) + self.col_spatial
            self._dcol = self.xp.empty(shape, self.dtype)
        return self._dcol

    # -- the three primitives -------------------------------------------
    def _weights(self):
        return self.blobs[0].data.reshape(self.group, self.Cg, self.Kg)

    def _columns(self, img):
        """im2col of an image-side array as a (G, Kg, N*P) matrix (a view when possible)."""
        G, Kg, N, P = self.group, self.Kg, self.num, self.P
        if self.is_1x1 and N == 1:
            return img.reshape(G, Kg, P)
        col = self._col_buffer()
        self._col_holds = None
        if self.is_1x1:
            col.reshape(self.img_channels, N, P)[...] = img.reshape(N, self.img_channels, P).transpose(1, 0, 2)
        else:
            self._plan.im2col(img.reshape((N, self.img_channels) + self.img_spatial), col)
        return col.reshape(G, Kg, N * P)

    def _image_to_colside(self, img, out, cols=None):
        """out (column side) = W @ im2col(img); ``cols`` may be a precomputed _columns(img)."""
        G, Kg, N, P = self.group, self.Kg, self.num, self.P
        if self.is_1x1 and cols is None:
            src = img.reshape(N, G, Kg, P)
        else:
            if cols is None:
                cols = self._columns(img)
            src = cols.reshape(G, Kg, N, P).transpose(2, 0, 1, 3)
        self.xp.matmul(self._weights(), src, out=out.reshape(N, G, self.Cg, P))

    def _colside_to_image(self, colside, img):
        """img = col2im(W^T @ colside), overwriting img."""
        G, Kg, N, P = self.group, self.Kg, self.num, self.P
        wt = self._weights().transpose(0, 2, 1)
        src = colside.reshape(N, G, self.Cg, P)
        if self.is_1x1:
            self.xp.matmul(wt, src, out=img.reshape(N, G, Kg, P))
            return
        dcol = self._dcol_buffer()
        self.xp.matmul(wt, src, out=dcol.reshape(G, Kg, N, P).transpose(2, 0, 1, 3))
        self._plan.col2im(dcol, img.reshape((N, self.img_channels) + self.img_spatial))

    def _weight_grad(self, cols, colside):
        """blobs[0].diff += colside @ cols^T, summed over the batch in one GEMM per group."""
        G, N, P = self.group, self.num, self.P
        if N == 1:
            cs = colside.reshape(G, self.Cg, P)
        else:
            if self._cside is None:
                self._cside = self.xp.empty((G, self.Cg, N, P), self.dtype)
            self._cside[...] = colside.reshape(N, G, self.Cg, P).transpose(1, 2, 0, 3)
            cs = self._cside.reshape(G, self.Cg, N * P)
        diff = self.blobs[0].diff.reshape(G, self.Cg, self.Kg)
        if self.xp is np and diff.size >= 1 << 20 and not _any_bit_set(diff):
            # The solver has just cleared the diff: write the product straight
            # into it. For fc6-sized weights this trades a product buffer and an
            # add (three passes over 150 MB) for one read-only scan. (SciPy's
            # GEMM with beta = 1 would accumulate in place, but its own OpenBLAS
            # thread pool then fights NumPy's for the cores.)
            self.xp.matmul(cs, cols.transpose(0, 2, 1), out=diff)
            return
        if self._wtmp is None:
            self._wtmp = self.xp.empty((G, self.Cg, self.Kg), self.dtype)
        self.xp.matmul(cs, cols.transpose(0, 2, 1), out=self._wtmp)
        diff += self._wtmp

    # -- bias on the top ---------------------------------------------------
    def _add_bias(self, out):
        if self.bias_term:
            view = out.reshape(self.num, self.num_output, -1)
            view += self.blobs[1].data[:, None]

    def _bias_grad(self, top_diff):
        if self.bias_term and self.param_needs_grad(1):
            diff = self.blobs[1].diff
            diff += top_diff.reshape(self.num, self.num_output, -1).sum(axis=(0, 2))


@register("Convolution", "CONVOLUTION")
class ConvolutionLayer(_ConvolutionBase):
    """N-d convolution (cross-correlation), Caffe's Convolution.

    Reads convolution_param: num_output, kernel_size / kernel_h+kernel_w,
    pad / pad_h+pad_w, stride / stride_h+stride_w, dilation (each once or once
    per spatial axis), group, bias_term, weight_filler, bias_filler, axis.
    Bottoms (all one shape) ``(*batch, C, *in)`` with the batch axes before
    ``axis``; each top ``(*batch, num_output, *out)`` with
    ``out = (in + 2 pad - (dilation (k - 1) + 1)) // stride + 1``.
    Params: weight ``(num_output, C/group, *kernel)``, bias ``(num_output,)``.
    """

    reverse = False

    def forward(self, bottom, top):
        for i, (b, t) in enumerate(zip(bottom, top)):
            cols = None if self.is_1x1 else self._columns(b.data)
            self._image_to_colside(b.data, t.data, cols)
            if cols is not None:
                self._col_holds = i
            self._add_bias(t.data)

    def backward(self, top, propagate_down, bottom):
        # Backward reuses forward's column buffer for the last bottom (it is
        # the input the forward just read), so go through bottoms in reverse.
        for i in reversed(range(len(top))):
            td = top[i].diff
            self._bias_grad(td)
            if self.param_needs_grad(0):
                if self._col_holds == i:
                    cols = self._col.reshape(self.group, self.Kg, self.num * self.P)
                else:
                    cols = self._columns(bottom[i].data)
                self._weight_grad(cols, td)
            if propagate_down[i]:
                self._colside_to_image(td, bottom[i].diff)


@register("Deconvolution", "DECONVOLUTION")
class DeconvolutionLayer(_ConvolutionBase):
    """Transposed convolution, Caffe's Deconvolution (forward = Convolution's backward-data).

    Reads the same convolution_param fields as Convolution. Bottoms
    ``(*batch, C, *in)``; tops ``(*batch, num_output, *out)`` with
    ``out = stride (in - 1) + dilation (k - 1) + 1 - 2 pad``.
    Params: weight ``(C, num_output/group, *kernel)`` (Caffe's layout, the
    transpose of a Convolution from top to bottom), bias ``(num_output,)``.
    """

    reverse = True

    def forward(self, bottom, top):
        for b, t in zip(bottom, top):
            self._colside_to_image(b.data, t.data)
            self._add_bias(t.data)

    def backward(self, top, propagate_down, bottom):
        for i in range(len(top)):
            td = top[i].diff
            self._bias_grad(td)
            need_w = self.param_needs_grad(0)
            if not (need_w or propagate_down[i]):
                continue
            cols = self._columns(td)
            if need_w:
                self._weight_grad(cols, bottom[i].data)
            if propagate_down[i]:
                self._image_to_colside(td, bottom[i].diff, cols)
