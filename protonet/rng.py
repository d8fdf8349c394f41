"""The engine's random source: Caffe's own generator and distributions.

What is reproduced (Caffe 1.0, CPU, built with boost >= 1.64; see below for
1.56 - 1.63): a seeded protonet run draws the numbers a seeded Caffe run
draws, bit for bit.

- The generator is boost::mt19937 with the standard 32-bit ``init_genrand``
  seeding (Caffe's ``Caffe::RNG``); NumPy's MT19937 bit generator, seeded the
  legacy way (as ``numpy.random.RandomState(seed)``), gives the same raw
  32-bit stream, drawn here in vectorised blocks.
- ``set_random_seed(S)`` (``caffe.set_random_seed``, and the Solver with
  ``random_seed + solver_rank``) replaces the main stream by mt19937(S mod
  2**32). Without it the stream is seeded from os.urandom, so an unseeded run
  is random, as in Caffe.
- The distributions as boost implements them, in the net's dtype (float32
  or float64): ``uniform`` (boost::uniform_real on [a, nextafter(b)): one
  draw per value, redrawn when rounding reaches the top), ``gaussian``
  (boost::normal_distribution: the 128-layer ziggurat, its wedge test and its
  tail from two exponential ziggurats; one draw per attempt for float, two
  for double), ``bernoulli`` (``T(u) <= p * T(2**32 - 1)``, no draw at p = 0),
  ``uniform_int`` (boost::uniform_int's bucket rejection), ``shuffle``
  (caffe::shuffle: Fisher-Yates from the back) and ``rand_mod`` (the data
  transformer's ``rng() % n``).
- Separate generators where Caffe has them: each data transformer, ImageData's
  and WindowData's ``prefetch_rng_`` and the prefetch thread are ``Mt19937``
  objects seeded from main-stream draws (``rand()``, Caffe's ``caffe_rng_rand``)
  at the points where Caffe draws those seeds.

Boost versions: mt19937, uniform_real, bernoulli, uniform_int and the
ziggurat's common path (which makes >98% of normal values) are the same in
every boost >= 1.56 (boost 1.56 brought the ziggurat normal_distribution;
older boost used Box-Muller and none of this matches). Boost 1.64 changed the
rarely taken branches of the normal: the tail now comes from a ziggurat
exponential (before: -log of a uniform) and the wedge test got bounds. So
with boost 1.56 - 1.63, gaussian fillers agree until the first value from
the normal's tail (about 1 value in 1,750) and may differ after it; with
boost >= 1.64 (tested against boost 1.74) every value agrees.

HDF5Data is the exception Caffe makes: it shuffles with std::random_shuffle,
i.e. C's rand(), which Caffe never seeds; ``CRand`` is glibc's rand() and
libstdc++'s random_shuffle, one state per process as in C.

Not reproduced: Caffe's GPU draws (cuRAND; protonet's GPU Dropout draws its
mask with this generator on the host, so a GPU run repeats a CPU run instead,
and STOCHASTIC pooling, which Caffe has on the GPU only, draws uniforms here),
and Caffe keeping one main stream per thread (protonet has one for the
process: nets are built and run on the thread that draws).

Use: ``get_rng()`` is the main stream; draw with its methods (``uniform``,
``gaussian``, ``bernoulli``, ``rand``, ``rand_mod``, ``uniform_int``,
``shuffle``, ``raw``), never with NumPy's global or default generators, where
Caffe draws from caffe_rng(). A generator of one's own, as Caffe's layers seed
theirs, is ``Mt19937(rng_rand())``.
"""
import math
import os
import threading

import numpy as np

from ._ziggurat_tables import EXPONENTIAL_X, EXPONENTIAL_Y, NORMAL_X, NORMAL_Y

_NX = np.array(NORMAL_X, dtype=np.float64)
_NY = np.array(NORMAL_Y, dtype=np.float64)
_EX = np.array(EXPONENTIAL_X, dtype=np.float64)
_EY = np.array(EXPONENTIAL_Y, dtype=np.float64)
_MASK29 = (1 << 29) - 1
_U32_MAX = 0xFFFFFFFF


def _real_type(dtype):
    t = np.dtype(dtype).type
    if t not in (np.float32, np.float64):
        raise TypeError("Caffe's distributions are float32 or float64, not %s" % np.dtype(dtype))
    return t


