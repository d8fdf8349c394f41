"""Elementwise activations: ReLU, Sigmoid, TanH, ELU, AbsVal, BNLL, Exp, Log,
Power, Threshold, Clip, Swish.

Every layer here has one bottom and one top of the same shape and may run in
place (``top[0] is bottom[0]``). Layers whose backward needs the input keep a
copy of it when they run in place (Caffe would read the overwritten values).
Scratch arrays come from a :class:`Workspaces` that grows only when a larger
count is asked for, so steady-state iterations allocate nothing.
"""
import numpy as np

from ..layer import Layer, register
from ._scratch import scratch


class Workspaces:
    """Named scratch arrays reused across iterations.

    ``get(name, shape, dtype)`` returns a view of a flat buffer that is
    reallocated only when a larger count (or another dtype) is asked for, as a
    Blob keeps its capacity.
    """

    def __init__(self, xp):
        self.xp = xp
        self._bufs = {}

    def get(self, name, shape, dtype):
        count = 1
        for s in shape:
            count *= int(s)
        dtype = np.dtype(dtype)
        buf = self._bufs.get(name)
        if buf is None or buf.dtype != dtype or buf.size < count:
            buf = self.xp.empty(count, dtype)
            self._bufs[name] = buf
        return buf[:count].reshape(shape)


class NeuronLayer(Layer):
    """Base of the elementwise layers: one bottom, one top shaped like it."""

    exact_num_bottom = 1
    exact_num_top = 1

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ws = Workspaces(self.xp)

    def reshape(self, bottom, top):
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    # -- helpers for subclasses ----------------------------------------
    def scratch(self, name, shape, dtype=None):
        return self.ws.get(name, shape, self.dtype if dtype is None else dtype)

    def keep_input(self, bottom, top):
        """Copy the input before an in-place forward overwrites it (backward needs it)."""
        if top[0] is bottom[0]:
            saved = self.scratch("input", bottom[0].shape)
            saved[...] = bottom[0].data

    def kept_input(self, bottom, top):
        """The forward's input: the copy when in place, else bottom data."""
        if top[0] is bottom[0]:
            return self.scratch("input", bottom[0].shape)
        return bottom[0].data

    def scalar(self, value):
        """``value`` rounded to the layer dtype (Caffe keeps its constants as Dtype)."""
        return self.dtype.type(value)


@register("ReLU", "RELU")
class ReLU(NeuronLayer):
    """y = max(x, 0) + negative_slope * min(x, 0).

    Reads ``relu_param.negative_slope`` (default 0; the engine field is
    ignored). Shapes: top = bottom. dy/dx = 1 for x > 0, negative_slope
    for x <= 0 (Caffe's choice at the kink).
    """

    def setup(self, bottom, top):
        self.negative_slope = self.layer_param.relu_param.negative_slope

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        slope = self.negative_slope
        if slope == 0:
            self.xp.maximum(x, 0, out=y)
            return
        if slope < 0:
            # With a negative slope the output's sign no longer tells x > 0.
            self.keep_input(bottom, top)
        neg = self.scratch("neg", x.shape)
        self.xp.minimum(x, 0, out=neg)
        neg *= slope
        self.xp.maximum(x, 0, out=y)
        y += neg

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        slope = self.negative_slope
        # In place, bottom data holds y, and y > 0 exactly where x > 0 when slope >= 0.
        x = self.kept_input(bottom, top) if slope < 0 else bottom[0].data
        dy, dx = top[0].diff, bottom[0].diff
        positive = scratch("relu.positive", xp, np.bool_, x.shape)
        xp.greater(x, 0, out=positive)
        if slope == 0:
            xp.multiply(dy, positive, out=dx)
            return
        # Caffe's factor (x > 0) + slope * (x <= 0): exactly 1 or slope.
        factor = self.scratch("factor", x.shape)
        xp.less_equal(x, 0, out=factor)
        factor *= slope
        xp.add(factor, positive, out=factor)
        xp.multiply(dy, factor, out=dx)


