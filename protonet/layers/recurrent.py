"""Recurrent layers: RNN and LSTM (Caffe's RecurrentLayer family) and LSTMUnit.

Caffe builds RNN/LSTM as an unrolled internal net of InnerProduct, Scale,
Eltwise, TanH and LSTMUnit layers. Here the same arithmetic runs directly: the
input-to-hidden products for all time steps are one GEMM, then a loop over the
T time steps does one whole-batch GEMM each (backpropagation through time runs
the loop backwards).

Blob layout shared by RNN and LSTM (Caffe's):
  bottom: x (T x N x ...), cont (T x N), [x_static (N x ...)], [h_0 (, c_0)]
  top:    output (T x N x num_output), [h_T (, c_T)]
x_static is present when there is one more bottom than the required ones;
h_0/c_0 and h_T/c_T exist only with ``recurrent_param.expose_hidden``.
cont_t = 0 marks the first step of a new sequence: it zeroes the previous
hidden state (and, for LSTM, the previous cell) at step t.
"""
import logging

from .. import fillers
from ..layer import Layer, register

_log = logging.getLogger(__name__)


def _sigmoid(xp, x, out):
    # tanh form: no exp overflow for large negative inputs, same value as 1/(1+e^-x).
    xp.multiply(x, 0.5, out=out)
    xp.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


def _lstm_cell_forward(xp, pre, c_prev, cont, acts, c, tanh_c, h):
    """One LSTM step for the whole batch, gates ordered i, f, o, g.

    pre (N x 4H) gate pre-activations, c_prev (N x H), cont (N x 1).
    Writes acts (N x 4H: sigmoid(i, f, o), tanh(g)), c, tanh_c and h.
    c = cont * f * c_prev + i * g,  h = o * tanh(c).
    """
    H = c.shape[-1]
    _sigmoid(xp, pre[:, :3 * H], acts[:, :3 * H])
    xp.tanh(pre[:, 3 * H:], out=acts[:, 3 * H:])
    i, f, o, g = acts[:, :H], acts[:, H:2 * H], acts[:, 2 * H:3 * H], acts[:, 3 * H:]
    xp.multiply(f, c_prev, out=c)
    c *= cont
    c += i * g
    xp.tanh(c, out=tanh_c)
    xp.multiply(o, tanh_c, out=h)


def _lstm_cell_backward(xp, dh, dc_in, acts, c_prev, cont, tanh_c, dpre):
    """Gradients of one LSTM step. dh, dc_in: diffs arriving at h and c.

    Writes the gate pre-activation diffs into dpre (N x 4H) and returns the
    diff of c_prev. The forget gate gets cont * dc * c_prev * f * (1 - f), the
    exact derivative (Caffe's GPU kernel; its CPU code agrees for cont in {0, 1}).
    """
    H = tanh_c.shape[-1]
    i, f, o, g = acts[:, :H], acts[:, H:2 * H], acts[:, 2 * H:3 * H], acts[:, 3 * H:]
    dc = dh * o
    dc *= 1 - tanh_c * tanh_c
    dc += dc_in
    dcc = dc * cont
    xp.multiply(dc, g, out=dpre[:, :H])
    dpre[:, :H] *= i * (1 - i)
    xp.multiply(dcc, c_prev, out=dpre[:, H:2 * H])
    dpre[:, H:2 * H] *= f * (1 - f)
    xp.multiply(dh, tanh_c, out=dpre[:, 2 * H:3 * H])
    dpre[:, 2 * H:3 * H] *= o * (1 - o)
    xp.multiply(dc, i, out=dpre[:, 3 * H:])
    dpre[:, 3 * H:] *= 1 - g * g
    dcc *= f
    return dcc