def _entropy_seed():
    return int.from_bytes(os.urandom(4), "little")


def _locked(method):
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


class Mt19937:
    """boost::mt19937 seeded as Caffe seeds it, with Caffe's distributions.

    ``seed`` is reduced to unsigned 32 bits (as C++ converts it); None seeds
    from os.urandom. ``draws`` counts the 32-bit outputs consumed so far.
    """

    def __init__(self, seed=None):
        if seed is None:
            seed = _entropy_seed()
        self.seed = int(seed) & _U32_MAX
        key_state = np.random.RandomState(self.seed).get_state(legacy=False)
        self._bitgen = np.random.MT19937()
        self._bitgen.state = key_state
        self._pending = np.empty(0, np.uint32)    # drawn ahead, not yet consumed
        self._lock = threading.RLock()
        self.draws = 0

    def __repr__(self):
        return "Mt19937(seed=%d, draws=%d)" % (self.seed, self.draws)

    # -- the raw stream ---------------------------------------------------------------
    @_locked
    def raw(self, n):
        """The next ``n`` 32-bit outputs (uint32 array)."""
        n = int(n)
        if n < 0:
            raise ValueError("cannot draw %d values" % n)
        p = self._pending
        if len(p) >= n:
            out, self._pending = p[:n], p[n:]
        else:
            fresh = self._bitgen.random_raw(n - len(p)).astype(np.uint32)
            out = np.concatenate([p, fresh]) if len(p) else fresh
            self._pending = np.empty(0, np.uint32)
        self.draws += n
        return out

    def _unread(self, values):
        """Give back the unused tail of a block (it is the next output again)."""
        if len(values):
            self._pending = np.concatenate([values, self._pending]) if len(self._pending) \
                else np.array(values, dtype=np.uint32)
            self.draws -= len(values)

    def rand(self):
        """One 32-bit output as an int (Caffe's caffe_rng_rand)."""
        return int(self.raw(1)[0])

    @_locked
    def rand_mod(self, n, size=None):
        """``rng() % n``, one draw each (DataTransformer::Rand); an int, or an int64 array."""
        n = int(n)
        if n <= 0:
            raise ValueError("rand_mod needs n > 0, got %d" % n)
        if size is None:
            return self.rand() % n
        return (self.raw(int(np.prod(size))).astype(np.int64) % n).reshape(size)

    # -- distributions ---------------------------------------------------------------
    @_locked
    def uniform(self, count, a, b, dtype=np.float32):
        """caffe_rng_uniform: ``count`` values of boost::uniform_real<T>(a, nextafter(b))."""
        T = _real_type(dtype)
        lo, hi = T(a), np.nextafter(T(b), T(np.finfo(T).max))
        if not lo <= T(b):
            raise ValueError("uniform needs a <= b, got a=%r b=%r" % (a, b))
        if hi / T(2) - lo / T(2) > np.finfo(T).max / T(2):
            # boost halves a range that overflows and doubles the draw
            return T(2) * self.uniform(count, lo / T(2), (T(b) / T(2)), T)
        span = T(hi - lo)
        divisor = T(T(_U32_MAX) + T(1))
        out = np.empty(int(count), T)
        done = 0
        while done < count:
            want = count - done
            u = self.raw(want + 8)
            vals = u.astype(T) / divisor * span + lo
            ok = vals < hi          # a value that rounds up to max is drawn again
            good = np.flatnonzero(ok)
            take = min(want, len(good))
            out[done:done + take] = vals[good[:take]]
            done += take
            used = good[take - 1] + 1 if take == want else len(u)
            self._unread(u[used:])
        return out

    @_locked
    def bernoulli(self, count, p, dtype=np.float64):
        """caffe_rng_bernoulli with boost::bernoulli_distribution<T>(p): a bool array.

        T is the type of p in Caffe's call: double for Dropout (``1. - ratio``),
        the net's dtype for the sparse gaussian filler. p == 0 draws nothing.
        """
        T = _real_type(dtype)
        p = T(p)
        if p == 0:
            return np.zeros(int(count), bool)
        return self.raw(int(count)).astype(T) <= p * T(_U32_MAX)

    @_locked
    def uniform_int(self, lo, hi):
        """boost::uniform_int(lo, hi) (inclusive) on this 32-bit engine: an int."""
        lo, hi = int(lo), int(hi)
        span = hi - lo
        if span < 0:
            raise ValueError("uniform_int needs lo <= hi, got %d > %d" % (lo, hi))
        if span == 0:
            return lo
        if span == _U32_MAX:
            return lo + self.rand()
        if span > _U32_MAX:
            raise ValueError("uniform_int over more than 2**32 values is not supported")
        bucket = _U32_MAX // (span + 1)
        if _U32_MAX % (span + 1) == span:
            bucket += 1
        while True:
            r = self.rand() // bucket
            if r <= span:
                return lo + r

    def _uniform_ints(self, spans):
        """uniform_int(0, span) for each span (1 <= span < 2**32 - 1), in order, vectorised."""
        spans = np.asarray(spans, dtype=np.int64)
        out = np.empty(len(spans), np.int64)
        done = 0
        while done < len(spans):
            sp = spans[done:done + 4096]      # a rejection redoes at most one chunk
            u = self.raw(len(sp))
            bucket = _U32_MAX // (sp + 1) + (_U32_MAX % (sp + 1) == sp)
            r = u.astype(np.int64) // bucket
            bad = np.flatnonzero(r > sp)
            k = int(bad[0]) if len(bad) else len(sp)
            out[done:done + k] = r[:k]
            done += k
            if k < len(sp):
                self._unread(u[k + 1:])       # draw k was rejected: that step draws again
        return out

    @_locked
    def shuffle(self, seq):
        """caffe::shuffle: Fisher-Yates from the back with uniform_int(0, i); in place."""
        n = len(seq)
        if n > 1:
            picks = self._uniform_ints(np.arange(n - 1, 0, -1)).tolist()
            for i, j in zip(range(n - 1, 0, -1), picks):
                seq[i], seq[j] = seq[j], seq[i]
        return seq

    @_locked
    def gaussian(self, count, mu, sigma, dtype=np.float32):
        """caffe_rng_gaussian: boost::normal_distribution<T>(mu, sigma), value by value.

        The common path (a point inside its ziggurat layer) is decided for a whole
        block of draws at once; a rejected attempt (wedge or tail, which consume
        more draws) is finished one draw at a time, then the block walk resumes.
        """
        T = _real_type(dtype)
        mu, sigma = T(mu), T(sigma)
        count = int(count)
        out = np.empty(count, T)
        stride = 1 if T is np.float32 else 2      # draws per attempt
        done = 0
        while done < count:
            block = self.raw((count - done) * stride * 33 // 32 + 16)
            x, layer, sign, accept, wedge_ok, hard = _normal_attempts(block, T)
            vals = (x * sign) * sigma + mu
            starts = len(accept)                  # attempts that fit in the block
            pos = 0
            for e in np.flatnonzero(~accept).tolist():
                if e < pos or (e - pos) % stride:
                    continue                      # skipped, or not an attempt's start
                take = min((e - pos) // stride, count - done)
                out[done:done + take] = vals[pos:pos + take * stride:stride]
                done += take
                pos += take * stride
                if done == count:
                    break
                if hard[e]:                       # the tail, or draws past the block
                    cursor = _Cursor(block, e + stride, self)
                    out[done] = _normal_rejected(T, cursor, x[e], int(layer[e]), sign[e]) \
                        * sigma + mu
                    done += 1
                    pos = cursor.pos
                    if done == count or pos >= len(block):
                        break
                    continue
                if wedge_ok[e]:
                    out[done] = vals[e]
                    done += 1
                pos = e + stride + 1              # the wedge test drew one uniform
                if done == count:
                    break
            else:
                take = min(max(0, -(-(starts - pos) // stride)), count - done)
                out[done:done + take] = vals[pos:pos + take * stride:stride]
                done += take
                pos += take * stride
            if pos < len(block):
                self._unread(block[pos:])
        return out


class _Cursor:
    """Reads a block's draws one at a time from ``pos``, then the stream itself."""

    def __init__(self, block, pos, stream):
        self.block, self.pos, self.stream = block, pos, stream

    def __call__(self):
        if self.pos < len(self.block):
            u = int(self.block[self.pos])
        else:
            u = self.stream.rand()
        self.pos += 1
        return u


def _normal_attempts(block, T):
    """What each ziggurat attempt a block could start gives, decided for all at once.

    generate_int_float_pair<T, 8>: float takes one draw u (bucket u & 0xff, the
    uniform (u >> 8) / 2**24); double takes two, the second adding 29 low bits.
    The bucket's bit 0 is the sign (1: +), the rest the layer (0 - 127).
    Returns x, layer, sign, accept (x < x[layer + 1], compared in double),
    wedge_ok (a rejected attempt off layer 0 passes the wedge test with the
    next draw as its uniform) and hard (a rejected attempt to finish draw by
    draw: layer 0 (the tail), a uniform that rounds to 1, or past the block).
    """
    stride = 1 if T is np.float32 else 2
    if T is np.float32:
        u = block
        r = (u >> 8).astype(np.float32) * np.float32(2.0 ** -24)
    else:
        u = block[:-1]
        r = ((u >> 8).astype(np.float64) * 2.0 ** -24
             + (block[1:] & _MASK29).astype(np.float64)) * 2.0 ** -29
    tab = _tables(T)
    bucket = (u & 0xFF).astype(np.intp)
    layer = bucket >> 1
    sign = np.where(bucket & 1, T(1), T(-1)).astype(T)
    x = r * tab["x"][layer]
    accept = x.astype(np.float64) < _NX[layer + 1]
    wedge_ok = np.zeros(len(accept), bool)
    hard = ~accept & (layer == 0)
    k = np.flatnonzero(~accept & (layer != 0))
    late = k + stride >= len(block)
    hard[k[late]] = True
    k = k[~late]
    i, xk = layer[k], x[k]
    y01 = block[k + stride].astype(T) * T(2.0 ** -32)
    hard[k[y01 >= 1]] = True                   # uniform_01 would draw again
    y = tab["y"][i] + y01 * tab["dy"][i]
    diag = tab["dx"][i] * y01 - (tab["x"][i] - xk)
    tangent = y - (tab["y"][i] + (tab["x"][i] - xk) * tab["y"][i] * tab["x"][i])
    convex = _NX[i] >= 1
    above_u = np.where(convex, diag, tangent)
    above_l = np.where(convex, tangent, diag)
    fx = np.exp(-(xk * xk / T(2)).astype(np.float64)).astype(T)
    wedge_ok[k] = (above_u < 0) & ((above_l < 0) | (y < fx))
    return x, layer, sign, accept, wedge_ok, hard


_TABLES = {}


def _tables(T):
    if T not in _TABLES:
        _TABLES[T] = {"x": _NX.astype(T), "y": _NY.astype(T),
                      "dx": (_NX[:-1] - _NX[1:]).astype(T), "dy": (_NY[1:] - _NY[:-1]).astype(T)}
    return _TABLES[T]


def _int_float_pair(T, draw):
    u = draw()
    if T is np.float32:
        r = np.float32(u >> 8) * np.float32(2.0 ** -24)
    else:
        r = ((u >> 8) * 2.0 ** -24 + (draw() & _MASK29)) * 2.0 ** -29
    return r, u & 0xFF


def _uniform_01(T, draw):
    """boost::uniform_01<T>: T(u) / 2**32, drawn again if it rounds to 1."""
    while True:
        v = T(draw()) * T(2.0 ** -32)
        if v < T(1):
            return v


def _exp_t(T, v):
    # exp in T: float exp as expf, correctly rounded through double
    return T(math.exp(float(v)))


def _normal_rejected(T, draw, x, i, sign):
    """unit_normal_distribution's loop after a rejected first attempt (boost >= 1.64)."""
    while True:
        if i == 0:
            return _normal_tail(T, draw) * sign
        xi, xi1 = NORMAL_X[i], NORMAL_X[i + 1]
        yi, yi1 = NORMAL_Y[i], NORMAL_Y[i + 1]
        y01 = _uniform_01(T, draw)
        y = T(yi) + y01 * T(yi1 - yi)
        diag = T(xi - xi1) * y01 - (T(xi) - x)
        tangent = y - (T(yi) + (T(xi) - x) * T(yi) * T(xi))
        above_u, above_l = (diag, tangent) if xi >= 1 else (tangent, diag)
        if above_u < 0 and (above_l < 0 or y < _exp_t(T, -(x * x / T(2)))):
            return x * sign
        r, bucket = _int_float_pair(T, draw)
        sign = T(1) if bucket & 1 else T(-1)
        i = bucket >> 1
        x = r * T(NORMAL_X[i])
        if float(x) < NORMAL_X[i + 1]:
            return x * sign


def _normal_tail(T, draw):
    """Beyond x[1]: exponential(x[1]) proposals accepted when 2 y > x^2."""
    start = T(NORMAL_X[1])
    while True:
        x = _unit_exponential(T, draw) / start
        y = _unit_exponential(T, draw)
        if T(2) * y > x * x:
            return x + start


def _unit_exponential(T, draw):
    """boost's unit_exponential_distribution (a 256-layer ziggurat, boost >= 1.64)."""
    shift = T(0)
    while True:
        r, i = _int_float_pair(T, draw)
        x = r * T(EXPONENTIAL_X[i])
        if x < T(EXPONENTIAL_X[i + 1]):
            return shift + x
        if i == 0:
            shift += T(EXPONENTIAL_X[1])
            continue
        xi, xi1 = EXPONENTIAL_X[i], EXPONENTIAL_X[i + 1]
        yi, yi1 = EXPONENTIAL_Y[i], EXPONENTIAL_Y[i + 1]
        y01 = _uniform_01(T, draw)
        y = T(yi) + y01 * T(yi1 - yi)
        above_u = T(xi - xi1) * y01 - (T(xi) - x)
        above_l = y - (T(yi1) + (T(xi1) - x) * T(yi1))
        if above_u < 0 and (above_l < 0 or y < _exp_t(T, -x)):
            return x + shift


# -- C's rand(), for std::random_shuffle --------------------------------------------------
class CRand:
    """glibc's rand() (random(), TYPE_3, seeded 1 as a program that never calls srand).

    Caffe's HDF5Data shuffles with std::random_shuffle, which libstdc++ drives
    with rand(), not with Caffe's generator: its orders ignore random_seed and
    are the same in every run. ``random_shuffle`` reproduces them.
    """

    def __init__(self):
        r = [1]
        for i in range(1, 31):
            hi, lo = divmod(r[i - 1], 127773)   # Park-Miller; all positive from seed 1
            word = 16807 * lo - 2836 * hi
            r.append(word + 2147483647 if word < 0 else word)
        self._r = r + [r[0], r[1], r[2]]        # r[31..33]
        self._rand(310)                          # glibc discards the first 310

    def _rand(self, n):
        r = self._r
        out = []
        for _ in range(n):
            v = (r[-31] + r[-3]) & _U32_MAX
            r.append(v)
            out.append(v >> 1)
        del r[:-34]
        return out

    def random_shuffle(self, seq):
        """libstdc++'s std::random_shuffle(first, last): swap(i, rand() % (i + 1)), i = 1, 2, ..."""
        n = len(seq)
        for i, v in zip(range(1, n), self._rand(max(0, n - 1))):
            j = v % (i + 1)
            if j != i:
                seq[i], seq[j] = seq[j], seq[i]
        return seq


_c_rand = {"rand": CRand()}


def c_rand():
    """The process's C rand() state (std::random_shuffle's source); one for the process, as in C."""
    return _c_rand["rand"]


def reset_c_rand():
    """Start rand() over, as a fresh process (tests use this)."""
    _c_rand["rand"] = CRand()


# -- the main stream (Caffe::rng_stream) ---------------------------------------------------
_state = {"rng": Mt19937(), "seed": None}


def set_random_seed(seed):
    """Caffe::set_random_seed: the main stream restarts as mt19937(seed mod 2**32).

    None reseeds from os.urandom (an unseeded, random run).
    """
    if seed is None:
        _state["seed"] = None
        _state["rng"] = Mt19937()
        return
    if isinstance(seed, (bool, float)) or not isinstance(seed, (int, np.integer)):
        raise TypeError("random seed must be an integer, got %r" % (seed,))
    _state["seed"] = int(seed) & _U32_MAX
    _state["rng"] = Mt19937(_state["seed"])


def get_seed():
    """The seed last set (reduced to 32 bits), or None for an unseeded stream."""
    return _state["seed"]


def get_rng():
    """The main stream (an ``Mt19937``): fillers, Dropout, the seeds of the data layers."""
    return _state["rng"]


def rng_rand():
    """One 32-bit draw from the main stream (caffe_rng_rand), e.g. to seed a generator."""
    return get_rng().rand()
