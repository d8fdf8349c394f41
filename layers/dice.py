"""Dice layers for two-class segmentation: the ``Dice`` metric and the ``DiceLoss`` loss.

Plain pycaffe plugins (``import caffe``), reached from a prototxt with
``type: "Python"`` and ``python_param { module: "dice" layer: "Dice" }``
(or ``"DiceLoss"``); protonet finds this folder by itself. See README.md here
for prototxt snippets.

Both take ``bottom[0]`` = scores N x C x H x W (C >= 2; class 1 is the
foreground, class 0 the background; any number of spatial axes) and
``bottom[1]`` = labels N x 1 x H x W (1 foreground, 0 background), and give a
``top[0]`` of shape (1,).
"""
import ast

import numpy as np

import caffe


def _check_bottoms(layer, bottom):
    if len(bottom) != 2:
        raise ValueError("layer '%s' (%s) needs two bottoms: scores and labels, got %d"
                         % (layer.name, type(layer).__name__, len(bottom)))
    scores, labels = bottom[0].shape, bottom[1].shape
    if len(scores) < 2 or scores[1] < 2:
        raise ValueError("layer '%s' (%s): scores must be N x C x ... with C >= 2 classes, got %s"
                         % (layer.name, type(layer).__name__, scores))
    want = (scores[0], 1) + tuple(scores[2:])
    if tuple(labels) != want:
        raise ValueError("layer '%s' (%s): labels must have shape %s (N x 1 x spatial of the "
                         "scores %s), got %s" % (layer.name, type(layer).__name__, want, scores,
                                                 labels))


def _param_dict(layer):
    """``param_str`` as a dict: a Python/JSON dict literal, or empty."""
    text = (layer.param_str or "").strip()
    if not text:
        return {}
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, dict):
        raise ValueError("layer '%s' (%s): param_str must be a dict such as \"{'eps': 1e-5}\", got %r"
                         % (layer.name, type(layer).__name__, text))
    return value


class Dice(caffe.Layer):
    """Dice coefficient of the predicted foreground against the label (a metric).

    Per image n, with P = pixels whose highest score is class 1 and L = the
    label's foreground: ``D_n = 2 |P and L| / (|P| + |L|)``; ``top[0]`` is the
    batch mean of D_n. This is the DIGITS ``Dice`` layer's value (with two
    classes P is its argmax); where it divides 0 by 0 (no foreground in the
    label nor the prediction) D_n is 1, the images agreeing perfectly, where
    DIGITS' layer gives NaN. No gradient (use :class:`DiceLoss` to train).
    """

    def setup(self, bottom, top):
        _check_bottoms(self, bottom)

    def reshape(self, bottom, top):
        _check_bottoms(self, bottom)
        top[0].reshape(1)

    def forward(self, bottom, top):
        axes = tuple(range(1, bottom[0].data.ndim - 1))        # spatial axes of an N x ... map
        predicted = np.argmax(bottom[0].data, axis=1) == 1
        label = np.asarray(bottom[1].data[:, 0], dtype=np.float64)
        area_p = predicted.sum(axis=axes, dtype=np.float64)
        area_l = label.sum(axis=axes)
        overlap = np.where(predicted, label, 0.0).sum(axis=axes)
        total = area_p + area_l
        dice = np.where(total > 0, 2.0 * overlap / np.where(total > 0, total, 1.0), 1.0)
        top[0].data[...] = dice.mean()

    def backward(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise ValueError("layer '%s' (Dice) is a metric and has no gradient; use DiceLoss "
                             "to train on the Dice coefficient" % self.name)

    def allow_force_backward(self, bottom_index):
        # a metric, like Caffe's Accuracy: force_backward does not ask it for gradients
        return False


class DiceLoss(caffe.Layer):
    """Soft Dice loss: one minus the Dice coefficient of the softmax foreground probability.

    With p = softmax of the scores over the class axis, p1 its class-1
    (foreground) channel and l the label (0/1; soft labels in [0, 1] work
    too), per image n (sums over its pixels):

        I_n = sum(p1 * l),  S_n = sum(p1) + sum(l) + eps
        loss = (1/N) * sum_n (1 - 2 I_n / S_n)

    Gradient (through the softmax, dp1/ds_c = p1 (delta(c, 1) - p_c)):

        dloss/dp1 = -(2/N) (l S_n - I_n) / S_n^2
        dloss/ds_c = dloss/dp1 * p1 * (delta(c, 1) - p_c)

    scaled by the loss weight in ``top[0].diff``. As with any Python loss
    layer in Caffe, the prototxt must say ``loss_weight: 1`` (or another
    weight) for the net to train on it. Labels get no gradient. An image
    with no foreground in its label has loss 1 and no gradient, so pair this
    loss with SoftmaxWithLoss when such images are common.
    ``param_str``: ``"{'eps': 1e-5}"`` (default eps 1e-5, only to avoid 0/0).
    """

    def setup(self, bottom, top):
        _check_bottoms(self, bottom)
        params = _param_dict(self)
        unknown = set(params) - {"eps"}
        if unknown:
            raise ValueError("layer '%s' (DiceLoss): unknown param_str keys %s (known: eps)"
                             % (self.name, sorted(unknown)))
        self.eps = float(params.get("eps", 1e-5))
        if not self.eps >= 0:
            raise ValueError("layer '%s' (DiceLoss): eps must be >= 0, got %r" % (self.name, self.eps))

    def reshape(self, bottom, top):
        _check_bottoms(self, bottom)
        top[0].reshape(1)

    def forward(self, bottom, top):
        scores = bottom[0].data
        e = np.exp(scores - scores.max(axis=1, keepdims=True))
        self.prob = e / e.sum(axis=1, keepdims=True)
        p1 = self.prob[:, 1]
        label = bottom[1].data[:, 0]
        axes = tuple(range(1, p1.ndim))
        self.overlap = (p1 * label).sum(axis=axes, dtype=np.float64)
        self.total = p1.sum(axis=axes, dtype=np.float64) + label.sum(axis=axes, dtype=np.float64) \
            + self.eps
        top[0].data[...] = np.mean(1.0 - 2.0 * self.overlap / self.total)

    def backward(self, top, propagate_down, bottom):
        if len(propagate_down) > 1 and propagate_down[1]:
            raise ValueError("layer '%s' (DiceLoss) cannot backpropagate to the labels" % self.name)
        if not propagate_down[0]:
            return
        n = bottom[0].shape[0]
        p = self.prob
        p1 = p[:, 1]
        label = bottom[1].data[:, 0]
        spatial = (slice(None),) + (np.newaxis,) * (p1.ndim - 1)
        total, overlap = self.total[spatial], self.overlap[spatial]
        weight = float(top[0].diff.flat[0])
        grad_p1 = (-2.0 * weight / n) * (label * total - overlap) / (total * total)
        # Softmax backward for one used channel: g * p1 * (onehot(1) - p).
        common = grad_p1 * p1
        diff = bottom[0].diff
        diff[...] = -common[:, np.newaxis] * p
        diff[:, 1] += common

    def allow_force_backward(self, bottom_index):
        # As Caffe's loss layers: force_backward never asks for the labels' gradient.
        return bottom_index != 1
