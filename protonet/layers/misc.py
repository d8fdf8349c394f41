"""Small utility layers: Tile, Reduction, Silence, Filter, Embed, Parameter, BatchReindex."""
import numpy as np

from ..fillers import fill
from ..layer import Layer, register
from ..proto import caffe_pb2
from .softmax import canonical_axis

_Red = caffe_pb2.ReductionParameter


def _scatter_add_rows(xp, index, rows, num_rows, dtype):
    """A (num_rows, D) array whose row k is the sum of ``rows[j]`` over j with index[j] == k.

    One bincount over flat positions: no Python loop, and the same code for
    NumPy and CuPy (repeated indices add up, unlike fancy-index assignment).
    """
    n, d = rows.shape
    flat = (index.reshape(n, 1) * d + xp.arange(d)).reshape(-1)
    sums = xp.bincount(flat, weights=rows.reshape(-1), minlength=num_rows * d)
    return sums.reshape(num_rows, d).astype(dtype, copy=False)


def _integer_ids(layer, values, limit, what):
    """``values`` (integer-valued floats) as int64 indices, checked to lie in [0, limit)."""
    xp = layer.xp
    ids = values.astype(np.int64)  # truncation, as Caffe's static_cast<int>
    bad = (ids < 0) | (ids >= limit) | (ids != values)
    if bool(bad.any()):
        first = float(values.reshape(-1)[int(xp.argmax(bad.reshape(-1)))])
        raise layer.error("%s %g is not an integer in [0, %d)" % (what, first, limit))
    return ids


@register("Tile")
class TileLayer(Layer):
    """Repeat the bottom ``tiles`` times along ``axis``.

    Reads ``tile_param.axis`` (default 1; negative counts from the end) and
    ``tile_param.tiles`` (required, > 0). Shape (.., d_axis, ..) ->
    (.., tiles * d_axis, ..): the whole block from ``axis`` on is repeated.
    Backward: the bottom diff is the sum of the tiles' diffs.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.tile_param
        if not p.HasField("tiles"):
            raise self.error("tile_param.tiles must be specified")
        if p.tiles <= 0:
            raise self.error("tile_param.tiles must be positive, got %d" % p.tiles)
        self.tiles = int(p.tiles)

    def reshape(self, bottom, top):
        axis = canonical_axis(self, bottom[0], self.layer_param.tile_param.axis, "tile_param.axis")
        self.outer = bottom[0].count_range(0, axis)
        self.inner = bottom[0].count_range(axis)
        shape = list(bottom[0].shape)
        shape[axis] *= self.tiles
        top[0].reshape(shape)

    def forward(self, bottom, top):
        y = top[0].data.reshape(self.outer, self.tiles, self.inner)
        y[...] = bottom[0].data.reshape(self.outer, 1, self.inner)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dy = top[0].diff.reshape(self.outer, self.tiles, self.inner)
            dy.sum(axis=1, out=bottom[0].diff.reshape(self.outer, self.inner))


@register("Reduction")
class ReductionLayer(Layer):
    """Reduce all axes from ``axis`` on to one number, times ``coeff``.

    Reads ``reduction_param``: ``operation`` SUM (default), ASUM (sum of
    |x|), SUMSQ (sum of x^2) or MEAN; ``axis`` (default 0: the top is a
    scalar, a 0-axis blob); ``coeff`` (default 1).
    Top shape = bottom shape[:axis]. With g = coeff * dy for each output:
    SUM dx = g, MEAN dx = g / count(axis), ASUM dx = g * sign(x),
    SUMSQ dx = 2 g x.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.reduction_param
        if p.operation not in (_Red.SUM, _Red.ASUM, _Red.SUMSQ, _Red.MEAN):
            raise self.error("unknown reduction_param.operation %d" % p.operation)
        self.op = p.operation
        self.work = None

    def reshape(self, bottom, top):
        p = self.layer_param.reduction_param
        axis = canonical_axis(self, bottom[0], p.axis, "reduction_param.axis")
        self.num = bottom[0].count_range(0, axis)
        self.dim = bottom[0].count_range(axis)
        top[0].reshape(bottom[0].shape[:axis])
        coeff = self.dtype.type(p.coeff)
        # Caffe folds the 1/dim of MEAN into the coefficient (in the layer's precision).
        self.coeff = coeff / self.dtype.type(self.dim) if self.op == _Red.MEAN else coeff
        if self.op in (_Red.ASUM, _Red.SUMSQ) and (
                self.work is None or self.work.shape != (self.num, self.dim)):
            self.work = self.xp.empty((self.num, self.dim), self.dtype)

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.num, self.dim)
        y = top[0].data.reshape(self.num)
        if self.op == _Red.ASUM:
            x = self.xp.abs(x, out=self.work)
        elif self.op == _Red.SUMSQ:
            x = self.xp.multiply(x, x, out=self.work)
        x.sum(axis=1, out=y)
        if self.coeff != 1:
            y *= self.coeff

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        g = (top[0].diff.reshape(self.num) * self.coeff).reshape(self.num, 1)
        dx = bottom[0].diff.reshape(self.num, self.dim)
        x = bottom[0].data.reshape(self.num, self.dim)
        if self.op == _Red.ASUM:
            self.xp.sign(x, out=dx)
            dx *= g
        elif self.op == _Red.SUMSQ:
            self.xp.multiply(x, 2 * g, out=dx)
        else:
            dx[...] = g