class _Recurrent(Layer):
    """Common plumbing of RNN and LSTM (Caffe's RecurrentLayer).

    Reads ``recurrent_param``: num_output, weight_filler, bias_filler,
    debug_info, expose_hidden. Subclasses set ``num_states`` (recurrent blobs
    carried between steps) and implement ``_param_specs``, ``_alloc``,
    ``forward`` and ``backward``.
    """

    num_states = 1

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        rp = self.layer_param.recurrent_param
        self.expose_hidden = bool(rp.expose_hidden)
        exposed = self.num_states if self.expose_hidden else 0
        # Caffe: x, cont, the exposed states, and optionally a static input.
        self.min_bottom = 2 + exposed
        self.max_bottom = 3 + exposed
        self.exact_num_top = 1 + exposed

    def allow_force_backward(self, bottom_index):
        # The continuation indicators take no gradient.
        return bottom_index != 1

    def setup(self, bottom, top):
        rp = self.layer_param.recurrent_param
        self.H = int(rp.num_output)
        if self.H <= 0:
            raise self.error("recurrent_param.num_output must be positive, got %d" % self.H)
        self.debug_info = bool(rp.debug_info)
        x, cont = bottom[0], bottom[1]
        if x.num_axes < 3:
            raise self.error("bottom[0] (x) must have at least 3 axes (T x N x ...), got %s"
                             % (x.shape,))
        self.T = x.shape[0]
        if cont.num_axes != 2 or cont.shape != x.shape[:2]:
            raise self.error("bottom[1] (cont) must be T x N = %s, got %s" % (x.shape[:2], cont.shape))
        exposed = self.num_states if self.expose_hidden else 0
        self.static_input = len(bottom) > 2 + exposed
        self.D = x.count_range(2)
        self.Ds = None
        if self.static_input:
            xs = bottom[2]
            if xs.num_axes < 1 or xs.shape[0] != x.shape[1]:
                raise self.error("bottom[2] (x_static) must be N x ... with N = %d, got %s"
                                 % (x.shape[1], xs.shape))
            self.Ds = xs.count_range(1)
        self.blobs = []
        specs = self._param_specs(rp)
        for shape, filler in specs:
            blob = self.new_blob(shape)
            fillers.fill(blob, filler)
            self.blobs.append(blob)
        # Caffe's unrolled net fills the per-step layers' blobs at every time step
        # before they share the first step's: draw the other T - 1 fills too, so the
        # random stream moves on as in Caffe
        for _ in range(self.T - 1):
            for shape, filler in specs[len(specs) - self.per_step_params:]:
                fillers.fill_array(filler, shape, self.dtype)
        self._carry = None
        self._ws_key = None

    def reshape(self, bottom, top):
        x, cont = bottom[0], bottom[1]
        if x.num_axes < 3 or x.shape[0] != self.T:
            raise self.error("bottom[0] (x) must keep T = %d time steps and 3+ axes, got %s"
                             % (self.T, x.shape))
        if x.count_range(2) != self.D:
            raise self.error("bottom[0] (x) has %d inputs per step, the weights expect %d"
                             % (x.count_range(2), self.D))
        N = x.shape[1]
        if cont.num_axes != 2 or cont.shape != (self.T, N):
            raise self.error("bottom[1] (cont) must be T x N = %s, got %s" % ((self.T, N), cont.shape))
        if self.static_input:
            xs = bottom[2]
            if xs.num_axes < 1 or xs.shape[0] != N or xs.count_range(1) != self.Ds:
                raise self.error("bottom[2] (x_static) must be %d x (%d values), got %s"
                                 % (N, self.Ds, xs.shape))
        state_shape = (1, N, self.H)
        if self.expose_hidden:
            first = 2 + int(self.static_input)
            for j, b in enumerate(bottom[first:]):
                if b.shape != state_shape:
                    raise self.error("bottom[%d] (initial state) must be %s, got %s"
                                     % (first + j, state_shape, b.shape))
        top[0].reshape(self.T, N, self.H)
        for t in top[1:]:
            t.reshape(state_shape)
        self.N = N
        key = (self.T, N)
        if key != self._ws_key:
            self._ws_key = key
            self._alloc(self.T, N)
            if not self.expose_hidden:
                self._resize_carry(N)

    def _resize_carry(self, N):
        # Without expose_hidden Caffe starts each forward from the last one's
        # final state. When N changes its blob keeps a prefix of the old
        # buffer when shrinking (the first N streams) and is zeroed when grown.
        xp = self.xp
        new = [xp.zeros((1, N, self.H), self.dtype) for _ in range(self.num_states)]
        if self._carry is not None and self._carry[0].shape[1] >= N:
            for a, b in zip(new, self._carry):
                a[...] = b[:, :N]
        self._carry = new

    def _initial_states(self, bottom):
        if self.expose_hidden:
            first = 2 + int(self.static_input)
            return [b.data.reshape(self.N, self.H) for b in bottom[first:first + self.num_states]]
        return [c.reshape(self.N, self.H) for c in self._carry]

    def _finish_forward(self, top, finals):
        if self.expose_hidden:
            for t, s in zip(top[1:], finals):
                t.data[...] = s
        else:
            for c, s in zip(self._carry, finals):
                c[0] = s

    def _input_products(self, bottom, W_x, b, W_s, out):
        """out (T x N x G) = x W_x^T + b (+ x_static W_s^T for every step)."""
        xp = self.xp
        TN = self.T * self.N
        xp.matmul(bottom[0].data.reshape(TN, self.D), W_x.T, out=out.reshape(TN, -1))
        out += b
        if self.static_input:
            out += xp.matmul(bottom[2].data.reshape(self.N, self.Ds), W_s.T)

    def _input_backward(self, propagate_down, bottom, dpre, i_W, i_b, i_Ws):
        """Diffs of x, x_static and the input-side weights from dpre (T x N x G)."""
        xp = self.xp
        TN = self.T * self.N
        d2 = dpre.reshape(TN, -1)
        x2 = bottom[0].data.reshape(TN, self.D)
        if self.param_needs_grad(i_W):
            self.blobs[i_W].engine_diff()[...] += xp.matmul(d2.T, x2)
        if self.param_needs_grad(i_b):
            self.blobs[i_b].engine_diff()[...] += d2.sum(axis=0)
        if propagate_down[0]:
            xp.matmul(d2, self.blobs[i_W].data, out=bottom[0].diff.reshape(TN, self.D))
        if self.static_input:
            ds = dpre.sum(axis=0)
            if self.param_needs_grad(i_Ws):
                self.blobs[i_Ws].engine_diff()[...] += xp.matmul(ds.T, bottom[2].data.reshape(self.N, self.Ds))
            if propagate_down[2]:
                xp.matmul(ds, self.blobs[i_Ws].data, out=bottom[2].diff.reshape(self.N, self.Ds))
        if self.expose_hidden:
            # Caffe shares only the data of h_0/c_0 with its unrolled net, so no
            # gradient reaches them (and the diffs of h_T/c_T are ignored).
            first = 2 + int(self.static_input)
            for j in range(first, len(bottom)):
                if propagate_down[j]:
                    bottom[j].diff[...] = 0

    def _debug(self, what, step, **arrays):
        if self.debug_info:
            xp = self.xp
            parts = ", ".join("%s %.6g" % (k, float(xp.abs(v).mean())) for k, v in arrays.items())
            _log.info("    [%s] layer %s step %d: mean |.| %s", what, self.name, step, parts)


