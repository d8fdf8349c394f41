"""Eltwise: element-wise product, weighted sum or maximum of same-shaped bottoms."""
from ..layer import Layer, register
from ..proto import caffe_pb2

_Op = caffe_pb2.EltwiseParameter


@register("Eltwise", "ELTWISE")
class EltwiseLayer(Layer):
    """Combine two or more bottoms of one shape element by element.

    Reads ``eltwise_param``: ``operation`` PROD, SUM (default) or MAX;
    ``coeff`` (SUM only: none, or one per bottom; default 1 each);
    ``stable_prod_grad`` (default true).
    PROD: y = x0 * x1 * ...; dx_i = dy * prod_{j != i} x_j (recomputed from
    the bottoms when ``stable_prod_grad``, else dy * y / x_i).
    SUM: y = sum_i c_i x_i; dx_i = c_i dy.
    MAX: y = max_i x_i; the arg-max bottom of each element gets dy, the others
    0. Ties go as in Caffe: between bottoms 0 and 1 to bottom 1, later bottoms
    only win when strictly greater.
    The top must be a new blob (in place would overwrite a bottom the
    backward still needs).
    """

    min_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.eltwise_param
        if len(p.coeff) not in (0, len(bottom)):
            raise self.error("eltwise_param.coeff needs one value per bottom (%d), got %d"
                             % (len(bottom), len(p.coeff)))
        if p.operation == _Op.PROD and len(p.coeff):
            raise self.error("eltwise_param.coeff applies to operation SUM only")
        self.op = p.operation
        self.coeffs = [float(c) for c in p.coeff] or [1.0] * len(bottom)
        self.stable_prod_grad = p.stable_prod_grad
        self.mask = None

    def reshape(self, bottom, top):
        for i, b in enumerate(bottom):
            if b.shape != bottom[0].shape:
                raise self.error("bottom %d has shape %s, bottom 0 has %s; all must match"
                                 % (i, b.shape, bottom[0].shape))
            if b is top[0]:
                raise self.error("does not allow in-place computation (top is bottom %d)" % i)
        top[0].reshape(bottom[0].shape)
        if self.op == _Op.MAX and (self.mask is None or self.mask.shape != bottom[0].shape):
            self.mask = self.xp.empty(bottom[0].shape, self.xp.int32)
            self.greater = self.xp.empty(bottom[0].shape, bool)

    def forward(self, bottom, top):
        xp = self.xp
        y = top[0].data
        if self.op == _Op.PROD:
            xp.multiply(bottom[0].data, bottom[1].data, out=y)
            for b in bottom[2:]:
                y *= b.data
        elif self.op == _Op.SUM:
            for i, (b, c) in enumerate(zip(bottom, self.coeffs)):
                if i == 0:
                    xp.multiply(b.data, self.dtype.type(c), out=y)
                elif c == 1:
                    y += b.data
                else:
                    y += self.dtype.type(c) * b.data
        else:
            gt = self.greater
            xp.greater(bottom[0].data, bottom[1].data, out=gt)
            xp.copyto(y, bottom[1].data)
            xp.copyto(y, bottom[0].data, where=gt)
            self.mask.fill(1)
            self.mask[gt] = 0
            for i, b in enumerate(bottom[2:], 2):
                xp.greater(b.data, y, out=gt)
                xp.copyto(y, b.data, where=gt)
                self.mask[gt] = i

    def backward(self, top, propagate_down, bottom):
        xp = self.xp
        dy = top[0].diff
        for i, b in enumerate(bottom):
            if not propagate_down[i]:
                continue
            dx = b.diff
            if self.op == _Op.PROD:
                if self.stable_prod_grad:
                    others = [o for j, o in enumerate(bottom) if j != i]
                    dx[...] = others[0].data
                    for o in others[1:]:
                        dx *= o.data
                else:
                    xp.divide(top[0].data, b.data, out=dx)
                dx *= dy
            elif self.op == _Op.SUM:
                if self.coeffs[i] == 1:
                    dx[...] = dy
                else:
                    xp.multiply(dy, self.dtype.type(self.coeffs[i]), out=dx)
            else:
                dx.fill(0)
                xp.copyto(dx, dy, where=self.mask == i)