@register("Silence", "SILENCE")
class SilenceLayer(Layer):
    """Consume blobs nobody else uses (so they are not net outputs).

    No settings, no tops. Backward writes zero gradients.
    """

    min_bottom = 1
    exact_num_top = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        for b, down in zip(bottom, propagate_down):
            if down:
                b.diff.fill(0)


@register("Filter")
class FilterLayer(Layer):
    """Keep the items (along axis 0) whose selector value is non-zero.

    Bottoms: k blobs to filter, then the selector (shape (N,) or N x 1 x ..).
    Tops: k blobs, each with the kept items in order. As in Caffe the first
    reshape (at setup, before any data) gives the tops all N items.
    Backward: the kept items get their top diff, the others zero; the
    selector cannot take a gradient (force_backward skips it).
    """

    min_bottom = 2
    min_top = 1

    def setup(self, bottom, top):
        if len(top) != len(bottom) - 1:
            raise self.error("needs one top per filtered bottom (%d), got %d"
                             % (len(bottom) - 1, len(top)))
        self.first_reshape = True

    # the tops' first axis is the number of selected items: the selector's values
    reshape_from_shapes = False

    def reshape(self, bottom, top):
        sel = bottom[-1]
        if sel.num_axes < 1 or any(d != 1 for d in sel.shape[1:]):
            raise self.error("the selector (last bottom) must be N or N x 1 x ..., got %s" % (sel.shape,))
        for i, b in enumerate(bottom[:-1]):
            if b.num_axes < 1 or b.shape[0] != sel.shape[0]:
                raise self.error("bottom %d %s must have as many items as the selector %s"
                                 % (i, b.shape, sel.shape))
        self.keep = self.xp.flatnonzero(sel.data.reshape(-1))
        n = sel.shape[0] if self.first_reshape else int(self.keep.size)
        self.first_reshape = False
        for t, b in zip(top, bottom):
            t.reshape((n,) + b.shape[1:])

    def forward(self, bottom, top):
        for t, b in zip(top, bottom):
            self.xp.take(b.data, self.keep, axis=0, out=t.data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[-1]:
            raise self.error("cannot backpropagate to the selector (last bottom)")
        for t, b, down in zip(top, bottom, propagate_down):
            if down:
                b.diff.fill(0)
                b.diff[self.keep] = t.diff

    def allow_force_backward(self, bottom_index):
        return bottom_index != len(self.layer_param.bottom) - 1


@register("Embed")
class EmbedLayer(Layer):
    """Look up rows of a learned table: y[..., :] = W[id] (+ b).

    Reads ``embed_param``: ``input_dim`` (K, table rows), ``num_output``
    (N), ``bias_term`` (default true), ``weight_filler``, ``bias_filler``.
    Bottom: ids as integer-valued floats in [0, K), any shape S; anything else
    is an error. Top: S + (N,). Params: W (K, N), b (N,).
    Backward: dW[id] += dy for every id (repeats add up), db += sum dy; the
    ids get no gradient.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.embed_param
        if p.num_output <= 0:
            raise self.error("embed_param.num_output must be positive, got %d" % p.num_output)
        if p.input_dim <= 0:
            raise self.error("embed_param.input_dim must be positive, got %d" % p.input_dim)
        self.K, self.N = int(p.input_dim), int(p.num_output)
        self.bias_term = p.bias_term
        if not self.blobs:
            self.blobs = [self.new_blob((self.K, self.N))]
            fill(self.blobs[0], p.weight_filler)
            if self.bias_term:
                self.blobs.append(self.new_blob((self.N,)))
                fill(self.blobs[1], p.bias_filler)

    def reshape(self, bottom, top):
        self.M = bottom[0].count
        top[0].reshape(bottom[0].shape + (self.N,))

    def forward(self, bottom, top):
        self.ids = _integer_ids(self, bottom[0].data.reshape(-1), self.K, "Embed input id")
        y = top[0].data.reshape(self.M, self.N)
        self.xp.take(self.blobs[0].data, self.ids, axis=0, out=y)
        if self.bias_term:
            y += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            raise self.error("cannot backpropagate to the ids (bottom 0)")
        dy = top[0].diff.reshape(self.M, self.N)
        if self.param_needs_grad(0):
            d = self.blobs[0].engine_diff()
            d += _scatter_add_rows(self.xp, self.ids, dy, self.K, self.dtype)
        if self.bias_term and self.param_needs_grad(1):
            d = self.blobs[1].engine_diff()
            d += dy.sum(axis=0)

    def allow_force_backward(self, bottom_index):
        return False


@register("Parameter")
class ParameterLayer(Layer):
    """A learned blob as a top, for nets that use a parameter as data.

    Reads ``parameter_param.shape``. The one param blob (left at zero, as in
    Caffe: it is meant to be loaded or shared) *is* the top: the top shares
    its data and its diff, so what the consumers write into the top diff is
    the param diff.
    """

    exact_num_bottom = 0
    exact_num_top = 1

    def setup(self, bottom, top):
        if not self.blobs:
            self.blobs = [self.new_blob(tuple(self.layer_param.parameter_param.shape.dim))]
        top[0].reshape(self.blobs[0].shape)

    def reshape(self, bottom, top):
        self._share(top[0])

    def forward(self, bottom, top):
        # Again here: the net may have replaced the blob (loaded weights) since reshape.
        self._share(top[0])

    def backward(self, top, propagate_down, bottom):
        pass

    def _share(self, t):
        t.reshape(self.blobs[0].shape)
        t.share_data(self.blobs[0])
        t.share_diff(self.blobs[0])


@register("BatchReindex")
class BatchReindexLayer(Layer):
    """Pick items of bottom[0] along axis 0: y[n] = x[permut[n]].

    Bottoms: x (N, ...) and permut (M,) (integer-valued floats in [0, N),
    repeats allowed; anything else is an error). Top: (M, ...).
    Backward: dx[k] = sum of dy[n] over n with permut[n] == k; permut gets no
    gradient (force_backward skips it).
    """

    exact_num_bottom = 2
    exact_num_top = 1

    def reshape(self, bottom, top):
        if bottom[1].num_axes != 1:
            raise self.error("the index bottom must have exactly one axis, got %s" % (bottom[1].shape,))
        if bottom[0].num_axes < 1:
            raise self.error("bottom 0 needs an item axis, got shape %s" % (bottom[0].shape,))
        top[0].reshape(bottom[1].shape[:1] + bottom[0].shape[1:])

    def forward(self, bottom, top):
        self.ids = _integer_ids(self, bottom[1].data, bottom[0].shape[0], "BatchReindex index")
        self.xp.take(bottom[0].data, self.ids, axis=0, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise self.error("cannot backpropagate to the index (bottom 1)")
        if propagate_down[0]:
            n, inner = bottom[0].shape[0], bottom[0].count_range(1)
            dy = top[0].diff.reshape(top[0].shape[0], inner)
            bottom[0].diff.reshape(n, inner)[...] = _scatter_add_rows(
                self.xp, self.ids, dy, n, self.dtype)

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0