@register("RNN")
class RNNLayer(_Recurrent):
    """Elman RNN with a tanh hidden state and a tanh output (Caffe's RNN).

    Reads recurrent_param (num_output H, weight_filler, bias_filler,
    debug_info, expose_hidden). Bottoms: x (T x N x ...), cont (T x N),
    optional x_static (N x ...), with expose_hidden h_0 (1 x N x H).
    Tops: o (T x N x H), with expose_hidden h_T (1 x N x H).
    Params (Caffe's order): W_xh (H x D), b_h (H), [W_xh_static (H x Ds)],
    W_hh (H x H), W_ho (H x H), b_o (H).

        h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static])
        o_t = tanh(W_ho h_t + b_o)
    """

    num_states = 1

    per_step_params = 3       # W_hh, W_ho, b_o: the unrolled net's W_hh_h_{t-1}, W_ho_h_t

    def _param_specs(self, rp):
        H = self.H
        specs = [((H, self.D), rp.weight_filler), ((H,), rp.bias_filler)]
        if self.static_input:
            specs.append(((H, self.Ds), rp.weight_filler))
        specs += [((H, H), rp.weight_filler), ((H, H), rp.weight_filler), ((H,), rp.bias_filler)]
        return specs

    def _alloc(self, T, N):
        xp, dt, H = self.xp, self.dtype, self.H
        self._h = xp.zeros((T + 1, N, H), dt)      # h_0 .. h_T
        self._hc = xp.zeros((T, N, H), dt)         # cont_t * h_{t-1}
        self._pre = xp.zeros((T, N, H), dt)        # hidden pre-activations, then their diffs

    def forward(self, bottom, top):
        xp = self.xp
        T, N, H = self.T, self.N, self.H
        k = 3 if self.static_input else 2
        W_hh, W_ho, b_o = self.blobs[k].data, self.blobs[k + 1].data, self.blobs[k + 2].data
        W_s = self.blobs[2].data if self.static_input else None
        pre, h, hc = self._pre, self._h, self._hc
        self._input_products(bottom, self.blobs[0].data, self.blobs[1].data, W_s, pre)
        h[0] = self._initial_states(bottom)[0]
        cont = bottom[1].data
        for t in range(T):
            xp.multiply(h[t], cont[t][:, None], out=hc[t])
            pre[t] += xp.matmul(hc[t], W_hh.T)
            xp.tanh(pre[t], out=h[t + 1])
            self._debug("Forward", t + 1, h=h[t + 1])
        o = top[0].data.reshape(T * N, H)
        xp.matmul(h[1:].reshape(T * N, H), W_ho.T, out=o)
        o += b_o
        xp.tanh(o, out=o)
        self._finish_forward(top, [h[T]])

    def backward(self, top, propagate_down, bottom):
        xp = self.xp
        T, N, H = self.T, self.N, self.H
        k = 3 if self.static_input else 2
        W_hh, W_ho = self.blobs[k].data, self.blobs[k + 1].data
        h, hc, dpre = self._h, self._hc, self._pre
        o = top[0].data.reshape(T * N, H)
        do = top[0].diff.reshape(T * N, H) * (1 - o * o)
        if self.param_needs_grad(k + 1):
            self.blobs[k + 1].engine_diff()[...] += xp.matmul(do.T, h[1:].reshape(T * N, H))
        if self.param_needs_grad(k + 2):
            self.blobs[k + 2].engine_diff()[...] += do.sum(axis=0)
        dh_out = xp.matmul(do, W_ho).reshape(T, N, H)
        cont = bottom[1].data
        dnext = None
        for t in range(T - 1, -1, -1):
            dh = dh_out[t] if dnext is None else dh_out[t] + dnext
            xp.multiply(dh, 1 - h[t + 1] * h[t + 1], out=dpre[t])
            self._debug("Backward", t + 1, h_diff=dh)
            dnext = xp.matmul(dpre[t], W_hh)
            dnext *= cont[t][:, None]
        if self.param_needs_grad(k):
            self.blobs[k].engine_diff()[...] += xp.matmul(dpre.reshape(T * N, H).T, hc.reshape(T * N, H))
        self._input_backward(propagate_down, bottom, dpre, 0, 1, 2)


