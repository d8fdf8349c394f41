"""Loss layers other than SoftmaxWithLoss: EuclideanLoss, SigmoidCrossEntropyLoss,
HingeLoss, InfogainLoss, MultinomialLogisticLoss, ContrastiveLoss.

Every loss writes a 0-d top; backward scales by the loss weight held in
``top[0].diff``. Label bottoms never receive a gradient.
"""
import numpy as np

from .. import io
from ..layer import Layer, register
from ..proto import caffe_pb2
from .softmax import (LabelIndex, label_dims, normalization_mode, normalizer,
                      reshape_softmax_loss, softmax_into)

_Norm = caffe_pb2.LossParameter
# Caffe's kLOG_THRESHOLD: probabilities are clamped here before the log.
LOG_THRESHOLD = 1e-20


class _LossLayer(Layer):
    """Shared checks of Caffe's LossLayer: two or more bottoms whose first axes agree."""

    is_loss = True
    exact_num_top = 1

    def check_first_dims(self, bottom):
        a, b = bottom[0], bottom[1]
        if a.num_axes < 1 or b.num_axes < 1 or a.shape[0] != b.shape[0]:
            raise self.error("bottoms 0 %s and 1 %s must have the same first dimension"
                             % (a.shape, b.shape))

    def refuse_label_gradient(self, propagate_down, index=1, what="label inputs"):
        if len(propagate_down) > index and propagate_down[index]:
            raise self.error("cannot backpropagate to %s (bottom %d)" % (what, index))

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    def _set_dims(self, dims):
        """(N, D) of a per-item classifier; the label index is rebuilt only when they change."""
        if getattr(self, "dims", None) != dims:
            self.dims = dims
            self.index = LabelIndex(self.xp, dims[0], dims[1], 1, None)

    def legacy_dims(self, blob, which):
        try:
            return blob.num, blob.channels, blob.height, blob.width
        except ValueError as exc:
            raise self.error("bottom %d: %s" % (which, exc)) from None


@register("EuclideanLoss", "EUCLIDEAN_LOSS")
class EuclideanLossLayer(_LossLayer):
    """loss = sum((a - b)^2) / (2 N), N = a.shape[0].

    Bottoms a and b with the same first dimension and the same count per
    item (count(1)); both receive gradients: da = (a - b) * w / N, db = -da.
    """

    exact_num_bottom = 2

    def reshape(self, bottom, top):
        self.check_first_dims(bottom)
        if bottom[0].count_range(1) != bottom[1].count_range(1):
            raise self.error("inputs must have the same dimension per item: %s vs %s"
                             % (bottom[0].shape, bottom[1].shape))
        top[0].reshape(())
        if getattr(self, "diff", None) is None or self.diff.shape != bottom[0].shape:
            self.diff = self.xp.empty(bottom[0].shape, self.dtype)

    def forward(self, bottom, top):
        a = bottom[0].data
        self.xp.subtract(a, bottom[1].data.reshape(a.shape), out=self.diff)
        d = self.diff.reshape(-1)
        top[0].data[...] = d.dot(d) / self.dtype.type(bottom[0].shape[0]) / self.dtype.type(2)

    def backward(self, top, propagate_down, bottom):
        num = self.dtype.type(bottom[0].shape[0])
        for i, sign in ((0, 1), (1, -1)):
            if propagate_down[i]:
                alpha = top[0].diff * self.dtype.type(sign) / num
                self.xp.multiply(self.diff.reshape(bottom[i].shape), alpha, out=bottom[i].diff)

    def allow_force_backward(self, bottom_index):
        return True


