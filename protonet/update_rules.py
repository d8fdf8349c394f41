"""Caffe 1.0's six update rules: SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam.

Each is a :class:`protonet.solver.Solver` registered under its ``type``.
:class:`SGDSolver` holds what they share (Caffe's ``SGDSolver``): the
learning rate policies, gradient clipping, ``iter_size`` normalization,
weight decay (L2 or L1) and ``ApplyUpdate``'s fused, chunked passes; the
others override ``update_constants`` and ``compute_update_value``.

Arithmetic is float32 with Caffe's operation order (``y = b*y`` then
``y += a*x`` for axpby), so trajectories match Caffe's to rounding.
"""
import math

import numpy as np

from . import backend, cuda_kernels, blas as _blas, elementwise
from .io import SolverError
from .log import fmt, get_logger
from .solver import Solver, register_solver

__all__ = ["SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver",
           "AdamSolver", "LR_POLICIES"]

log = get_logger()

LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
_F32 = np.float32


def _c_pow(base, exponent):
    """C's pow: inf on overflow and NaN for a negative base to a fractional power, where
    math.pow raises."""
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.power(np.float64(base), np.float64(exponent)))


@register_solver("SGD")
class SGDSolver(Solver):
    """Stochastic gradient descent with momentum; the base of every update rule.

    Reads ``base_lr``, ``lr_policy`` (+ ``gamma``, ``power``, ``stepsize``,
    ``stepvalue``, ``max_iter``), ``momentum``, ``weight_decay``,
    ``regularization_type``, ``clip_gradients``, ``iter_size``.
    History: ``h = momentum * h + local_rate * g``; step ``h``.
    """

    # ------------------------------------------------------------ settings
    def _check_settings(self):
        p, src = self.param, self.source
        policy = p.lr_policy
        if not policy:
            raise SolverError("%s: lr_policy is not set (Caffe's policies: %s)"
                              % (src, ", ".join(LR_POLICIES)))
        if policy not in LR_POLICIES:
            raise SolverError("%s: unknown lr_policy %r (Caffe's policies: %s)"
                              % (src, policy, ", ".join(LR_POLICIES)))
        if policy in ("step", "sigmoid") and p.stepsize <= 0:
            raise SolverError("%s: lr_policy %r needs stepsize > 0" % (src, policy))
        if policy in ("step", "exp", "inv", "multistep", "sigmoid") and p.gamma < 0:
            raise SolverError("%s: lr_policy %r needs gamma >= 0" % (src, policy))
        if policy == "poly" and p.max_iter <= 0:
            raise SolverError("%s: lr_policy 'poly' needs max_iter > 0" % src)
        super()._check_settings()

    # ------------------------------------------------------------ lr policy
    def get_learning_rate(self):
        """Caffe's GetLearningRate (float32); step/multistep update ``current_step``.

        Out of range it gives what Caffe's C math gives, never an exception: an
        overflowing power is inf, a sigmoid far before its step is 0, and poly
        past max_iter is pow(negative, power), NaN for a fractional power.
        """
        p = self.param
        base, it, policy = p.base_lr, self.iter, p.lr_policy
        if policy == "fixed":
            rate = base
        elif policy == "step":
            self.current_step = it // p.stepsize
            rate = base * _c_pow(p.gamma, self.current_step)
        elif policy == "exp":
            rate = base * _c_pow(p.gamma, it)
        elif policy == "inv":
            rate = base * _c_pow(float(_F32(1) + _F32(p.gamma) * _F32(it)), -p.power)
        elif policy == "multistep":
            if self.current_step < len(p.stepvalue) and it >= p.stepvalue[self.current_step]:
                self.current_step += 1
                log.info("MultiStep Status: Iteration %d, step = %d", it, self.current_step)
            rate = base * _c_pow(p.gamma, self.current_step)
        elif policy == "poly":
            if it > p.max_iter and not self._warned_poly:
                self._warned_poly = True
                log.warning("lr_policy poly past max_iter (%d > %d): the rate is Caffe's "
                            "base_lr * (1 - iter/max_iter) ^ power, NaN or negative from here",
                            it, p.max_iter)
            rate = base * _c_pow(float(_F32(1) - _F32(it) / _F32(p.max_iter)), p.power)
        elif policy == "sigmoid":
            x = float(-_F32(p.gamma) * (_F32(it) - _F32(p.stepsize)))
            # Caffe's float exp overflows to inf there, and 1 / (1 + inf) is 0
            rate = base * (1.0 / (1.0 + math.exp(x))) if x < 88.7 else 0.0
        else:
            raise SolverError("Unknown learning rate policy: %s" % policy)
        return _F32(rate)

    # ------------------------------------------------------------ the update
    def apply_update(self):
        """Caffe's ApplyUpdate: clip, then per param normalize, regularize,
        compute the update value (left in the diff, as Caffe does) and step.

        Everything after the clip runs in one chunked pass per param (see
        :mod:`protonet.elementwise`): each chunk is read from memory once and
        its ufuncs run in cache; no param-sized temporaries exist. Plain
        momentum SGD fuses its passes further: its update value is the
        history itself, so the diff only promises a copy of it
        (``Blob.defer_diff_copy``), made if somebody reads it, and at once
        where a script holds the diff array (it shows the update value, as
        in Caffe); on NumPy's OpenBLAS it runs Caffe's own cblas calls on OpenBLAS's threads, and
        a gradient still promised as a low-rank product (fc6, fc7: see
        ``Blob.defer_diff_product``) goes into the history with one GEMM,
        ``h = rate * a @ b + momentum * h``, never written out as a diff.
        """
        p = self.param
        rate = self.get_learning_rate()
        self.last_lr = float(rate)
        if p.display and self.iter % p.display == 0 and self.parallel.is_root:
            log.info("Iteration %d, lr = %s", self.iter, fmt(rate))
        self.clip_gradients()
        params = self.net.learnable_params
        n = len(params)
        norm = _F32(1) / _F32(p.iter_size) if p.iter_size != 1 else None
        constants = self.update_constants()
        fused = type(self).compute_update_value is SGDSolver.compute_update_value
        blas = (_blas.get(self.net.dtype) if fused and self.net.xp is np
                and p.regularization_type == "L2" else None)
        jobs = []
        for i, blob in enumerate(params):
            decay = _F32(p.weight_decay) * _F32(self.net.params_weight_decay[i])
            if decay and p.regularization_type not in ("L2", "L1"):
                raise SolverError("%s: Unknown regularization type: %s (use L2 or L1)"
                                  % (self.source, p.regularization_type))
            local_rate = self._local_rate(i, rate)
            product = blob.pending_product() if blas is not None else None
            if product is not None:
                # h = rate * (a @ b) + m * h, then h += rate*decay * w
                # (Caffe adds the decay to g first: the same sum, rounded
                # in another order), w -= h.
                w, h = blob.data.reshape(-1), self.history[i].reshape(-1)
                a, bt = product
                scale = local_rate if norm is None else local_rate * norm
                blas.gemm(a, bt.T, self.history[i].reshape(a.shape[0], bt.shape[0]), scale, constants)
                program = [("axpy", local_rate * decay, w, h)] if decay else []
                blas.run(program + [("axpy", -1.0, h, w)])
                continue
            arrays = [a.reshape(-1) for a in [blob.data, blob.engine_diff()]
                      + [self.history[k * n + i] for k in range(self.history_sets)]]
            if blas is not None:
                # Caffe's own cblas calls: scal (iter_size), axpy (decay),
                # axpby (momentum), axpy (data -= diff, the diff being h).
                w, g, h = arrays
                program = [("scal", norm, g)] if norm is not None else []
                if decay:
                    program.append(("axpy", decay, w, g))
                program += [("axpby", local_rate, g, constants, h), ("axpy", -1.0, h, w)]
                blas.run(program)
            else:
                jobs.append((arrays, (fused, norm, decay, local_rate, constants)))
        elementwise.run(self.net.xp, jobs, self._update_chunk)
        if fused:
            for i, blob in enumerate(params):
                blob.defer_diff_copy(self.history[i])

    def _update_chunk(self, arrays, extra, scratch):
        w, g, hist = arrays[0], arrays[1], arrays[2:]
        fused, norm, decay, local_rate, constants = extra
        xp = backend.xp_of(g)
        if norm is not None:
            g *= norm
        if fused:
            # Caffe's passes (g += decay*w; h = m*h + rate*g; diff = h;
            # w -= diff) with the same roundings, g left as it is.
            s, h = scratch[0], hist[0]
            if self.param.regularization_type == "L2" and cuda_kernels.supported(w, g, h):
                cuda_kernels.sgd_update(w, g, h, decay, local_rate, constants)   # one pass on a GPU
                return
            if decay:
                self.regularize(xp, w, g, decay, s, out=s)
                s *= local_rate
            else:
                xp.multiply(g, local_rate, out=s)
            h *= constants
            h += s
            w -= h
            return
        if decay:
            self.regularize(xp, w, g, decay, scratch[0])
        self.compute_update_value(xp, g, hist, local_rate, constants, scratch)
        w -= g

    def update_constants(self):
        """Rule-wide constants of this iteration, passed to compute_update_value."""
        return _F32(self.param.momentum)

    def clip_gradients(self):
        clip = _F32(self.param.clip_gradients)
        if clip < 0:
            return
        params = self.net.learnable_params
        sumsq = _F32(0)
        for blob in params:
            d = blob.engine_diff().ravel()
            sumsq += _F32(float(backend.xp_of(d).dot(d, d)))
        l2norm = _F32(np.sqrt(sumsq))
        if l2norm > clip:
            scale = clip / l2norm
            log.info("Gradient clipping: scaling down gradients (L2 norm %s > %s) by scale factor %s",
                     fmt(l2norm), fmt(clip), fmt(scale))
            for blob in params:
                diff = blob.engine_diff()
                diff *= scale

    def regularize(self, xp, w, g, decay, temp, out=None):
        """g += decay * w (L2) or decay * sign(w) (L1) on one chunk (into ``out`` if given)."""
        if self.param.regularization_type == "L2":
            xp.multiply(w, decay, out=temp)
        else:
            xp.sign(w, out=temp)
            temp *= decay
        xp.add(g, temp, out=g if out is None else out)

    def _local_rate(self, i, rate):
        return _F32(rate) * _F32(self.net.params_lr[i])

    @staticmethod
    def _axpby(xp, a, x, b, y, scratch):
        """Caffe's caffe_cpu_axpby: y = b*y, then y += a*x."""
        y *= b
        xp.multiply(x, a, out=scratch)
        y += scratch

    def compute_update_value(self, xp, g, hist, rate, constants, scratch):
        """Turn the gradient chunk ``g`` into the step, updating the history chunks ``hist``."""
        h = hist[0]
        self._axpby(xp, rate, g, constants, h, scratch[0])
        xp.copyto(g, h)


