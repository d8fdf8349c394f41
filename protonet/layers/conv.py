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

from ..layer import TEST, Layer, add_product_to_diff, register
from .. import blas as _blas, ckernels, fillers
from ._im2col import ColPlan, _fill_border, conv_out_size, deconv_out_size
from ._scratch import scratch
from ._winograd import Winograd

# The backward-data column scratch goes DCOL_BYTES of images at a time, at least
# DCOL_MIN_COLUMNS GEMM columns (smaller products run below the GEMM's peak rate: CaffeNet's
# conv1, 96 x 363 by 3025 columns per image, runs at about half the rate of two images').
DCOL_BYTES = 8 << 20
DCOL_MIN_COLUMNS = 4096
# A TRAIN-phase convolution keeps its batch's column buffer from forward to
# backward up to this size; a bigger one is redone in chunks (_forward_in_chunks).
TRAIN_KEEP_COLUMN_BYTES = 16 << 20
# A 1x1 convolution over a batch runs one GEMM per image straight on the (C, H*W) planes
# from this many positions on: the batch-wide GEMM's columns need the input and the output
# transposed around it, which costs more than the wider GEMM saves (GoogLeNet's 28x28 and
# 14x14 inceptions: 1.2-1.4x faster; 7x7 stays batched).
PER_IMAGE_MIN_POSITIONS = 196


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
            if default is None and nsp:
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
        self._reshaped_for = None   # the bottom shape the last reshape saw (its tops: _top_shape)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if shape == self._reshaped_for and all(b.shape == shape for b in bottom[1:]):
            # the net reshapes before every forward: the same input needs only the tops
            for t in top:
                t.reshape(self._top_shape)
            return
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
        self._reshaped_for, self._top_shape = shape, top_shape
        num = int(np.prod(shape[:self.axis], dtype=np.int64))
        img_spatial, col_spatial = (out_spatial, in_spatial) if self.reverse else (in_spatial, out_spatial)
        key = (num, img_spatial)
        if key != self._key:
            self._key = key
            self.num = num
            self.img_spatial = img_spatial
            self.out_spatial = out_spatial
            self._box = None if self.reverse or self.is_1x1 else _touching_box(
                in_spatial, out_spatial, self.kernel, self.pad, self.stride, self.dilation)
            if self._box is not None:
                # only the outputs in the box see the image; the column side is the box
                col_spatial = tuple(b.stop - b.start for b in self._box)
                inner_pad = tuple(p - b.start * s for p, b, s in zip(self.pad, self._box, self.stride))
                self._plan = ColPlan(img_spatial, self.kernel, inner_pad, self.stride, self.dilation,
                                     out_size=col_spatial)
            else:
                self._plan = None if self.is_1x1 else ColPlan(img_spatial, self.kernel, self.pad,
                                                              self.stride, self.dilation)
            self.col_spatial = col_spatial
            self.P = int(np.prod(col_spatial, dtype=np.int64))
            self.Kg = self.img_channels // self.group * int(np.prod(self.kernel, dtype=np.int64))
            self.Cg = self.col_channels // self.group
            self._rows = _KernelRows.maybe(self)
            self._wino = Winograd.maybe(self)
            self._col = None    # im2col target: padding entries stay zero
            self._chunk_col = None  # the same for a few images (see _forward_in_chunks)
            self._col_holds = None  # which bottom's im2col the buffer holds (conv forward)
            self._direct = _DirectDeconv.maybe(self)
            self._per_image = (not self.reverse and self.is_1x1 and self.group == 1 and num > 1
                               and self.P >= PER_IMAGE_MIN_POSITIONS)

    # -- buffers -------------------------------------------------------
    def _shares_columns(self):
        """A TEST-phase layer whose im2col rewrites every column keeps no buffer of its own.

        Nothing is kept for a backward there (one that comes anyway redoes
        the im2col), so all such layers fill one shared buffer, which stays
        warm in the cache from one layer and one forward to the next.
        A 1x1 layer (batch > 1) shares it in TRAIN too: its columns are only
        the bottom with the batch axis moved, cheap to redo in the backward,
        and GoogLeNet's three 1x1 layers on each inception's input would
        otherwise keep three equal copies of it (55 MB at batch 4).
        """
        if self._plan is None:
            return True
        return self.phase == TEST and self._plan.windowed

    def _images_per_chunk(self):
        """Images per chunk for a column-side pass: about DCOL_BYTES of columns, at
        least DCOL_MIN_COLUMNS of them (the whole batch when that is all of it)."""
        per_image = self.group * self.Kg * self.P * self.dtype.itemsize
        return min(self.num, max(DCOL_BYTES // per_image, -(-DCOL_MIN_COLUMNS // self.P), 1))

    def _forward_in_chunks(self):
        """Whether this layer's im2col goes a few images at a time through a small
        buffer of its own instead of holding the whole batch's columns (cifar10's
        conv2 at batch 100: 78 MB; GoogLeNet's conv1: 28 MB).

        TEST: when the im2col keeps padding zeros (so cannot share the column
        scratch). TRAIN: when the batch's columns exceed TRAIN_KEEP_COLUMN_BYTES;
        the backward then redoes the im2col for the weight gradient, as Caffe
        does for every layer (smaller buffers stay, saving that second pass).
        """
        if self.is_1x1 or self._box is not None or self._images_per_chunk() >= self.num:
            return False
        if self.phase == TEST:
            return not self._shares_columns()
        return self.group * self.Kg * self.P * self.num * self.dtype.itemsize > TRAIN_KEEP_COLUMN_BYTES

    def _chunk_columns(self, img, step):
        """im2col of ``img`` (a few images) as a (G, Kg, n*P) matrix in the chunk buffer."""
        n = img.shape[0]
        lead = (self.img_channels,) + self.kernel
        if self._plan.writes_every_column(self.xp, self.dtype):
            # nothing to keep between calls: one buffer serves every layer's chunks
            col = scratch("conv.chunk", self.xp, self.dtype, lead + (n,) + self.col_spatial)
        elif n == step:
            if self._chunk_col is None:
                self._chunk_col = self.xp.zeros(lead + (step,) + self.col_spatial, self.dtype)
            col = self._chunk_col
        else:   # the last, shorter chunk: its padding entries lie elsewhere
            col = scratch("conv.colrest", self.xp, self.dtype, lead + (n,) + self.col_spatial, zero=True)
        self._plan.im2col(img, col)
        return col.reshape(self.group, self.Kg, n * self.P)

    def _image_to_colside_in_chunks(self, img, out, bias_relu):
        """out = W @ im2col(img) a few images at a time, with ``bias_relu`` as in
        _image_to_colside."""
        G, N, P = self.group, self.num, self.P
        step = self._images_per_chunk()
        img = img.reshape((N, self.img_channels) + self.img_spatial)
        out = out.reshape(N, G, self.Cg, P)
        w = self._weights()
        for n0 in range(0, N, step):
            n = min(step, N - n0)
            cols = self._chunk_columns(img[n0:n0 + n], step)
            product = scratch("conv.product", self.xp, self.dtype, (G, self.Cg, n * P))
            self.xp.matmul(w, cols, out=product)
            self._ungroup_bias_relu(product, out[n0:n0 + n], bias_relu)

    def _weight_grad_in_chunks(self, img, colside):
        """blobs[0].diff += colside @ im2col(img)^T, the im2col redone a few images at a time."""
        G, N, P = self.group, self.num, self.P
        step = self._images_per_chunk()
        img = img.reshape((N, self.img_channels) + self.img_spatial)
        colside = colside.reshape(N, G, self.Cg, P)
        for n0 in range(0, N, step):
            n = min(step, N - n0)
            cols = self._chunk_columns(img[n0:n0 + n], step)
            # the chunk's top diff as (G, Cg, n*P): a chunk-sized copy, not the whole batch's
            cs = scratch("conv.cside", self.xp, self.dtype, (G, self.Cg, n, P))
            cs[...] = colside[n0:n0 + n].transpose(1, 2, 0, 3)
            add_product_to_diff(self.blobs[0], cs.reshape(G, self.Cg, n * P), cols.transpose(0, 2, 1))

    def _col_buffer(self):
        shape = (self.img_channels,) + self.kernel + (self.num,) + self.col_spatial
        if self._shares_columns():
            return scratch("conv.col", self.xp, self.dtype, shape)
        if self._col is None:
            self._col = self.xp.zeros(shape, self.dtype)
        return self._col

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

    def _colside_groups(self, colside):
        """A column-side array ``(N, G*Cg, P)`` as a ``(G, Cg, N*P)`` matrix (a copy unless N == 1)."""
        G, N, P = self.group, self.num, self.P
        if N == 1:
            return colside.reshape(G, self.Cg, P)
        cs = scratch("conv.cside", self.xp, self.dtype, (G, self.Cg, N, P))
        cs[...] = colside.reshape(N, G, self.Cg, P).transpose(1, 2, 0, 3)
        return cs.reshape(G, self.Cg, N * P)

    def _ungroup(self, product, out, rows):
        """Copy a ``(G, rows, N*P)`` product into ``out`` laid out ``(N, G*rows, P)``."""
        G, N, P = self.group, self.num, self.P
        out.reshape(N, G, rows, P)[...] = product.reshape(G, rows, N, P).transpose(2, 0, 1, 3)

    def _ungroup_bias_relu(self, product, out, bias_relu):
        """Copy a ``(G, Cg, n*P)`` product into ``out`` (n images), then ``bias_relu`` (bias
        or None, relu) on it: one compiled pass where the kernels take the arrays."""
        rows = self.group * self.Cg
        n = product.shape[-1] // self.P
        out = out.reshape(n, rows, self.P)
        if self.xp is np and ckernels.ungroup_bias_relu(product.reshape(rows, n * self.P), out,
                                                        *bias_relu):
            return
        out[...] = product.reshape(self.group, self.Cg, n, self.P).transpose(2, 0, 1, 3).reshape(
            n, rows, self.P)
        self._bias_relu_into(out, *bias_relu)

    def _image_to_colside(self, img, out, cols=None, bias_relu=None):
        """out (column side) = W @ im2col(img); ``cols`` may be a precomputed _columns(img).

        One GEMM per group covers the whole batch (a batch of per-image GEMMs
        with FCN's 81 columns each would run at two thirds of the speed).
        ``bias_relu`` (bias or None, relu): the forward's bias and fused ReLU, applied as
        the product is copied out.
        """
        G, N = self.group, self.num
        if cols is None:
            cols = self._columns(img)
        if N == 1:
            self.xp.matmul(self._weights(), cols, out=out.reshape(G, self.Cg, self.P))
            if bias_relu is not None:
                self._bias_relu_into(out.reshape(1, G * self.Cg, self.P), *bias_relu)
            return
        product = scratch("conv.product", self.xp, self.dtype, (G, self.Cg, N * self.P))
        self.xp.matmul(self._weights(), cols, out=product)
        if bias_relu is not None:
            self._ungroup_bias_relu(product, out, bias_relu)
        else:
            self._ungroup(product, out, self.Cg)

    def _colside_to_image(self, colside, img, spend_col=False):
        """img = col2im(W^T @ colside), overwriting img.

        ``spend_col``: the column buffer is no longer needed (a backward has
        taken its weight gradient), so the product may go there instead of
        into a second buffer as big. Only for windowed plans, whose im2col
        rewrites every column (other plans keep their padding columns zero).
        """
        G, Kg, N, P = self.group, self.Kg, self.num, self.P
        wt = self._weights().transpose(0, 2, 1)
        cs = self._colside_groups(colside)
        if self.is_1x1:
            if N == 1:
                self.xp.matmul(wt, cs, out=img.reshape(G, Kg, P))
                return
            product = scratch("conv.product", self.xp, self.dtype, (G, Kg, N * P))
            self.xp.matmul(wt, cs, out=product)
            self._ungroup(product, img, Kg)
            return
        shape = (self.img_channels,) + self.kernel + (N,) + self.col_spatial
        img = img.reshape((N, self.img_channels) + self.img_spatial)
        if spend_col and self._col is not None and self._plan.windowed:
            self._col_holds = None
            self.xp.matmul(wt, cs, out=self._col.reshape(G, Kg, N * P))
            self._plan.col2im(self._col, img)
            return
        # A scratch for the whole batch would be as big as the column buffer
        # (cifar10's conv2: 78 MB); col2im is per image, so go a few images
        # at a time, enough columns for the GEMM to run at full speed.
        step = self._images_per_chunk()
        for n0 in range(0, N, step):
            n1 = min(N, n0 + step)
            dcol = scratch("conv.dcol", self.xp, self.dtype, shape[:-1 - self.num_spatial]
                           + (n1 - n0,) + self.col_spatial)
            part = cs if step == N else cs[:, :, n0 * P:n1 * P]
            self.xp.matmul(wt, part, out=dcol.reshape(G, Kg, (n1 - n0) * P))
            self._plan.col2im(dcol, img[n0:n1])

    def _weight_grad(self, cols, colside):
        """blobs[0].diff += colside @ cols^T, summed over the batch in one GEMM per group."""
        add_product_to_diff(self.blobs[0], self._colside_groups(colside), cols.transpose(0, 2, 1))

    # -- bias on the top ---------------------------------------------------
    def _add_bias(self, out, relu=False):
        """out += bias, then out = max(out, 0) when ``relu`` (a fused in-place ReLU)."""
        bias = self.blobs[1].data if self.bias_term else None
        self._bias_relu_into(out.reshape(self.num, self.num_output, -1), bias, relu)

    def _bias_relu_into(self, view, bias, relu):
        """view (n, K, P) += bias[k] (None: none), then max(view, 0) when ``relu``."""
        if bias is None and not relu:
            return
        if self.xp is np and ckernels.bias_relu(view, bias, relu):
            return
        if bias is not None:
            view += bias[:, None]
        if relu:
            self.xp.maximum(view, 0, out=view)

    def _bias_grad(self, top_diff):
        if self.bias_term and self.param_needs_grad(1):
            diff, overwrite = self.blobs[1].grad_target()
            per_channel = top_diff.reshape(self.num, self.num_output, -1).sum(axis=(0, 2))
            if overwrite:
                diff[...] = per_channel
            else:
                diff += per_channel


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

    # set by the net for one forward: an in-place ReLU follows, applied here as the top is written
    fused_relu = False

    def forward(self, bottom, top):
        relu = self.fused_relu
        for i, (b, t) in enumerate(zip(bottom, top)):
            if self._wino is not None:
                self._wino.forward(b.data, t.data, relu)
                continue
            if self._rows is not None:
                self._rows.forward(b.data, t.data, i)
                self._add_bias(t.data, relu)
                continue
            if self._per_image:
                N, P = self.num, self.P
                self.xp.matmul(self._weights()[0], b.data.reshape(N, self.channels, P),
                               out=t.data.reshape(N, self.num_output, P))
                self._add_bias(t.data, relu)
                continue
            bias_relu = (self.blobs[1].data if self.bias_term else None, relu)
            if self._forward_in_chunks():
                self._image_to_colside_in_chunks(b.data, t.data, bias_relu)
                continue
            cols = None if self.is_1x1 else self._columns(b.data)
            if cols is not None and not self._shares_columns():
                self._col_holds = i
            if self._box is None:
                self._image_to_colside(b.data, t.data, cols, bias_relu)
                continue
            # outside the box every tap reads padding: the output is the bias alone
            inner = self._box_view()
            self._image_to_colside(b.data, inner, cols)
            full = t.data.reshape((self.num, self.num_output) + self.out_spatial)
            inside = full[(slice(None), slice(None)) + self._box]
            if self.bias_term:
                bias = self.blobs[1].data.reshape((1, -1) + (1,) * self.num_spatial)
                full[...] = bias
                self.xp.add(inner, bias, out=inside)
            else:
                full.fill(0)
                inside[...] = inner
            if relu:
                self.xp.maximum(full, 0, out=full)

    def _box_view(self):
        return scratch("conv.box", self.xp, self.dtype, (self.num, self.num_output) + self.col_spatial)

    def _gather_box(self, full):
        inner = self._box_view()
        inner[...] = full.reshape((self.num, self.num_output) + self.out_spatial)[
            (slice(None), slice(None)) + self._box]
        return inner

    def backward(self, top, propagate_down, bottom):
        # Backward reuses forward's column buffer for the last bottom (the
        # bottom is unchanged since forward, as in any Caffe net), so go
        # through the bottoms in reverse: the last needs no second im2col.
        for i in reversed(range(len(top))):
            td = top[i].diff
            self._bias_grad(td)
            if self._wino is not None:
                # each pass on Winograd where it pays (see Winograd.RULES), else on im2col
                wino = self._wino
                need_w = self.param_needs_grad(0)
                rest_w = need_w and not wino.weight_grad
                rest_dx = propagate_down[i] and not wino.data_grad
                if self._rows is not None and (rest_w or rest_dx):
                    # the passes Winograd leaves, by kernel rows where they suit the layer
                    self._rows.backward(td, bottom[i].data, i, self.blobs[0], rest_w,
                                        bottom[i].diff if rest_dx else None)
                    rest_w = rest_dx = False
                if rest_w:
                    self._weight_grad_by_columns(i, bottom[i].data, td)
                wino.backward(td, bottom[i].data, self.blobs[0], need_w and wino.weight_grad,
                              bottom[i].diff if propagate_down[i] and wino.data_grad else None)
                if rest_dx:
                    self._colside_to_image(td, bottom[i].diff, spend_col=True)
                continue
            if self._rows is not None:
                self._rows.backward(td, bottom[i].data, i, self.blobs[0], self.param_needs_grad(0),
                                    bottom[i].diff if propagate_down[i] else None)
                continue
            if self._per_image:
                N, P = self.num, self.P
                x = bottom[i].data.reshape(N, self.channels, P)
                dy = td.reshape(N, self.num_output, P)
                if self.param_needs_grad(0):
                    # image by image into the diff, as Caffe accumulates its weight gradient
                    for n in range(N):
                        add_product_to_diff(self.blobs[0], dy[n], x[n].T)
                if propagate_down[i]:
                    self.xp.matmul(self._weights()[0].T, dy, out=bottom[i].diff.reshape(N, self.channels, P))
                continue
            if self._box is not None:
                td = self._gather_box(td)   # diffs outside the box reach neither weights nor bottom
            if self.param_needs_grad(0):
                self._weight_grad_by_columns(i, bottom[i].data, td)
            if propagate_down[i]:
                self._colside_to_image(td, bottom[i].diff, spend_col=True)

    def _weight_grad_by_columns(self, i, x, td):
        """The weight gradient from bottom i's im2col: forward's, when it kept it."""
        if self._col_holds == i:
            self._weight_grad(self._col.reshape(self.group, self.Kg, self.num * self.P), td)
        elif self._forward_in_chunks():
            self._weight_grad_in_chunks(x, td)
        else:
            self._weight_grad(self._columns(x), td)


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
            if self._direct is not None:
                self._direct.forward(b.data, t.data, self.blobs[0].data)
            else:
                self._colside_to_image(b.data, t.data)
            self._add_bias(t.data)

    def backward(self, top, propagate_down, bottom):
        for i in range(len(top)):
            td = top[i].diff
            self._bias_grad(td)
            need_w = self.param_needs_grad(0)
            if not (need_w or propagate_down[i]):
                continue
            if self._direct is not None:
                self._direct.backward(td, bottom[i].data, self.blobs[0],
                                      bottom[i].diff if propagate_down[i] else None, need_w)
                continue
            cols = self._columns(td)
            if need_w:
                self._weight_grad(cols, bottom[i].data)
            if propagate_down[i]:
                self._image_to_colside(td, bottom[i].diff, cols)


def _touching_box(in_spatial, out_spatial, kernel, pad, stride, dilation):
    """Per axis, the slice of outputs whose window reaches into the image, or None if that is all.

    FCN nets pad their first convolution by 100: two thirds of its outputs
    read padding only, so their value is the bias and they pass no gradient.
    Computing only the box (when it saves at least a tenth) is exact.
    """
    box = []
    for n, o, k, p, s, d in zip(in_spatial, out_spatial, kernel, pad, stride, dilation):
        lo = max(0, -(-(p - (k - 1) * d) // s))      # first window ending at or after input 0
        hi = min(o, (n - 1 + p) // s + 1)            # last window starting at or before input n-1
        box.append(slice(lo, max(lo, hi)))
    inner = int(np.prod([b.stop - b.start for b in box]))
    if inner >= 0.9 * int(np.prod(out_spatial)) or inner == 0:
        return None
    return tuple(box)


class _KernelRows:
    """A stride-1 convolution with a tall kernel as one GEMM per kernel row.

    im2col copies each input value kh * kw times: for AlexNet's conv2 (5x5)
    a 30 MB column buffer, written, read by the GEMM, read again for the
    weight gradient, overwritten by the backward GEMM and read by col2im.
    Here the padded input is expanded along W only (kw copies, 6 MB), into
    ``rows[n, c, j, h, b] = x[n, c, h, b + j]``: kernel row ``i`` then sees
    rows ``i .. i + OH`` of it as a plain strided matrix, and the output is
    the sum of kh GEMMs accumulated in place (beta = 1, through NumPy's
    OpenBLAS). The backward accumulates the same way into a row-expanded
    diff and folds it back with kw shifted adds. Chosen, when NumPy's BLAS
    is its bundled OpenBLAS, for kernels of at least 5 rows (for 3x3 the
    three smaller GEMMs cost what the smaller copy saves) whose column
    buffer would outgrow the cache (8 MB) and whose GEMMs stay wide (1024
    output positions: FCN's fc6, 6x6 on 9x9 outputs, would crawl).
    The loop over images is deliberate: each step is already a large GEMM,
    and one batched im2col GEMM needs a column buffer kernel-rows times
    larger (a conv2-like layer, N = 8: 101 ms this way, 135 ms batched).
    """

    MIN_ROWS = 5
    MIN_POSITIONS = 1024
    MIN_COLUMN_BYTES = 8 << 20
    # With the compiled im2col, a row GEMM this shallow (cifar10's conv1: 3 channels x 5
    # columns) runs far below the GEMM rate: one im2col and one deep GEMM are 2x faster.
    MIN_DEPTH_WITH_CKERNELS = 64

    @classmethod
    def maybe(cls, layer):
        blas = _blas.get(layer.dtype) if layer.xp is np else None
        if (blas is None or layer.reverse or layer.num_spatial != 2 or layer.is_1x1
                or layer._box is not None or layer.kernel[0] < cls.MIN_ROWS
                or any(s != 1 for s in layer.stride) or any(d != 1 for d in layer.dilation)
                or layer.P < cls.MIN_POSITIONS
                or layer.Kg * layer.group * layer.num * layer.P * layer.dtype.itemsize
                < cls.MIN_COLUMN_BYTES
                or (ckernels.available()
                    and layer.channels // layer.group * layer.kernel[1] < cls.MIN_DEPTH_WITH_CKERNELS)):
            return None
        return cls(layer, blas)

    def __init__(self, layer, blas):
        self.layer, self.blas, self.xp, self.dtype = layer, blas, layer.xp, layer.dtype
        self.num, self.groups = layer.num, layer.group
        self.channels = layer.channels
        self.cig, self.cg = layer.channels // layer.group, layer.num_output // layer.group
        (self.kh, self.kw), (self.ph, self.pw) = layer.kernel, layer.pad
        self.h, self.w = layer.img_spatial
        self.oh, self.ow = layer.col_spatial
        self.hp, self.wp = self.h + 2 * self.ph, self.w + 2 * self.pw
        self.shape = (self.num, self.channels, self.kw, self.hp, self.ow)
        self._rows = None       # the expansion a TRAIN forward keeps for backward
        self._holds = None      # which bottom it holds

    def _expand(self, x, index, reuse):
        """The W-expansion of bottom ``x`` (kept in TRAIN, shared scratch in TEST).

        ``reuse``: a backward may take the one its forward kept for this bottom.
        """
        if reuse and self._holds == index:
            return self._rows
        if self.layer.phase == TEST:
            rows = scratch("rows.x", self.xp, self.dtype, self.shape)
        else:
            if self._rows is None:
                self._rows = self.xp.empty(self.shape, self.dtype)
            rows = self._rows
        padded = scratch("rows.pad", self.xp, self.dtype, (self.num, self.channels, self.hp, self.wp))
        _fill_border(padded, (self.ph, self.pw))
        padded[:, :, self.ph:self.ph + self.h, self.pw:self.pw + self.w] = x.reshape(
            self.num, self.channels, self.h, self.w)
        sn, sc, sy, sx = padded.strides
        rows[...] = self.xp.lib.stride_tricks.as_strided(
            padded, shape=self.shape, strides=(sn, sc, sx, sy, sx))
        self._holds = index if self.layer.phase != TEST else None
        return rows

    def _row_matrix(self, rows, n, g, i):
        """Kernel row ``i``'s view of group ``g`` of image ``n``: (cig * kw, oh * ow), rows strided."""
        block = rows[n, g * self.cig:(g + 1) * self.cig, :, i:i + self.oh]
        item = block.itemsize
        return self.xp.lib.stride_tricks.as_strided(
            block, shape=(self.cig * self.kw, self.oh * self.ow), strides=(self.hp * self.ow * item, item))

    def _weights_by_row(self, weight):
        wr = scratch("rows.w", self.xp, self.dtype, (self.kh, self.groups, self.cg, self.cig * self.kw))
        wr.reshape(self.kh, self.groups, self.cg, self.cig, self.kw)[...] = weight.reshape(
            self.groups, self.cg, self.cig, self.kh, self.kw).transpose(3, 0, 1, 2, 4)
        return wr

    def forward(self, x, top, index):
        rows = self._expand(x, index, reuse=False)
        wr = self._weights_by_row(self.layer.blobs[0].data)
        out = top.reshape(self.num, self.groups, self.cg, self.oh * self.ow)
        for n in range(self.num):
            for g in range(self.groups):
                for i in range(self.kh):
                    self.blas.gemm(wr[i, g], self._row_matrix(rows, n, g, i), out[n, g],
                                   beta=0.0 if i == 0 else 1.0)

    def backward(self, top_diff, x, index, weight_blob, need_weight, bottom_diff):
        rows = self._expand(x, index, reuse=True)
        dy = top_diff.reshape(self.num, self.groups, self.cg, self.oh * self.ow)
        if need_weight:
            dwr = scratch("rows.dw", self.xp, self.dtype, (self.kh, self.groups, self.cg, self.cig * self.kw))
            for n in range(self.num):
                for g in range(self.groups):
                    for i in range(self.kh):
                        self.blas.gemm(dy[n, g], self._row_matrix(rows, n, g, i).T, dwr[i, g],
                                       beta=0.0 if n == 0 else 1.0)
            diff, overwrite = weight_blob.grad_target()
            grad = dwr.reshape(self.kh, self.groups, self.cg, self.cig, self.kw).transpose(1, 2, 3, 0, 4)
            target = diff.reshape(self.groups, self.cg, self.cig, self.kh, self.kw)
            if overwrite:
                target[...] = grad
            else:
                target += grad
        if bottom_diff is None:
            return
        wr = self._weights_by_row(weight_blob.data)
        rdiff = scratch("rows.diff", self.xp, self.dtype, (1,) + self.shape[1:])
        padded = scratch("rows.pad", self.xp, self.dtype, (self.channels, self.hp, self.wp))
        dx = bottom_diff.reshape(self.num, self.channels, self.h, self.w)
        for n in range(self.num):
            rdiff.fill(0)
            for g in range(self.groups):
                for i in range(self.kh):
                    self.blas.gemm(wr[i, g].T, dy[n, g], self._row_matrix(rdiff, 0, g, i), beta=1.0)
            padded.fill(0)
            for j in range(self.kw):
                view = padded[:, :, j:j + self.ow]
                view += rdiff[0, :, j]
            dx[n] = padded[:, self.ph:self.ph + self.h, self.pw:self.pw + self.w]


class _DirectDeconv:
    """Deconvolution of a tiny input by a huge kernel, one input channel per group.

    FCN's upscore (kernel 63, stride 32, on about 9x9 cells) is no GEMM
    problem: each input cell adds its value times its group's kernels at its
    place in the output, half a million multiply-adds in all. Cells
    ``ceil(k / stride)`` apart along an axis never overlap, so one strided
    view of the output holds a whole phase of cells: ``ceil(k / stride)^2``
    broadcast multiply-adds (4 for FCN), no column buffer and no col2im.
    Backward reads the same views. Chosen when the kernel has more taps than
    the input has cells (2-d, no dilation).
    """

    @classmethod
    def maybe(cls, layer):
        if not (layer.reverse and layer.num_spatial == 2 and layer.channels == layer.group
                and all(d == 1 for d in layer.dilation)
                and int(np.prod(layer.kernel)) > int(np.prod(layer.col_spatial))):
            return None
        return cls(layer)

    def __init__(self, layer):
        self.xp, self.dtype = layer.xp, layer.dtype
        self.num, self.groups = layer.num, layer.group
        self.co = layer.num_output // layer.group
        self.in_hw, self.kernel = layer.col_spatial, layer.kernel
        self.stride, self.pad = layer.stride, layer.pad
        self.out_hw = layer.img_spatial
        full = tuple(s * (n - 1) + k for n, k, s in zip(self.in_hw, self.kernel, self.stride))
        self.full_shape = (self.num, layer.num_output) + full
        # Uncropped output (and padded top diff) when the layer pads.
        self.full = self.xp.zeros(self.full_shape, self.dtype) if any(self.pad) else None
        self.reps = tuple(-(-k // s) for k, s in zip(self.kernel, self.stride))
        self.phases = []
        for ph in range(min(self.reps[0], self.in_hw[0])):
            for pw in range(min(self.reps[1], self.in_hw[1])):
                self.phases.append((ph, pw, len(range(ph, self.in_hw[0], self.reps[0])),
                                    len(range(pw, self.in_hw[1], self.reps[1]))))
        a_max = max(p[2] for p in self.phases)
        b_max = max(p[3] for p in self.phases)
        kh, kw = self.kernel
        self.tmp = self.xp.empty((self.num, self.groups, self.co, a_max, kh, b_max, kw), self.dtype)

    def _patches(self, full, ph, pw, a, b):
        """(N, G, co, A, kh, B, kw) view of the output patches of the cells of one phase."""
        (kh, kw), (sh, sw), (rh, rw) = self.kernel, self.stride, self.reps
        sn, sc, sy, sx = full.strides
        base = full[:, :, ph * sh:, pw * sw:]
        return self.xp.lib.stride_tricks.as_strided(
            base, shape=(self.num, self.groups, self.co, a, kh, b, kw),
            strides=(sn, self.co * sc, sc, rh * sh * sy, sy, rw * sw * sx, sx))

    def _kernels(self, weight):
        kh, kw = self.kernel
        return weight.reshape(1, self.groups, self.co, 1, kh, 1, kw)

    def _cells(self, x, ph, pw):
        rh, rw = self.reps
        cells = x.reshape((self.num, self.groups) + tuple(self.in_hw))[:, :, ph::rh, pw::rw]
        return cells[:, :, None, :, None, :, None]

    def forward(self, x, top, weight):
        full = self.full if self.full is not None else top.reshape(self.full_shape)
        full.fill(0)
        kern = self._kernels(weight)
        for ph, pw, a, b in self.phases:
            tmp = self.tmp[:, :, :, :a, :, :b]
            self.xp.multiply(self._cells(x, ph, pw), kern, out=tmp)
            view = self._patches(full, ph, pw, a, b)
            view += tmp
        if self.full is not None:
            (py, px), (oh, ow) = self.pad, self.out_hw
            top.reshape((self.num, -1, oh, ow))[...] = full[:, :, py:py + oh, px:px + ow]

    def backward(self, top_diff, x, weight_blob, bottom_diff, need_weight):
        full = self.full
        if full is None:
            full = top_diff.reshape(self.full_shape)
        else:
            (py, px), (oh, ow) = self.pad, self.out_hw
            full.fill(0)
            full[:, :, py:py + oh, px:px + ow] = top_diff.reshape((self.num, -1, oh, ow))
        kern = self._kernels(weight_blob.data)
        rh, rw = self.reps
        if bottom_diff is not None:
            dx = bottom_diff.reshape((self.num, self.groups) + tuple(self.in_hw))
        wgrad = None
        for ph, pw, a, b in self.phases:
            view = self._patches(full, ph, pw, a, b)
            tmp = self.tmp[:, :, :, :a, :, :b]
            if bottom_diff is not None:
                self.xp.multiply(view, kern, out=tmp)
                tmp.sum(axis=(2, 4, 6), out=dx[:, :, ph::rh, pw::rw])
            if need_weight:
                self.xp.multiply(view, self._cells(x, ph, pw), out=tmp)
                part = tmp.sum(axis=(0, 3, 5))
                wgrad = part if wgrad is None else wgrad + part
        if wgrad is not None:
            diff, overwrite = weight_blob.grad_target()
            diff = diff.reshape(wgrad.shape)
            if overwrite:
                diff[...] = wgrad
            else:
                diff += wgrad