@register("SigmoidCrossEntropyLoss", "SIGMOID_CROSS_ENTROPY_LOSS")
class SigmoidCrossEntropyLossLayer(_LossLayer):
    """Cross-entropy of sigmoid(x) against targets t in [0, 1].

    Bottoms: scores x and targets t of the same count (first dims equal).
    Reads ``loss_param.ignore_label`` (positions whose int(t) equals it are
    skipped) and ``loss_param.normalization`` / legacy ``normalize``;
    without either the mode is BATCH_SIZE (Caffe's default for this layer).

    Per element, in the overflow-free form
    l = -(x (t - [x >= 0]) - log(1 + exp(x - 2 x [x >= 0]))),
    loss = sum of valid l / normalizer; dx = (sigmoid(x) - t) * w / normalizer.
    """

    exact_num_bottom = 2

    def setup(self, bottom, top):
        lp = self.layer_param.loss_param
        self.ignore_label = lp.ignore_label if lp.HasField("ignore_label") else None
        self.mode = normalization_mode(lp, _Norm.BATCH_SIZE)

    def reshape(self, bottom, top):
        self.check_first_dims(bottom)
        if bottom[0].count != bottom[1].count:
            raise self.error("scores %s and targets %s must have the same count"
                             % (bottom[0].shape, bottom[1].shape))
        self.outer = bottom[0].shape[0]
        self.inner = bottom[0].count_range(1)
        top[0].reshape(())

    def forward(self, bottom, top):
        xp, dt = self.xp, self.dtype
        x = bottom[0].data
        t = bottom[1].data.reshape(x.shape)
        pos = (x >= 0).astype(dt)
        elem = x * (t - pos) - xp.log1p(xp.exp(x - 2 * x * pos))
        # Caffe's sigmoid: 0.5 tanh(x / 2) + 0.5, stable for large |x|.
        self.sigmoid = dt.type(0.5) * xp.tanh(dt.type(0.5) * x) + dt.type(0.5)
        if self.ignore_label is None:
            self.valid = None
            loss = -elem.sum()
            count = xp.asarray(elem.size)
        else:
            self.valid = t.astype(np.int64) != self.ignore_label
            loss = -(elem * self.valid).sum()
            count = self.valid.sum()
        self.norm = normalizer(self.mode, self.outer, self.inner, count, dt)
        top[0].data[...] = loss / self.norm

    def backward(self, top, propagate_down, bottom):
        self.refuse_label_gradient(propagate_down)
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        self.xp.subtract(self.sigmoid, bottom[1].data.reshape(dx.shape), out=dx)
        if self.valid is not None:
            dx *= self.valid
        dx *= top[0].diff / self.norm