@register_solver("Nesterov")
class NesterovSolver(SGDSolver):
    """Nesterov's accelerated gradient: ``h' = m h + lr g``; step ``(1+m) h' - m h``."""

    def compute_update_value(self, xp, g, hist, rate, m, scratch):
        h, (upd, tmp) = hist[0], scratch
        xp.copyto(upd, h)
        self._axpby(xp, rate, g, m, h, tmp)
        self._axpby(xp, _F32(1) + m, h, -m, upd, tmp)
        xp.copyto(g, upd)


@register_solver("AdaGrad")
class AdaGradSolver(SGDSolver):
    """AdaGrad: ``h += g^2``; step ``lr g / (sqrt(h) + delta)``. No momentum."""

    def _check_settings(self):
        super()._check_settings()
        if self.param.momentum != 0:
            raise SolverError("%s: Momentum cannot be used with AdaGrad." % self.source)

    def update_constants(self):
        return _F32(self.param.delta)

    def compute_update_value(self, xp, g, hist, rate, delta, scratch):
        h, upd = hist[0], scratch[0]
        xp.multiply(g, g, out=upd)
        h += upd
        xp.sqrt(h, out=upd)
        upd += delta
        xp.divide(g, upd, out=upd)
        xp.multiply(upd, rate, out=g)