@register("LSTM")
class LSTMLayer(_Recurrent):
    """Long short-term memory (Caffe's LSTM, no peepholes).

    Reads recurrent_param (num_output H, weight_filler, bias_filler,
    debug_info, expose_hidden). Bottoms: x (T x N x ...), cont (T x N),
    optional x_static (N x ...), with expose_hidden h_0 and c_0 (1 x N x H).
    Tops: h (T x N x H), with expose_hidden h_T and c_T (1 x N x H).
    Params (Caffe's order): W_xc (4H x D), b_c (4H), [W_xc_static (4H x Ds)],
    W_hc (4H x H); gate rows in the order i, f, o, g.

        [i' f' o' g'] = W_hc (cont_t h_{t-1}) + W_xc x_t + b_c [+ W_xc_static x_static]
        i, f, o = sigmoid(i', f', o'),  g = tanh(g')
        c_t = cont_t * f * c_{t-1} + i * g,   h_t = o * tanh(c_t)
    """

    num_states = 2

    per_step_params = 1       # W_hc: the unrolled net's transform_t

    def _param_specs(self, rp):
        G = 4 * self.H
        specs = [((G, self.D), rp.weight_filler), ((G,), rp.bias_filler)]
        if self.static_input:
            specs.append(((G, self.Ds), rp.weight_filler))
        specs.append(((G, self.H), rp.weight_filler))
        return specs

    def _alloc(self, T, N):
        xp, dt, H = self.xp, self.dtype, self.H
        self._h = xp.zeros((T + 1, N, H), dt)      # h_0 .. h_T
        self._c = xp.zeros((T + 1, N, H), dt)      # c_0 .. c_T
        self._hc = xp.zeros((T, N, H), dt)         # cont_t * h_{t-1}
        self._tanh_c = xp.zeros((T, N, H), dt)
        self._pre = xp.zeros((T, N, 4 * H), dt)    # gate pre-activations, then their diffs
        self._acts = xp.zeros((T, N, 4 * H), dt)   # sigmoid(i, f, o), tanh(g)

    def forward(self, bottom, top):
        xp = self.xp
        T = self.T
        k = 3 if self.static_input else 2
        W_hc = self.blobs[k].data
        W_s = self.blobs[2].data if self.static_input else None
        pre, h, c, hc = self._pre, self._h, self._c, self._hc
        self._input_products(bottom, self.blobs[0].data, self.blobs[1].data, W_s, pre)
        h[0], c[0] = self._initial_states(bottom)
        cont = bottom[1].data
        for t in range(T):
            ct = cont[t][:, None]
            xp.multiply(h[t], ct, out=hc[t])
            pre[t] += xp.matmul(hc[t], W_hc.T)
            _lstm_cell_forward(xp, pre[t], c[t], ct, self._acts[t], c[t + 1], self._tanh_c[t], h[t + 1])
            self._debug("Forward", t + 1, h=h[t + 1], c=c[t + 1])
        top[0].data[...] = h[1:]
        self._finish_forward(top, [h[T], c[T]])

    def backward(self, top, propagate_down, bottom):
        xp = self.xp
        T, N, H = self.T, self.N, self.H
        k = 3 if self.static_input else 2
        W_hc = self.blobs[k].data
        c, hc, dpre = self._c, self._hc, self._pre
        cont = bottom[1].data
        dh_top = top[0].diff
        dh_next = None
        dc_next = 0
        for t in range(T - 1, -1, -1):
            ct = cont[t][:, None]
            dh = dh_top[t] if dh_next is None else dh_top[t] + dh_next
            dc_next = _lstm_cell_backward(xp, dh, dc_next, self._acts[t], c[t], ct,
                                          self._tanh_c[t], dpre[t])
            self._debug("Backward", t + 1, h_diff=dh, c_diff=dc_next)
            dh_next = xp.matmul(dpre[t], W_hc)
            dh_next *= ct
        if self.param_needs_grad(k):
            self.blobs[k].engine_diff()[...] += xp.matmul(dpre.reshape(T * N, 4 * H).T, hc.reshape(T * N, H))
        self._input_backward(propagate_down, bottom, dpre, 0, 1, 2)