@register("HingeLoss", "HINGE_LOSS")
class HingeLossLayer(_LossLayer):
    """One-vs-all hinge loss.

    Bottoms: scores x (N, ...) flattened to (N, D), and N integer labels.
    Reads ``hinge_loss_param.norm`` (L1 default, or L2).
    With s = -1 at the label's column and +1 elsewhere, m = max(0, 1 + s x):
    L1: loss = sum(m) / N,   dx = s [m > 0] w / N;
    L2: loss = sum(m^2) / N, dx = 2 s m w / N.
    """

    exact_num_bottom = 2

    def setup(self, bottom, top):
        self.l2 = self.layer_param.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L2

    def reshape(self, bottom, top):
        self.check_first_dims(bottom)
        num = bottom[0].shape[0]
        if bottom[1].count != num:
            raise self.error("needs one label per item: %d labels (shape %s) for %d items"
                             % (bottom[1].count, bottom[1].shape, num))
        self._set_dims((num, bottom[0].count // num if num else 0))
        top[0].reshape(())

    def forward(self, bottom, top):
        xp, dt = self.xp, self.dtype
        idx, _, _ = self.index.gather(bottom[1].data, self)
        sign = xp.ones(bottom[0].count, dt)
        sign[idx] = -1
        self.sign = sign.reshape(self.dims)
        self.margin = xp.maximum(dt.type(1) + self.sign * bottom[0].data.reshape(self.dims), dt.type(0))
        m = self.margin.reshape(-1)
        loss = m.dot(m) if self.l2 else m.sum()
        top[0].data[...] = loss / dt.type(self.dims[0])

    def backward(self, top, propagate_down, bottom):
        self.refuse_label_gradient(propagate_down)
        if not propagate_down[0]:
            return
        dt = self.dtype
        scale = top[0].diff / dt.type(self.dims[0])
        dx = bottom[0].diff.reshape(self.dims)
        if self.l2:
            self.xp.multiply(self.margin, self.sign, out=dx)
            dx *= dt.type(2) * scale
        else:
            self.xp.multiply(self.margin > 0, self.sign, out=dx)
            dx *= scale


@register("InfogainLoss", "INFOGAIN_LOSS")
class InfogainLossLayer(_LossLayer):
    """Infogain loss: a softmax, then the log-probabilities weighted by a row of H.

    Bottoms: scores (..., C, ...) with C on ``infogain_loss_param.axis``
    (default 1), outer*inner integer labels, and optionally H (C x C) as a
    third bottom; otherwise H is read from ``infogain_loss_param.source``
    (a BlobProto .binaryproto, path relative to the working directory).
    Tops: the loss and, optionally, the softmax probabilities.
    Reads ``loss_param.ignore_label`` and ``loss_param.normalization``
    (default VALID; the legacy ``normalize`` is refused, as in Caffe).

    p = softmax(scores);
    loss = -sum_{valid (o,i)} sum_k H[label, k] log(max(p[o,k,i], 1e-20)) / normalizer;
    d scores[o,k,i] = (p[o,k,i] sum_j H[label, j] - H[label, k]) w / normalizer.
    """

    min_bottom = 2
    max_bottom = 3
    exact_num_top = None
    min_top = 1
    max_top = 2

    def setup(self, bottom, top):
        lp = self.layer_param.loss_param
        if lp.HasField("normalize"):
            raise self.error("loss_param.normalize is deprecated for InfogainLoss; "
                             "use loss_param.normalization")
        self.mode = lp.normalization
        self.ignore_label = lp.ignore_label if lp.HasField("ignore_label") else None
        self.H = None
        if len(bottom) < 3:
            p = self.layer_param.infogain_loss_param
            if not p.HasField("source"):
                raise self.error("needs the infogain matrix: infogain_loss_param.source "
                                 "or a third bottom")
            try:
                host = io.read_blobproto(p.source)
            except ValueError as exc:
                raise self.error("cannot read infogain matrix: %s" % exc) from None
            self.H = self.xp.asarray(host.astype(self.dtype))
        self._dims = None

    def reshape(self, bottom, top):
        self.check_first_dims(bottom)
        axis, dims = label_dims(self, bottom, self.layer_param.infogain_loss_param.axis,
                                "infogain axis")
        hcount = bottom[2].count if len(bottom) > 2 else self.H.size
        if hcount != dims[1] * dims[1]:
            raise self.error("the infogain matrix H must be %dx%d (%d values), got %d values"
                             % (dims[1], dims[1], dims[1] * dims[1], hcount))
        reshape_softmax_loss(self, bottom, top, dims)

    def _matrix(self, bottom):
        c = self._dims[1]
        return (bottom[2].data if len(bottom) > 2 else self.H).reshape(c, c)

    def forward(self, bottom, top):
        xp, dt = self.xp, self.dtype
        outer, c, inner = self._dims
        softmax_into(bottom[0].data.reshape(self._dims), self.prob)
        _, lab, valid = self.index.gather(bottom[1].data, self)
        logp = xp.log(xp.maximum(self.prob, dt.type(LOG_THRESHOLD)))
        # (outer*inner, C) rows: H[label] against the log-probabilities of that position.
        per = (self._matrix(bottom)[lab] * logp.transpose(0, 2, 1).reshape(-1, c)).sum(axis=1)
        if valid is None:
            loss = -per.sum()
            count = xp.asarray(per.size)
        else:
            loss = -(per * valid).sum()
            count = valid.sum()
        self._lab, self._valid = lab, valid
        self._norm = normalizer(self.mode, outer, inner, count, dt)
        top[0].data[...] = loss / self._norm
        if len(top) > 1:
            top[1].data[...] = self.prob.reshape(top[1].shape)

    def backward(self, top, propagate_down, bottom):
        self.refuse_label_gradient(propagate_down)
        self.refuse_label_gradient(propagate_down, 2, "infogain inputs")
        if not propagate_down[0]:
            return
        outer, c, inner = self._dims
        H = self._matrix(bottom)
        rows = H[self._lab].reshape(outer, inner, c).transpose(0, 2, 1)
        row_sums = H.sum(axis=1)[self._lab].reshape(outer, 1, inner)
        dx = bottom[0].diff.reshape(self._dims)
        self.xp.multiply(self.prob, row_sums, out=dx)
        dx -= rows
        scale = top[0].diff / self._norm
        if self._valid is None:
            dx *= scale
        else:
            dx *= (self._valid.reshape(outer, 1, inner) * scale).astype(self.dtype)

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0


@register("MultinomialLogisticLoss", "MULTINOMIAL_LOGISTIC_LOSS")
class MultinomialLogisticLossLayer(_LossLayer):
    """loss = -sum_n log(max(p[n, label_n], 1e-20)) / N on given probabilities.

    Bottoms: probabilities (N, ...) flattened to (N, D), and N labels
    (N x 1 x 1 x 1 or N). dp[n, label_n] = -w / (N max(p, 1e-20)), 0 elsewhere.
    """

    exact_num_bottom = 2

    def reshape(self, bottom, top):
        self.check_first_dims(bottom)
        _, c, h, w = self.legacy_dims(bottom[1], 1)
        if (c, h, w) != (1, 1, 1):
            raise self.error("labels must be N x 1 x 1 x 1 (one per item), got %s" % (bottom[1].shape,))
        num = bottom[0].shape[0]
        self._set_dims((num, bottom[0].count // num if num else 0))
        top[0].reshape(())

    def forward(self, bottom, top):
        xp, dt = self.xp, self.dtype
        self._idx, _, _ = self.index.gather(bottom[1].data, self)
        self._p = xp.maximum(bottom[0].data.reshape(-1)[self._idx], dt.type(LOG_THRESHOLD))
        top[0].data[...] = -xp.log(self._p).sum() / dt.type(self.dims[0])

    def backward(self, top, propagate_down, bottom):
        self.refuse_label_gradient(propagate_down)
        if not propagate_down[0]:
            return
        dx = bottom[0].diff.reshape(-1)
        dx[...] = 0
        dx[self._idx] = -top[0].diff / self.dtype.type(self.dims[0]) / self._p


@register("ContrastiveLoss", "CONTRASTIVE_LOSS")
class ContrastiveLossLayer(_LossLayer):
    """Contrastive loss of feature pairs (Hadsell et al.).

    Bottoms: a and b (N x C, or N x C x 1 x 1) and the similarity y (N,
    int(y) != 0 means similar). Reads ``contrastive_loss_param.margin``
    (default 1) and ``legacy_version``. With d^2 = |a - b|^2:
    loss = sum_n [y_n d^2 + (1 - y_n) max(margin - d, 0)^2] / (2N),
    legacy: max(margin - d^2, 0) replaces max(margin - d, 0)^2.
    da = -db = w/N * (a - b) for similar pairs; for dissimilar ones with a
    positive margin term: -w/N * (margin - d)/(d + 1e-4) * (a - b)
    (legacy: -w/N * (a - b)), else 0. y gets no gradient (Caffe skips it silently).
    """

    exact_num_bottom = 3

    def setup(self, bottom, top):
        p = self.layer_param.contrastive_loss_param
        self.margin = self.dtype.type(p.margin)
        self.legacy = p.legacy_version

    def reshape(self, bottom, top):
        self.check_first_dims(bottom)
        n0, c0, h0, w0 = self.legacy_dims(bottom[0], 0)
        _, c1, h1, w1 = self.legacy_dims(bottom[1], 1)
        _, c2, h2, w2 = self.legacy_dims(bottom[2], 2)
        if c0 != c1 or (h0, w0, h1, w1) != (1, 1, 1, 1):
            raise self.error("a %s and b %s must both be N x C (x 1 x 1) with the same C"
                             % (bottom[0].shape, bottom[1].shape))
        if (c2, h2, w2) != (1, 1, 1) or bottom[2].count != n0:
            raise self.error("the similarity bottom must hold one value per pair (N x 1 x 1 x 1), "
                             "got %s" % (bottom[2].shape,))
        self.dims = (n0, c0)
        top[0].reshape(())

    def forward(self, bottom, top):
        xp, dt = self.xp, self.dtype
        self.diff = bottom[0].data.reshape(self.dims) - bottom[1].data.reshape(self.dims)
        self.dist_sq = (self.diff * self.diff).sum(axis=1)
        # static_cast<int>: 0.5 counts as dissimilar.
        self.similar = bottom[2].data.reshape(-1).astype(np.int64) != 0
        if self.legacy:
            far = xp.maximum(self.margin - self.dist_sq, dt.type(0))
        else:
            far = xp.maximum(self.margin - xp.sqrt(self.dist_sq), dt.type(0)) ** 2
        loss = xp.where(self.similar, self.dist_sq, far).sum()
        top[0].data[...] = loss / dt.type(self.dims[0]) / dt.type(2)

    def backward(self, top, propagate_down, bottom):
        xp, dt = self.xp, self.dtype
        if not (propagate_down[0] or propagate_down[1]):
            return
        alpha = top[0].diff / dt.type(self.dims[0])
        if self.legacy:
            mdist = self.margin - self.dist_sq
            far = -xp.ones_like(mdist)
        else:
            dist = xp.sqrt(self.dist_sq)
            mdist = self.margin - dist
            far = -mdist / (dist + dt.type(1e-4))
        coef = xp.where(self.similar, dt.type(1), xp.where(mdist > 0, far, dt.type(0)))
        grad = (coef * alpha)[:, None] * self.diff
        for i, sign in ((0, 1), (1, -1)):
            if propagate_down[i]:
                bottom[i].diff.reshape(self.dims)[...] = grad if sign > 0 else -grad

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2
