"""InnerProduct: a fully connected layer, one GEMM per pass."""
from ..fillers import fill
from ..layer import Layer, add_product_to_diff, register
from .softmax import canonical_axis


@register("InnerProduct", "INNER_PRODUCT")
class InnerProductLayer(Layer):
    """y = x W^T + b over the axes from ``axis`` on.

    Reads ``inner_product_param``: ``num_output`` (N), ``bias_term``
    (default true), ``axis`` (default 1), ``transpose`` (default false),
    ``weight_filler`` and ``bias_filler`` (default constant 0).
    The bottom is viewed as M x K with M = count(0, axis) and
    K = count(axis); top shape = bottom shape[:axis] + (N,).
    Params: weight N x K (K x N when ``transpose``: y = x W), bias (N,).
    Backward: dW += dy^T x (x^T dy when transposed), db += sum_m dy,
    dx = dy W (dy W^T when transposed).
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.inner_product_param
        if p.num_output <= 0:
            raise self.error("inner_product_param.num_output must be positive, got %d" % p.num_output)
        self.N = int(p.num_output)
        self.bias_term = p.bias_term
        self.transpose = p.transpose
        self.axis = canonical_axis(self, bottom[0], p.axis, "inner_product_param.axis")
        self.K = bottom[0].count_range(self.axis)
        if not self.blobs:
            wshape = (self.K, self.N) if self.transpose else (self.N, self.K)
            self.blobs = [self.new_blob(wshape)]
            fill(self.blobs[0], p.weight_filler)
            if self.bias_term:
                self.blobs.append(self.new_blob((self.N,)))
                fill(self.blobs[1], p.bias_filler)

    def reshape(self, bottom, top):
        axis = canonical_axis(self, bottom[0], self.layer_param.inner_product_param.axis,
                              "inner_product_param.axis")
        k = bottom[0].count_range(axis)
        if k != self.K:
            raise self.error("input size incompatible with the weights: bottom %s has %d values "
                             "from axis %d on, the layer was set up for %d"
                             % (bottom[0].shape, k, axis, self.K))
        self.axis = axis
        self.M = bottom[0].count_range(0, axis)
        top[0].reshape(bottom[0].shape[:axis] + (self.N,))

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.M, self.K)
        w = self.blobs[0].data
        y = top[0].data.reshape(self.M, self.N)
        self.xp.matmul(x, w if self.transpose else w.T, out=y)
        if self.bias_term:
            y += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        xp = self.xp
        dy = top[0].diff.reshape(self.M, self.N)
        x = bottom[0].data.reshape(self.M, self.K)
        w = self.blobs[0]
        if self.param_needs_grad(0):
            if self.transpose:
                add_product_to_diff(w, x.T, dy)
            else:
                add_product_to_diff(w, dy.T, x)
        if self.bias_term and self.param_needs_grad(1):
            diff, overwrite = self.blobs[1].grad_target()
            if overwrite:
                dy.sum(axis=0, out=diff)
            else:
                diff += dy.sum(axis=0)
        if propagate_down[0]:
            dx = bottom[0].diff.reshape(self.M, self.K)
            xp.matmul(dy, w.data.T if self.transpose else w.data, out=dx)