@register("LSTMUnit")
class LSTMUnitLayer(Layer):
    """One LSTM step on given gate pre-activations (Caffe's LSTMUnit).

    No parameters and no prototxt settings. Bottoms: c_prev (1 x N x H),
    gates (1 x N x 4H, pre-activations in the order i, f, o, g), cont (1 x N).
    Tops: c (1 x N x H), h (1 x N x H).

        i, f, o = sigmoid(gates_i, gates_f, gates_o),  g = tanh(gates_g)
        c = cont * f * c_prev + i * g,   h = o * tanh(c)

    Gradients flow to c_prev and gates, never to cont.
    """

    exact_num_bottom = 3
    exact_num_top = 2

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2

    def setup(self, bottom, top):
        self._ws_shape = None

    def reshape(self, bottom, top):
        c_prev, gates, cont = bottom
        if c_prev.num_axes != 3 or c_prev.shape[0] != 1:
            raise self.error("bottom[0] (c_prev) must be 1 x N x H, got %s" % (c_prev.shape,))
        _, N, H = c_prev.shape
        if gates.shape != (1, N, 4 * H):
            raise self.error("bottom[1] (gates) must be 1 x N x 4H = %s, got %s"
                             % ((1, N, 4 * H), gates.shape))
        if cont.shape != (1, N):
            raise self.error("bottom[2] (cont) must be 1 x N = %s, got %s" % ((1, N), cont.shape))
        top[0].reshape(c_prev.shape)
        top[1].reshape(c_prev.shape)
        if (N, H) != self._ws_shape:
            self._ws_shape = (N, H)
            xp, dt = self.xp, self.dtype
            self._acts = xp.zeros((N, 4 * H), dt)
            self._c_prev = xp.zeros((N, H), dt)
            self._tanh_c = xp.zeros((N, H), dt)
            self._dpre = xp.zeros((N, 4 * H), dt)

    def forward(self, bottom, top):
        N, H = self._ws_shape
        # Keep c_prev: the tops may alias the bottoms (in-place prototxts).
        self._c_prev[...] = bottom[0].data.reshape(N, H)
        cont = bottom[2].data.reshape(N, 1)
        c = top[0].data.reshape(N, H)
        h = top[1].data.reshape(N, H)
        _lstm_cell_forward(self.xp, bottom[1].data.reshape(N, 4 * H), self._c_prev, cont,
                           self._acts, c, self._tanh_c, h)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[2]:
            raise self.error("cannot backpropagate to the sequence indicators (bottom[2], cont)")
        if not (propagate_down[0] or propagate_down[1]):
            return
        N, H = self._ws_shape
        cont = bottom[2].data.reshape(N, 1)
        dc_prev = _lstm_cell_backward(self.xp, top[1].diff.reshape(N, H), top[0].diff.reshape(N, H),
                                      self._acts, self._c_prev, cont, self._tanh_c, self._dpre)
        if propagate_down[0]:
            bottom[0].diff[...] = dc_prev.reshape(bottom[0].shape)
        if propagate_down[1]:
            bottom[1].diff[...] = self._dpre.reshape(bottom[1].shape)