@register("Sigmoid", "SIGMOID")
class Sigmoid(NeuronLayer):
    """y = 1 / (1 + exp(-x)), computed as 0.5 * tanh(0.5 * x) + 0.5 like Caffe
    (no overflow for large |x|). Reads nothing (sigmoid_param.engine is
    ignored). dy/dx = y * (1 - y)."""

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        self.xp.multiply(x, 0.5, out=y)
        self.xp.tanh(y, out=y)
        y *= 0.5
        y += 0.5

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y, dy, dx = top[0].data, top[0].diff, bottom[0].diff
        grad = self.scratch("grad", y.shape)
        self.xp.subtract(1, y, out=grad)
        grad *= y
        self.xp.multiply(dy, grad, out=dx)


@register("TanH", "TANH")
class TanH(NeuronLayer):
    """y = tanh(x); dy/dx = 1 - y^2. Reads nothing (tanh_param.engine is ignored)."""

    def forward(self, bottom, top):
        self.xp.tanh(bottom[0].data, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y, dy, dx = top[0].data, top[0].diff, bottom[0].diff
        grad = self.scratch("grad", y.shape)
        self.xp.multiply(y, y, out=grad)
        self.xp.subtract(1, grad, out=grad)
        self.xp.multiply(dy, grad, out=dx)


@register("ELU")
class ELU(NeuronLayer):
    """y = x for x > 0, alpha * (exp(x) - 1) otherwise.

    Reads ``elu_param.alpha`` (default 1). dy/dx = 1 for x > 0 and
    y + alpha for x <= 0.
    """

    def setup(self, bottom, top):
        self.alpha = self.layer_param.elu_param.alpha

    def forward(self, bottom, top):
        xp = self.xp
        x, y = bottom[0].data, top[0].data
        if self.alpha < 0:
            # A negative alpha makes y > 0 for x < 0, so backward needs x itself.
            self.keep_input(bottom, top)
        neg = self.scratch("neg", x.shape)
        xp.minimum(x, 0, out=neg)
        xp.exp(neg, out=neg)
        neg -= 1
        neg *= self.alpha
        xp.maximum(x, 0, out=y)
        y += neg

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        # In place with alpha >= 0, bottom data is y and y > 0 exactly where x > 0.
        x = self.kept_input(bottom, top) if self.alpha < 0 else bottom[0].data
        y, dy, dx = top[0].data, top[0].diff, bottom[0].diff
        # Caffe's factor (x > 0) + (alpha + y) * (x <= 0)
        positive = scratch("relu.positive", xp, np.bool_, x.shape)
        nonpositive = self.scratch("nonpositive", x.shape, np.bool_)
        xp.greater(x, 0, out=positive)
        xp.logical_not(positive, out=nonpositive)
        factor = self.scratch("factor", x.shape)
        xp.add(y, self.alpha, out=factor)
        xp.multiply(factor, nonpositive, out=factor)
        xp.add(factor, positive, out=factor)
        xp.multiply(dy, factor, out=dx)


@register("AbsVal", "ABSVAL")
class AbsVal(NeuronLayer):
    """y = |x|; dy/dx = sign(x) (0 at 0). Reads nothing."""

    def forward(self, bottom, top):
        self.keep_input(bottom, top)
        self.xp.abs(bottom[0].data, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = self.kept_input(bottom, top)
        sign = self.scratch("sign", x.shape)
        self.xp.sign(x, out=sign)
        self.xp.multiply(top[0].diff, sign, out=bottom[0].diff)


# Caffe caps x at this value before exp in BNLL's backward (exp(50) still fits a float).
BNLL_THRESHOLD = 50.0


@register("BNLL", "BNLL")
class BNLL(NeuronLayer):
    """Binomial normal log likelihood: y = log(1 + exp(x)), evaluated as
    max(x, 0) + log1p(exp(-|x|)) so large |x| neither overflows nor loses
    precision. Reads nothing. dy/dx = e / (1 + e) with e = exp(min(x, 50))."""

    def forward(self, bottom, top):
        xp = self.xp
        x, y = bottom[0].data, top[0].data
        soft = self.scratch("soft", x.shape)
        xp.abs(x, out=soft)
        xp.negative(soft, out=soft)
        xp.exp(soft, out=soft)
        xp.log1p(soft, out=soft)
        self.keep_input(bottom, top)
        xp.maximum(x, 0, out=y)
        y += soft

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        x = self.kept_input(bottom, top)
        e = self.scratch("e", x.shape)
        denom = self.scratch("denom", x.shape)
        xp.minimum(x, BNLL_THRESHOLD, out=e)
        xp.exp(e, out=e)
        xp.add(e, 1, out=denom)
        xp.divide(e, denom, out=e)
        xp.multiply(top[0].diff, e, out=bottom[0].diff)


def _log_of_base(layer, base):
    """Natural log of ``base`` (-1 means e), in the layer's dtype."""
    if base == -1:
        return layer.scalar(1)
    if not base > 0:
        raise layer.error("base must be strictly positive, or -1 for base e; got %g" % base)
    return np.log(layer.scalar(base))


@register("Exp", "EXP")
class Exp(NeuronLayer):
    """y = base ^ (shift + scale * x); base -1 means e.

    Reads ``exp_param.base`` (default -1), ``scale`` (1), ``shift`` (0).
    Computed as outer * exp(inner * x) with inner = ln(base) * scale and
    outer = base ^ shift, as Caffe does. dy/dx = inner * y.
    """

    def setup(self, bottom, top):
        p = self.layer_param.exp_param
        log_base = _log_of_base(self, p.base)
        self.inner_scale = log_base * self.scalar(p.scale)
        if p.shift == 0:
            self.outer_scale = self.scalar(1)
        elif p.base == -1:
            self.outer_scale = np.exp(self.scalar(p.shift))
        else:
            self.outer_scale = np.power(self.scalar(p.base), self.scalar(p.shift))

    def forward(self, bottom, top):
        xp = self.xp
        x, y = bottom[0].data, top[0].data
        if self.inner_scale == 1:
            xp.exp(x, out=y)
        else:
            xp.multiply(x, self.inner_scale, out=y)
            xp.exp(y, out=y)
        if self.outer_scale != 1:
            y *= self.outer_scale

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        self.xp.multiply(top[0].data, top[0].diff, out=dx)
        if self.inner_scale != 1:
            dx *= self.inner_scale


@register("Log")
class Log(NeuronLayer):
    """y = log_base(shift + scale * x); base -1 means e.

    Reads ``log_param.base`` (default -1), ``scale`` (1), ``shift`` (0).
    dy/dx = scale / ((shift + scale * x) * ln(base)).
    """

    def setup(self, bottom, top):
        p = self.layer_param.log_param
        log_base = _log_of_base(self, p.base)
        if log_base == 0:
            raise self.error("base 1 has no logarithm; use a positive base other than 1, "
                             "or -1 for e")
        self.base_scale = self.scalar(1) / log_base
        self.input_scale = self.scalar(p.scale)
        self.input_shift = self.scalar(p.shift)
        self.backward_num_scale = self.input_scale / log_base

    def _affine(self, x, out):
        """out = shift + scale * x, skipping the no-op steps as Caffe does."""
        if self.input_scale != 1:
            self.xp.multiply(x, self.input_scale, out=out)
        elif out is not x:
            out[...] = x
        if self.input_shift != 0:
            out += self.input_shift

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        self.keep_input(bottom, top)
        if self.input_scale == 1 and self.input_shift == 0:
            self.xp.log(x, out=y)
        else:
            self._affine(x, y)
            self.xp.log(y, out=y)
        if self.base_scale != 1:
            y *= self.base_scale

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = self.kept_input(bottom, top)
        grad = self.scratch("grad", x.shape)
        self._affine(x, grad)
        self.xp.reciprocal(grad, out=grad)
        if self.backward_num_scale != 1:
            grad *= self.backward_num_scale
        self.xp.multiply(top[0].diff, grad, out=bottom[0].diff)


@register("Power", "POWER")
class Power(NeuronLayer):
    """y = (shift + scale * x) ^ power.

    Reads ``power_param.power`` (default 1), ``scale`` (1), ``shift`` (0).
    dy/dx = power * scale * (shift + scale * x) ^ (power - 1), evaluated as
    Caffe does: power * scale * y / (shift + scale * x) in general (so a zero
    base gives nan/inf as in Caffe), with closed forms for power 2, and
    dy/dx = 0 everywhere when power * scale == 0 (y is then a constant).
    """

    def setup(self, bottom, top):
        p = self.layer_param.power_param
        self.power = self.scalar(p.power)
        self.scale = self.scalar(p.scale)
        self.shift = self.scalar(p.shift)
        self.diff_scale = self.power * self.scale

    def _needs_input(self):
        return self.diff_scale != 0 and self.power != 1

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        if self.diff_scale == 0:
            # y does not depend on x; Caffe takes 0^0 = 1.
            y.fill(1 if self.power == 0 else np.power(self.shift, self.power))
            return
        if self._needs_input():
            self.keep_input(bottom, top)
        if self.scale != 1:
            self.xp.multiply(x, self.scale, out=y)
        elif y is not x:
            y[...] = x
        if self.shift != 0:
            y += self.shift
        if self.power != 1:
            self.xp.power(y, self.power, out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        dy, dx = top[0].diff, bottom[0].diff
        if self.diff_scale == 0:
            dx.fill(0)
            return
        if self.power == 1:
            xp.multiply(dy, self.diff_scale, out=dx)
            return
        x = self.kept_input(bottom, top)
        y = top[0].data
        grad = self.scratch("grad", x.shape)
        if self.power == 2:
            # 2 * scale * (shift + scale * x), expanded as Caffe does
            xp.multiply(x, self.diff_scale * self.scale, out=grad)
            if self.shift != 0:
                grad += self.diff_scale * self.shift
        elif self.shift == 0:
            xp.divide(y, x, out=grad)
            grad *= self.power
        else:
            if self.scale != 1:
                xp.multiply(x, self.scale, out=grad)
            else:
                grad[...] = x
            grad += self.shift
            xp.divide(y, grad, out=grad)
            if self.diff_scale != 1:
                grad *= self.diff_scale
        xp.multiply(dy, grad, out=dx)


@register("Threshold", "THRESHOLD")
class Threshold(NeuronLayer):
    """y = 1 if x > threshold else 0. Reads ``threshold_param.threshold``
    (default 0). No gradient (Caffe has no backward for it)."""

    def setup(self, bottom, top):
        self.threshold = self.layer_param.threshold_param.threshold

    def forward(self, bottom, top):
        self.xp.greater(bottom[0].data, self.threshold, out=top[0].data)

    def allow_force_backward(self, bottom_index):
        # Caffe aborts if force_backward asks Threshold for a gradient; we decline instead.
        return False


@register("Clip")
class Clip(NeuronLayer):
    """y = max(min, min(x, max)).

    Reads ``clip_param.min`` and ``clip_param.max`` (both required).
    dy/dx = 1 where min <= x <= max (both ends included, as Caffe), else 0.
    """

    def setup(self, bottom, top):
        p = self.layer_param.clip_param
        if not (p.HasField("min") and p.HasField("max")):
            raise self.error("clip_param needs both min and max")
        if p.min > p.max:
            raise self.error("clip_param min (%g) is greater than max (%g)" % (p.min, p.max))
        self.min = p.min
        self.max = p.max

    def forward(self, bottom, top):
        self.keep_input(bottom, top)
        y = top[0].data
        self.xp.minimum(bottom[0].data, self.max, out=y)
        self.xp.maximum(y, self.min, out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        x = self.kept_input(bottom, top)
        inside = self.scratch("inside", x.shape, np.bool_)
        below_max = self.scratch("below_max", x.shape, np.bool_)
        xp.greater_equal(x, self.min, out=inside)
        xp.less_equal(x, self.max, out=below_max)
        xp.logical_and(inside, below_max, out=inside)
        xp.multiply(top[0].diff, inside, out=bottom[0].diff)


@register("Swish")
class Swish(NeuronLayer):
    """y = x * sigmoid(beta * x).

    Reads ``swish_param.beta`` (default 1). With s = sigmoid(beta * x),
    dy/dx = beta * y + s * (1 - beta * y); s is kept from the forward.
    """

    def setup(self, bottom, top):
        self.beta = self.layer_param.swish_param.beta

    def forward(self, bottom, top):
        xp = self.xp
        x, y = bottom[0].data, top[0].data
        s = self.scratch("sigmoid", x.shape)
        xp.multiply(x, self.beta, out=s)
        s *= 0.5
        xp.tanh(s, out=s)
        s *= 0.5
        s += 0.5
        xp.multiply(x, s, out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        y = top[0].data
        s = self.scratch("sigmoid", y.shape)
        by = self.scratch("beta_y", y.shape)
        grad = self.scratch("grad", y.shape)
        xp.multiply(y, self.beta, out=by)
        xp.subtract(1, by, out=grad)
        grad *= s
        grad += by
        xp.multiply(top[0].diff, grad, out=bottom[0].diff)