@register_solver("RMSProp")
class RMSPropSolver(SGDSolver):
    """RMSProp: ``h = d h + (1-d) g^2``; step ``lr g / (sqrt(h) + delta)``; d = rms_decay."""

    def _check_settings(self):
        super()._check_settings()
        if self.param.momentum != 0:
            raise SolverError("%s: Momentum cannot be used with RMSProp." % self.source)
        if not 0 <= self.param.rms_decay < 1:
            raise SolverError("%s: rms_decay should lie between 0 and 1 (got %s)."
                              % (self.source, fmt(self.param.rms_decay)))

    def update_constants(self):
        return _F32(self.param.rms_decay), _F32(self.param.delta)

    def compute_update_value(self, xp, g, hist, rate, constants, scratch):
        d, delta = constants
        h, (upd, tmp) = hist[0], scratch
        xp.multiply(g, g, out=upd)
        self._axpby(xp, _F32(1) - d, upd, d, h, tmp)
        xp.sqrt(h, out=upd)
        upd += delta
        xp.divide(g, upd, out=upd)
        xp.multiply(upd, rate, out=g)


@register_solver("AdaDelta")
class AdaDeltaSolver(SGDSolver):
    """AdaDelta: gradient history h1 and update history h2 (``momentum`` decays both);
    step ``lr * g * sqrt((h2 + delta) / (h1 + delta))``. History: N blobs h1, then N h2."""

    history_sets = 2

    def update_constants(self):
        return _F32(self.param.momentum), _F32(self.param.delta)

    def compute_update_value(self, xp, g, hist, rate, constants, scratch):
        m, delta = constants
        (h1, h2), (upd, tmp) = hist, scratch
        xp.multiply(g, g, out=upd)
        self._axpby(xp, _F32(1) - m, upd, m, h1, upd)
        tmp.fill(delta)
        xp.add(tmp, h2, out=upd)
        xp.add(tmp, h1, out=tmp)
        xp.divide(upd, tmp, out=upd)
        xp.sqrt(upd, out=upd)
        g *= upd
        xp.multiply(g, g, out=upd)
        self._axpby(xp, _F32(1) - m, upd, m, h2, upd)
        g *= rate


@register_solver("Adam")
class AdamSolver(SGDSolver):
    """Adam: ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``; step
    ``lr * sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + delta)`` with t = iter + 1;
    b1 = momentum, b2 = momentum2. History: N blobs m, then N v."""

    history_sets = 2

    def update_constants(self):
        p = self.param
        b1, b2 = _F32(p.momentum), _F32(p.momentum2)
        t = self.iter + 1
        # Caffe computes the correction in double (pow of a float by an int) and stores a float.
        correction = _F32(math.sqrt(1.0 - math.pow(float(b2), t)) / (1.0 - math.pow(float(b1), t)))
        return b1, b2, correction, _F32(p.delta)

    def compute_update_value(self, xp, g, hist, rate, constants, scratch):
        b1, b2, correction, delta = constants
        (m, v), tmp = hist, scratch[0]
        self._axpby(xp, _F32(1) - b1, g, b1, m, tmp)
        xp.multiply(g, g, out=tmp)
        self._axpby(xp, _F32(1) - b2, tmp, b2, v, tmp)
        xp.sqrt(v, out=tmp)
        tmp += delta
        xp.divide(m, tmp, out=tmp)
        xp.multiply(tmp, rate * correction, out=g)
