"""A NumPy-backed stand-in for CuPy 14, to run protonet's device path without a GPU.

Assign the module to ``protonet.backend._cupy`` (tests/test_device_path.py
does, with monkeypatch) and ``set_mode_gpu()`` makes every new array a
``fakecupy.ndarray``: a wrapper around a host NumPy array (not a subclass)
that behaves as a CuPy array does where the difference matters:

* no implicit conversion: ``np.asarray(x)``, ``np.array(x)``, ``host[...] = x``
  raise TypeError ("Implicit conversion to a NumPy array is not allowed"); a
  host ``numpy.ndarray`` (0-d too) passed to a device ufunc or function raises
  TypeError ("Unsupported type"), ``dev[...] = host`` with a non-scalar host
  array raises ValueError ("non-scalar numpy.ndarray cannot be used for fill"),
  as CuPy's ``ndarray.fill`` does; host arrays as indices are converted, as in
  CuPy. ``.get()``, ``asnumpy`` and ``asarray`` are the explicit transfers;
* indexing never returns a scalar: ``x[i]`` of a 1-d array is a 0-d array
  (a view); reductions (``x.sum()``, ``cupy.max(x)``...) return 0-d arrays;
  ``float(x)``, ``int(x)``, ``bool(x)`` and ``x.item()`` synchronize and work;
  there is no ``__index__`` (``range(x)`` fails, as in CuPy);
* NumPy functions and ufuncs called on device arrays dispatch through
  ``__array_function__`` / ``__array_ufunc__`` to this module's function of the
  same name, as CuPy's do, so a NumPy name CuPy lacks fails with TypeError;
  module attributes are CuPy 14's names only (the static lists below were read
  from cupy 14.2's ``dir()``), ndarray methods likewise (no ``resize``,
  ``ctypes``, ``tostring``...); ``ufunc.at`` only for CuPy's scatter ufuncs
  (add, subtract, maximum, minimum, bitwise and/or/xor), ``reduce`` and
  ``accumulate`` only for add and multiply, as in CuPy 14;
* dtypes CuPy cannot hold (object, strings, datetimes, long double) raise
  ValueError on the way to the device;
* ``RawKernel(code, name)`` compiles ``code`` with g++ after a prelude that
  turns the CUDA qualifiers into C++ and fixes blockIdx/threadIdx at 0 and
  blockDim/gridDim at 1, so one call of a grid-stride kernel visits every
  index serially. Arguments are checked against the kernel's C signature
  (arrays for pointers, of the pointee's dtype and C-contiguous; NumPy
  scalars of exactly the parameter's type for values), and buffers that
  partly overlap are refused. Stricter than CuPy on purpose: CuPy turns a
  Python int into an int64 and a float into a float64 whatever the kernel
  declares, and passes any array's pointer; on a GPU those mismatches read
  garbage. ``launch_counts`` counts launches per kernel name.

Beyond CuPy's names the module has only ``launch_counts``,
``reset_launch_counts()`` and ``KERNEL_PRELUDE``.

What a host stand-in cannot show: asynchrony, timing, memory limits, and
kernels that are not grid-stride loops (with one thread they would only
touch index 0); shared memory, ``__syncthreads`` and warp intrinsics do not
compile. Not emulated: ElementwiseKernel, ReductionKernel, RawModule,
``cupy.fft``, ``cupy.polynomial``; and the functions run NumPy's code, so
they accept Python lists where many of CuPy's want arrays, and NumPy-only
keyword arguments.
"""
import builtins as _bi
import collections as _collections
import ctypes as _ctypes
import hashlib as _hashlib
import os as _os
import pickle as _pickle
import re as _re
import subprocess as _subprocess
import sys as _sys
import tempfile as _tempfile
import threading as _threading
import time as _time
import types as _types
import weakref as _weakref

import numpy as _np

__version__ = "14.2.0"

# ----------------------------------------------------------------------------- CuPy 14.2's names
# Read from cupy-cuda13x 14.2.0's dir() (public names only).
_UFUNC_NAMES = frozenset("""
abs absolute acos acosh add arccos arccosh arcsin arcsinh arctan arctan2 arctanh asin asinh atan
atan2 atanh bitwise_and bitwise_count bitwise_invert bitwise_left_shift bitwise_not bitwise_or
bitwise_right_shift bitwise_xor cbrt ceil conj conjugate copysign cos cosh deg2rad degrees
divide divmod equal exp exp2 expm1 fabs fix float_power floor floor_divide fmax fmin fmod frexp
gcd greater greater_equal heaviside hypot i0 invert isfinite isinf isnan lcm ldexp left_shift
less less_equal log log10 log1p log2 logaddexp logaddexp2 logical_and logical_not logical_or
logical_xor maximum minimum mod modf multiply negative nextafter not_equal positive pow power
rad2deg radians reciprocal remainder right_shift rint sign signbit sin sinc sinh sqrt square
subtract tan tanh true_divide trunc
""".split())
_FUNCTION_NAMES = frozenset("""
all allclose alltrue amax amin angle any append apply_along_axis apply_over_axes arange argmax
argmin argpartition argsort argwhere around array array2string array_equal array_equiv
array_repr array_split array_str asanyarray asarray asarray_chkfinite ascontiguousarray asfarray
asfortranarray asnumpy astype atleast_1d atleast_2d atleast_3d average bartlett base_repr
binary_repr bincount blackman broadcast_arrays broadcast_shapes broadcast_to byte_bounds
can_cast choose clear_memo clip column_stack common_type compress concat concatenate convolve
copy copyto corrcoef correlate count_nonzero cov cross cumprod cumproduct cumsum cumulative_prod
cumulative_sum delete diag diag_indices diag_indices_from diagflat diagonal diff digitize disp
dot dsplit dstack ediff1d einsum empty empty_like expand_dims extract eye fill_diagonal
find_common_type flatnonzero flip fliplr flipud format_float_positional format_float_scientific
fromDlpack from_dlpack frombuffer fromfile fromfunction fromiter fromstring full full_like fuse
genfromtxt get_array_module get_array_wrap get_default_memory_pool
get_default_pinned_memory_pool get_printoptions gradient hamming hanning histogram histogram2d
histogramdd hsplit hstack identity imag in1d indices inner interp intersect1d is_available
isclose iscomplex iscomplexobj isdtype isfortran isin isneginf isposinf isreal isrealobj
isscalar issctype issubclass_ issubdtype issubsctype iterable ix_ kaiser kron lexsort linspace
load loadtxt logspace make_aligned_dtype mask_indices matmul matrix_transpose max
may_share_memory mean median memoize meshgrid min min_scalar_type mintypecode moveaxis msort
nan_to_num nanargmax nanargmin nancumprod nancumsum nanmax nanmean nanmedian nanmin nanprod
nanstd nansum nanvar ndim nonzero obj2sctype ones ones_like outer packbits pad partition
percentile permute_dims piecewise place poly polyadd polyfit polymul polysub polyval
printoptions prod product promote_types ptp put put_along_axis putmask quantile ravel
ravel_multi_index real real_if_close repeat require reshape resize result_type roll rollaxis
roots rot90 round round_ row_stack safe_eval save savetxt savez savez_compressed sctype2char
searchsorted select set_printoptions set_string_function setdiff1d setxor1d shape shares_memory
show_config size sometrue sort sort_complex split squeeze stack std sum swapaxes take
take_along_axis tensordot tile trace transpose trapezoid trapz tri tril tril_indices
tril_indices_from trim_zeros triu triu_indices triu_indices_from typename union1d unique
unique_all unique_counts unique_inverse unique_values unpackbits unravel_index unwrap vander var
vdot vsplit vstack where who zeros zeros_like
""".split())
# the same objects as NumPy's
_NUMPY_TYPE_NAMES = frozenset("""
bool bool_ byte cdouble complex128 complex64 complexfloating csingle double dtype finfo float16
float32 float64 floating generic half iinfo inexact int16 int32 int64 int8 int_ intc integer
intp long longlong ndindex number short signedinteger single ubyte uint uint16 uint32 uint64
uint8 uintc uintp ulong ulonglong unsignedinteger ushort
""".split())
_CLASS_NAMES = frozenset("""
AxisError ComplexWarning DataSource ElementwiseKernel ModuleDeprecationWarning RankWarning
RawKernel RawModule ReductionKernel TooHardError VisibleDeprecationWarning broadcast cfloat
complex_ flatiter float_ format_parser ndarray poly1d singlecomplex ufunc vectorize
""".split())
_CONSTANT_NAMES = frozenset("""
Inf Infinity NAN NINF NZERO NaN PINF PZERO c_ disable_experimental_feature_warning e
euler_gamma index_exp inf infty mgrid nan newaxis ogrid pi r_ s_
""".split())
_NDARRAY_ATTRS = frozenset("""
T all any argmax argmin argpartition argsort astype base byteswap choose clip compress conj
conjugate copy cstruct cumprod cumsum data device diagonal dot dtype dump dumps fill flags flat
flatten get imag item itemsize mT max mdspan mean min nbytes ndim nonzero partition prod ptp put
ravel real reduced_view repeat reshape round scatter_add scatter_max scatter_min searchsorted
set shape size sort squeeze std strides sum swapaxes take toDlpack tobytes tofile tolist trace
transpose var view
""".split())
_RANDOM_FUNCTION_NAMES = frozenset("""
beta binomial bytes chisquare choice default_rng dirichlet exponential f gamma geometric
get_random_state gumbel hypergeometric laplace logistic lognormal logseries multinomial
multivariate_normal negative_binomial noncentral_chisquare noncentral_f normal pareto
permutation poisson power rand randint randn random random_integers random_sample ranf rayleigh
reset_states sample seed set_random_state shuffle standard_cauchy standard_exponential
standard_gamma standard_normal standard_t triangular uniform vonmises wald weibull zipf
""".split())
_RANDOMSTATE_METHODS = frozenset("""
beta binomial chisquare choice dirichlet exponential f gamma geometric gumbel hypergeometric
laplace logistic lognormal logseries multivariate_normal negative_binomial noncentral_chisquare
noncentral_f normal pareto permutation poisson power rand randint randn random_sample rayleigh
seed shuffle standard_cauchy standard_exponential standard_gamma standard_normal standard_t
tomaxint triangular uniform vonmises wald weibull zipf
""".split())
_GENERATOR_METHODS = frozenset("""
beta binomial chisquare dirichlet exponential f gamma geometric hypergeometric integers
logseries poisson power random standard_exponential standard_gamma standard_normal uniform
""".split())
_LINALG_NAMES = frozenset("""
cholesky cond cross det eig eigh eigvals eigvalsh inv lstsq matmul matrix_power matrix_rank
matrix_transpose norm pinv qr slogdet solve svd tensorinv tensorsolve
""".split())
# scatter ops of CuPy's ufuncs (ufunc._scatter_op): the only ufuncs whose .at works
_SCATTER_UFUNCS = {"add": "add", "subtract": "sub", "maximum": "max", "minimum": "min",
                   "bitwise_and": "and", "bitwise_or": "or", "bitwise_xor": "xor"}

# Scalars a CuPy kernel takes (CuPy's _scalar.scalar_type_set): Python's and
# NumPy's scalar types of the dtypes CuPy supports. NumPy arrays, 0-d too, are not.
_SUPPORTED_DTYPES = frozenset(_np.dtype(c) for c in "?bhilqBHILQefdFD")
_SCALAR_TYPES = frozenset([int, float, _bi.bool, complex] + [d.type for d in _SUPPORTED_DTYPES])


# ----------------------------------------------------------------------------- device memory
class _Accounting:
    """Bytes of live device buffers, per root NumPy buffer, for the memory pool."""

    def __init__(self):
        self.lock = _threading.RLock()   # finalizers run inside track() when it triggers a GC
        self.live = {}       # id(root) -> bytes
        self.owner = {}      # id(root) -> weakref to the first fake array over it
        self.used = 0
        self.held = 0        # freed blocks the pool keeps (total_bytes - used_bytes)

    def _release(self, key):
        with self.lock:
            n = self.live.pop(key, 0)
            self.owner.pop(key, None)
            self.used -= n
            self.held += n

    def track(self, root, fake):
        """Count ``root`` if it is new; returns the array that owns it (None: ``fake`` does)."""
        key = id(root)
        with self.lock:
            if key in self.live:
                owner = self.owner[key]()
                if owner is None:
                    self.owner[key] = _weakref.ref(fake)
                return owner
            n = -(-root.nbytes // 512) * 512    # CuPy's pool rounds to 512-byte blocks
            self.live[key] = n
            self.owner[key] = _weakref.ref(fake)
            self.used += n
            self.held = _bi.max(0, self.held - n)
        _weakref.finalize(root, self._release, key)
        return None


_memory = _Accounting()


def _root(a):
    """The NumPy array that owns ``a``'s memory (through views and as_strided)."""
    while True:
        base = a.base
        if isinstance(base, _np.ndarray):
            a = base
        elif base is not None and isinstance(getattr(base, "base", None), _np.ndarray):
            a = base.base          # numpy.lib.stride_tricks' DummyArray
        else:
            return a


def _check_dtype(dtype):
    dtype = _np.dtype(dtype)
    if dtype not in _SUPPORTED_DTYPES:
        raise ValueError("Unsupported dtype %s" % dtype)
    return dtype


def _wrap_array(a):
    """A device array over the NumPy array ``a`` (which it then owns or views)."""
    _check_dtype(a.dtype)
    x = ndarray.__new__(ndarray)
    x._a = a
    x._base = _memory.track(_root(a), x)
    return x


# ----------------------------------------------------------------------------- (un)wrapping
class _Seen(dict):
    """id(numpy array) -> the fake array it was unwrapped from (to return the same objects)."""


def _unsupported(x):
    return TypeError("Unsupported type %s" % type(x))


def _unwrap(x, seen, host_ok=False):
    if isinstance(x, ndarray):
        seen[id(x._a)] = x
        return x._a
    if isinstance(x, _np.ndarray):
        if host_ok:
            return x
        raise _unsupported(x)
    if type(x) in (list, tuple):
        return type(x)(_unwrap(v, seen, host_ok) for v in x)
    return x


def _unwrap_all(args, kwargs, host_ok=False):
    seen = _Seen()
    args = tuple(_unwrap(a, seen, host_ok) for a in args)
    kwargs = {k: _unwrap(v, seen, host_ok) for k, v in kwargs.items()}
    return args, kwargs, seen


def _wrap(r, seen=None, scalars=True):
    """Device arrays for NumPy results: arrays, scalars (as 0-d arrays), tuples and lists of them."""
    if isinstance(r, _np.ndarray):
        if seen is not None:
            fake = seen.get(id(r))
            if fake is not None and fake._a is r:
                return fake
        return _wrap_array(r)
    if isinstance(r, _np.generic) and scalars:
        return _wrap_array(_np.asarray(r))
    if isinstance(r, tuple):
        items = [_wrap(v, seen, scalars) for v in r]
        return type(r)(*items) if hasattr(r, "_fields") else tuple(items)
    if isinstance(r, list):
        return [_wrap(v, seen, scalars) for v in r]
    return r


def _not_emulated(name):
    def stub(*args, **kwargs):
        raise NotImplementedError("fakecupy does not emulate cupy.%s" % name)
    stub.__name__ = name
    return stub


# ----------------------------------------------------------------------------- ndarray
def _index(key, seen):
    """NumPy's form of an index; host arrays in it are fine (CuPy converts them)."""
    if isinstance(key, tuple):
        return tuple(_index(k, seen) for k in key)
    if isinstance(key, ndarray):
        return key._a
    if isinstance(key, list):
        return [_index(k, seen) for k in key]
    return key


def _advanced(key):
    for k in key if isinstance(key, tuple) else (key,):
        if isinstance(k, (_np.ndarray, list, _bi.bool, _np.bool_)):
            return True
    return False


class _Flags:
    def __init__(self, a, owndata):
        self.c_contiguous = _bi.bool(a.flags.c_contiguous)
        self.f_contiguous = _bi.bool(a.flags.f_contiguous)
        self.owndata = owndata

    def __getitem__(self, name):
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous,
                "OWNDATA": self.owndata}[name]

    def __repr__(self):
        return "  C_CONTIGUOUS : %s\n  F_CONTIGUOUS : %s\n  OWNDATA : %s" % (
            self.c_contiguous, self.f_contiguous, self.owndata)


class _MemoryPointer:
    def __init__(self, ptr):
        self.ptr = ptr
        self.device_id = 0

    def __int__(self):
        return self.ptr


def _method(name, host_ok=False):
    """ndarray.<name>: NumPy's method on the host array, results back on the device."""
    def method(self, *args, **kwargs):
        args, kwargs, seen = _unwrap_all(args, kwargs, host_ok)
        seen[id(self._a)] = self
        return _wrap(getattr(self._a, name)(*args, **kwargs), seen)
    method.__name__ = name
    method.__qualname__ = "ndarray." + name
    return method


class ndarray(_np.lib.mixins.NDArrayOperatorsMixin):
    """cupy.ndarray over a host NumPy array (see the module docstring)."""

    __slots__ = ("_a", "_base", "__weakref__")
    __array_priority__ = 100
    __hash__ = None

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            raise NotImplementedError("fakecupy.ndarray: memptr/strides are not emulated")
        self._a = _np.empty(shape, _check_dtype(dtype), order=order)
        self._base = _memory.track(self._a, self)

    # -- no implicit transfers -----------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inout = inputs
        if "out" in kwargs:
            out = kwargs["out"]
            if len(out) != 1:
                raise ValueError("The 'out' parameter must have exactly one array value")
            inout += out
            kwargs["out"] = out[0]
        if method not in ("__call__", "outer", "at", "reduce", "accumulate", "reduceat"):
            return NotImplemented
        name = ufunc.__name__
        func = _UFUNC_BY_NUMPY_NAME.get(name)
        if func is None:
            return NotImplemented
        if method != "__call__":
            func = getattr(func, method, None)
            if func is None:
                return NotImplemented
        for x in inout:
            # host arrays go on, to be refused by the ufunc itself (as in CuPy)
            if not (isinstance(x, (ndarray, _np.ndarray)) or type(x) in _SCALAR_TYPES or x is None):
                return NotImplemented
        if name in ("greater", "greater_equal", "less", "less_equal", "equal", "not_equal"):
            # CuPy's workaround for numpy/numpy#12142
            inputs = tuple(x.item() if isinstance(x, _np.ndarray) and x.ndim == 0 else x for x in inputs)
        return func(*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        module = _sys.modules[__name__]
        try:
            for part in func.__module__.split(".")[1:]:
                module = getattr(module, part)
            ours = getattr(module, func.__name__)
        except AttributeError:
            return NotImplemented
        if ours is func:
            return NotImplemented
        for t in types:
            if t not in (ndarray, _np.ndarray):
                return NotImplemented
        return ours(*args, **kwargs)

    # -- explicit transfers ----------------------------------------------------
    def get(self, stream=None, order="C", out=None, blocking=True):
        if out is not None:
            if not isinstance(out, _np.ndarray):
                raise TypeError("Only numpy.ndarray can be obtained from cupy.ndarray")
            if out.dtype != self.dtype or out.shape != self.shape:
                raise ValueError("out array must have the same dtype and shape")
            out[...] = self._a
            return out
        return _np.array(self._a, order=order, copy=True)

    def set(self, arr, stream=None):
        if not isinstance(arr, _np.ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if self.dtype != arr.dtype:
            raise TypeError("{} array cannot be set to {} array".format(arr.dtype, self.dtype))
        if self.shape != arr.shape:
            raise ValueError("Shape mismatch. Old shape: {}, new shape: {}".format(self.shape, arr.shape))
        if not (self._a.flags.c_contiguous or self._a.flags.f_contiguous):
            raise RuntimeError("Cannot set to non-contiguous array")
        self._a[...] = arr

    def item(self, *args):
        return self._a.item(*args)

    def tolist(self):
        return self._a.tolist()

    def tobytes(self, order="C"):
        return self._a.tobytes(order)

    def tofile(self, fid, sep="", format="%s"):
        self._a.tofile(fid, sep, format)

    def dump(self, file):
        with open(file, "wb") if isinstance(file, (str, _os.PathLike)) else _nullctx(file) as f:
            _pickle.dump(self, f)

    def dumps(self):
        return _pickle.dumps(self)

    def __reduce__(self):
        return (_rebuild, (self.get(),))

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    # -- Python conversions (each a device-to-host sync in CuPy) ----------------
    def __bool__(self):
        return _bi.bool(self._a)

    def __int__(self):
        return int(self._a)

    def __float__(self):
        return float(self._a)

    def __complex__(self):
        return complex(self._a)

    def __len__(self):
        if self._a.ndim == 0:
            raise TypeError("len() of unsized object")
        return len(self._a)

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self._a.shape[0]))

    def __repr__(self):
        return repr(self._a)

    def __str__(self):
        return str(self._a)

    def __format__(self, spec):
        return format(self._a, spec)

    # -- indexing --------------------------------------------------------------
    def __getitem__(self, key):
        seen = _Seen()
        k = _index(key, seen)
        r = self._a[k]
        if isinstance(r, _np.generic):
            # a 0-d view, never a scalar (CuPy's integer indexing)
            r = self._a[(k if isinstance(k, tuple) else (k,)) + (Ellipsis,)]
        return _wrap(r)

    def __setitem__(self, key, value):
        k = _index(key, _Seen())
        if isinstance(value, ndarray):
            value = value._a
        elif isinstance(value, _np.ndarray):
            if not _advanced(k):     # CuPy fills: only a scalar can come from the host
                if value.shape != ():
                    raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
                value = value.item()
        elif type(value) not in _SCALAR_TYPES:
            if not (_advanced(k) and isinstance(value, (list, tuple))):
                raise _unsupported(value)
        self._a[k] = value

    def __delitem__(self, key):
        raise ValueError("cannot delete array elements")

    # -- attributes --------------------------------------------------------------
    @property
    def shape(self):
        return self._a.shape

    @shape.setter
    def shape(self, value):
        r = self._a.reshape(value)
        if r.size and not _np.shares_memory(r, self._a):
            raise AttributeError("incompatible shape")
        self._a = r

    @property
    def strides(self):
        return self._a.strides

    @property
    def dtype(self):
        return self._a.dtype

    @property
    def ndim(self):
        return self._a.ndim

    @property
    def size(self):
        return self._a.size

    @property
    def itemsize(self):
        return self._a.itemsize

    @property
    def nbytes(self):
        return self._a.nbytes

    @property
    def T(self):
        return _wrap(self._a.T)

    @property
    def mT(self):
        return _wrap(self._a.mT)

    @property
    def real(self):
        return _wrap(self._a.real)

    @real.setter
    def real(self, value):
        self.real[...] = value

    @property
    def imag(self):
        return _wrap(self._a.imag)

    @imag.setter
    def imag(self, value):
        self.imag[...] = value

    @property
    def base(self):
        # as CuPy's: the array that owns the memory (views keep it alive), None for an owner
        return self._base

    @property
    def flags(self):
        return _Flags(self._a, self.base is None)

    @property
    def data(self):
        return _MemoryPointer(self._a.__array_interface__["data"][0])

    @property
    def device(self):
        return cuda.Device(0)

    @property
    def flat(self):
        return flatiter(self)

    @property
    def __cuda_array_interface__(self):
        a = self._a
        return {"shape": a.shape, "typestr": a.dtype.str, "descr": a.dtype.descr,
                "data": (a.__array_interface__["data"][0], False), "version": 3,
                "strides": None if a.flags.c_contiguous else a.strides}

    # -- methods with CuPy's own semantics ---------------------------------------
    def fill(self, value):
        if isinstance(value, _np.ndarray):
            if value.shape != ():
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            value = value.item()
        elif isinstance(value, ndarray):
            if value.shape != ():
                raise ValueError("non-scalar cupy.ndarray cannot be used for fill")
            value = value._a[()]
        elif type(value) not in _SCALAR_TYPES:
            raise _unsupported(value)
        self._a.fill(value)

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        dtype = _check_dtype(dtype)
        r = self._a.astype(dtype, order=order, casting="unsafe" if casting is None else casting,
                           copy=copy)
        return self if r is self._a else _wrap(r)

    def copy(self, order="C"):
        return _wrap(self._a.copy(order))

    def view(self, dtype=None, array_class=None):
        if array_class is not None:
            raise NotImplementedError("fakecupy: view(array_class=...) is not emulated")
        return _wrap(self._a.view() if dtype is None else self._a.view(_check_dtype(dtype)))

    def reshape(self, *shape, order="C"):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _wrap(self._a.reshape(shape, order=order))

    def take(self, indices, axis=None, out=None):
        # CuPy's take kernel wraps indices (no bounds error); host indices are copied over
        seen = _Seen()
        idx = _unwrap(indices, seen, host_ok=True)
        o = _unwrap(out, seen) if out is not None else None
        return _wrap(_np.take(self._a, idx, axis=axis, out=o, mode="wrap"), seen)

    def put(self, indices, values, mode="wrap"):
        seen = _Seen()
        self._a.put(_unwrap(indices, seen, True), _unwrap(values, seen, True), mode=mode)

    def ptp(self, axis=None, out=None, keepdims=False):
        seen = _Seen()
        o = _unwrap(out, seen) if out is not None else None
        return _wrap(_np.ptp(self._a, axis=axis, out=o, keepdims=keepdims), seen)

    def sort(self, axis=-1, kind=None):
        self._a.sort(axis=axis, kind=kind)

    def partition(self, kth, axis=-1):
        self._a.partition(_unwrap(kth, _Seen()), axis=axis)

    def nonzero(self):
        return tuple(_wrap_array(i) for i in self._a.nonzero())

    def reduced_view(self, dtype=None):
        if self._a.ndim <= 1:
            return self
        if self._a.flags.c_contiguous:
            return _wrap(self._a.reshape(-1))
        return self

    def _scatter(self, slices, value, op):
        seen = _Seen()
        k = _index(slices, seen)
        v = _unwrap(value, seen, host_ok=True)
        op(self._a, k, v)

    def scatter_add(self, slices, value):
        self._scatter(slices, value, _np.add.at)

    def scatter_max(self, slices, value):
        self._scatter(slices, value, _np.maximum.at)

    def scatter_min(self, slices, value):
        self._scatter(slices, value, _np.minimum.at)

    cstruct = property(lambda self: _not_emulated("ndarray.cstruct")())
    mdspan = property(lambda self: _not_emulated("ndarray.mdspan")())

    def toDlpack(self):
        raise NotImplementedError("fakecupy does not emulate DLPack")


for _name in ("all", "any", "argmax", "argmin", "argpartition", "argsort", "byteswap", "choose",
              "clip", "compress", "conj", "conjugate", "cumprod", "cumsum", "diagonal", "dot",
              "flatten", "max", "mean", "min", "prod", "ravel", "repeat", "round", "searchsorted",
              "squeeze", "std", "sum", "swapaxes", "trace", "transpose", "var"):
    setattr(ndarray, _name, _method(_name, host_ok=_name in ("choose", "compress", "repeat")))
del _name


class _nullctx:
    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self.f

    def __exit__(self, *exc):
        return False


def _rebuild(host):
    return _wrap_array(_np.array(host, copy=True))


class flatiter:
    """cupy.flatiter: ``x.flat``."""

    def __init__(self, a):
        self._base = a

    @property
    def base(self):
        return self._base

    def __getitem__(self, key):
        return _wrap(_np.asarray(self._base._a.flat[_index(key, _Seen())]))

    def __setitem__(self, key, value):
        if isinstance(value, ndarray):
            value = value._a
        elif isinstance(value, _np.ndarray):
            raise _unsupported(value)
        self._base._a.flat[_index(key, _Seen())] = value

    def __len__(self):
        return self._base.size

    def __iter__(self):
        return (self[i] for i in range(self._base.size))


# ----------------------------------------------------------------------------- ufuncs
class ufunc:
    """cupy.ufunc over NumPy's: device arrays and scalars in, device arrays out."""

    def __init__(self, name, numpy_func):
        self._np = numpy_func
        self.__name__ = self.name = "cupy_" + name
        self._short = name
        self.nin = getattr(numpy_func, "nin", 1)
        self.nout = getattr(numpy_func, "nout", 1)
        self.nargs = self.nin + self.nout
        self.types = list(getattr(numpy_func, "types", []))
        self._scatter_op = _SCATTER_UFUNCS.get(name)
        self.__doc__ = getattr(numpy_func, "__doc__", None)

    def __repr__(self):
        return "<ufunc '%s'>" % self.name

    def __call__(self, *args, **kwargs):
        if len(args) < self.nin:
            raise TypeError("Wrong number of arguments for %s" % self.name)
        seen = _Seen()
        inputs = []
        for x in args[:self.nin]:
            if isinstance(x, ndarray):
                seen[id(x._a)] = x
                inputs.append(x._a)
            elif type(x) in _SCALAR_TYPES:
                inputs.append(x)
            else:
                raise _unsupported(x)
        outs = list(args[self.nin:])
        if "out" in kwargs:
            if outs:
                raise ValueError("Cannot specify 'out' as both a positional and keyword argument")
            out = kwargs.pop("out")
            outs = list(out) if isinstance(out, tuple) else [out]
        if len(outs) > self.nout:
            raise ValueError("Wrong number of arguments for %s" % self.name)
        np_outs = []
        for o in outs:
            if o is None:
                np_outs.append(None)
            elif isinstance(o, ndarray):
                seen[id(o._a)] = o
                np_outs.append(o._a)
            else:
                raise TypeError("Output arguments must be cupy.ndarray")
        where = kwargs.get("where")
        if where is not None:
            if not isinstance(where, ndarray):
                raise _unsupported(where)
            kwargs["where"] = where._a
        if _bi.any(o is not None for o in np_outs):
            kwargs["out"] = tuple(np_outs) + (None,) * (self.nout - len(np_outs))
        if not isinstance(self._np, _np.ufunc):
            if "out" in kwargs:
                kwargs["out"] = kwargs["out"][0]
        return _wrap(self._np(*inputs, **kwargs), seen)

    def at(self, a, indices, b=None):
        if self._scatter_op is None:
            raise NotImplementedError("`%s.at` is not supported yet" % self.name)
        if not isinstance(a, ndarray):
            raise AttributeError("'%s' object has no attribute '_scatter_op'" % type(a).__name__)
        op = self._scatter_op
        ok = {"add": (_np.int32, _np.float16, _np.float32, _np.float64, _np.uint32, _np.uint64),
              "max": (_np.int32, _np.float32, _np.float64, _np.uint32, _np.uint64),
              "min": (_np.int32, _np.float32, _np.float64, _np.uint32, _np.uint64)}.get(op)
        k = _index(indices, _Seen())
        if ok is not None and _advanced(k) and not issubclass(a.dtype.type, ok):
            raise TypeError("scatter_%s only supports %s as data type"
                            % (op, ", ".join(t.__name__ for t in ok)))
        seen = _Seen()
        v = _unwrap(b, seen, host_ok=True)
        self._np.at(a._a, k, v)

    def reduce(self, array, axis=0, dtype=None, out=None, keepdims=False):
        if self._short == "add":
            return array.sum(axis, dtype, out, keepdims)
        if self._short == "multiply":
            return array.prod(axis, dtype, out, keepdims)
        raise NotImplementedError("`%s.reduce` is not supported yet" % self.name)

    def accumulate(self, array, axis=0, dtype=None, out=None):
        if self._short == "add":
            return array.cumsum(axis, dtype, out)
        if self._short == "multiply":
            return array.cumprod(axis, dtype, out)
        raise NotImplementedError("`%s.accumulate` is not supported yet" % self.name)

    def reduceat(self, array, indices, axis=0, dtype=None, out=None):
        if self._short != "add":
            raise NotImplementedError("`%s.reduceat` is not supported yet" % self.name)
        args, kwargs, seen = _unwrap_all((array, indices), {"out": out} if out is not None else {},
                                         host_ok=False)
        return _wrap(_np.add.reduceat(args[0], args[1], axis=axis, dtype=dtype, **kwargs), seen)

    def outer(self, A, B, **kwargs):
        A, B = asarray(A), asarray(B)
        A = A.reshape(A.shape + (1,) * B.ndim)
        B = B.reshape((1,) * (A.ndim - B.ndim) + B.shape)
        return self(A, B, **kwargs)


_UFUNCS = {}             # cupy name -> ufunc (aliases share one object, as in CuPy)
_UFUNC_BY_NUMPY_NAME = {}
for _name in sorted(_UFUNC_NAMES):
    _npf = getattr(_np, _name)
    _found = next((u for u in _UFUNCS.values() if u._np is _npf), None)
    if _found is None:
        _found = ufunc(getattr(_npf, "__name__", _name), _npf)
        if isinstance(_npf, _np.ufunc):
            _UFUNC_BY_NUMPY_NAME[_npf.__name__] = _found
    _UFUNCS[_name] = _found
del _name, _npf, _found


# ----------------------------------------------------------------------------- functions
def _function(name, numpy_func, host_ok=False, wrap_python=False):
    """cupy.<name>: NumPy's function on host copies' views; host arrays refused."""
    def func(*args, **kwargs):
        args, kwargs, seen = _unwrap_all(args, kwargs, host_ok)
        r = numpy_func(*args, **kwargs)
        if wrap_python and isinstance(r, (_bi.bool, int, float)):
            r = _np.asarray(r)
        return _wrap(r, seen)
    func.__name__ = name
    func.__qualname__ = name
    func.__module__ = __name__
    func.__doc__ = getattr(numpy_func, "__doc__", None)
    return func


def _matmul(a, b, out=None, **kwargs):
    args, kw, seen = _unwrap_all((a, b), dict(kwargs, **({"out": out} if out is not None else {})))
    return _wrap(_np.matmul(*args, **kw), seen)


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    if isinstance(a, ndarray):
        return a.get(stream=stream, order=order, out=out, blocking=blocking)
    r = _np.asarray(a, order=order)
    if out is not None:
        out[...] = r
        return out
    return r


def _to_host_tree(obj):
    if isinstance(obj, ndarray):
        return obj._a
    if type(obj) in (list, tuple):
        return type(obj)(_to_host_tree(v) for v in obj)
    return obj


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    if subok:
        raise NotImplementedError
    if isinstance(obj, ndarray):
        r = obj._a
        if dtype is not None or copy:
            r = r.astype(_check_dtype(dtype) if dtype is not None else r.dtype, order=order,
                         copy=copy)
        if ndmin > r.ndim:
            r = r.reshape((1,) * (ndmin - r.ndim) + r.shape)
        return obj if r is obj._a else _wrap(r)
    # from the host: always a copy (a host-to-device transfer)
    host = _np.array(_to_host_tree(obj), dtype=dtype, copy=True, order=order, ndmin=ndmin)
    return _wrap_array(host)


def asarray(a, dtype=None, order=None, *, blocking=False):
    return array(a, dtype, copy=False, order="K" if order is None else order, blocking=blocking)


def asanyarray(a, dtype=None, order=None, *, blocking=False):
    return asarray(a, dtype, order, blocking=blocking)


def copyto(dst, src, casting="same_kind", where=None):
    if not isinstance(dst, ndarray):
        raise _unsupported(dst)
    if type(src) in (_bi.bool, int, float, complex):
        _np.copyto(_np.empty((), dst.dtype), src, casting=casting)
    elif isinstance(src, _np.ndarray):
        if src.size != 1:
            raise ValueError("non-scalar numpy.ndarray cannot be used for copyto")
        if not _np.can_cast(src, dst.dtype, casting):
            raise TypeError("Cannot cast %s to %s in %s casting mode" % (src.dtype, dst.dtype, casting))
        src = src.squeeze()[()]
    elif _np.isscalar(src):
        if not _np.can_cast(src, dst.dtype, casting):
            raise TypeError("Cannot cast %s to %s in %s casting mode" % (src, dst.dtype, casting))
    elif isinstance(src, ndarray):
        if not _np.can_cast(src.dtype, dst.dtype, casting):
            raise TypeError("Cannot cast %s to %s in %s casting mode" % (src.dtype, dst.dtype, casting))
        src = src._a
    else:
        raise _unsupported(src)
    if where is not None:
        if not isinstance(where, ndarray):
            raise _unsupported(where)
        where = where._a
    _np.copyto(dst._a, src, casting="unsafe", where=True if where is None else where)


def take(a, indices, axis=None, out=None):
    if not isinstance(a, ndarray):
        raise _unsupported(a)
    return a.take(indices, axis, out)


def get_array_module(*args):
    for a in args:
        if isinstance(a, ndarray):
            return _sys.modules[__name__]
    return _np


def is_available():
    return True


def show_config(*, _full=False):
    print("fakecupy %s (NumPy %s on the host)" % (__version__, _np.__version__))


def fuse(*args, **kwargs):
    """No kernel fusion on the host: the function itself."""
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return args[0]
    return lambda f: f


def get_default_memory_pool():
    return _memory_pool


def get_default_pinned_memory_pool():
    return _pinned_memory_pool


def _in1d(ar1, ar2, assume_unique=False, invert=False):
    return _np.isin(_np.ravel(ar1), ar2, assume_unique=assume_unique, invert=invert)


_ALIASES = {"product": _np.prod, "cumproduct": _np.cumprod, "alltrue": _np.all,
            "sometrue": _np.any, "round_": _np.round, "trapz": _np.trapezoid,
            "msort": lambda a: _np.sort(a, axis=0), "in1d": _in1d,
            "asfarray": lambda a, dtype=_np.float64: _np.asarray(a, dtype=dtype)}
_SPECIAL = {"asnumpy": asnumpy, "array": array, "asarray": asarray, "asanyarray": asanyarray,
            "copyto": copyto, "take": take, "get_array_module": get_array_module,
            "is_available": is_available, "show_config": show_config, "fuse": fuse,
            "get_default_memory_pool": get_default_memory_pool,
            "get_default_pinned_memory_pool": get_default_pinned_memory_pool, "matmul": _matmul}
# CuPy returns 0-d arrays where NumPy returns Python numbers
_WRAP_PYTHON = {"allclose", "array_equal", "array_equiv", "count_nonzero"}
# CuPy's save functions take host arrays as well
_HOST_OK = {"save", "savez", "savez_compressed", "savetxt"}
# host-side queries: no device arrays come out
_NO_WRAP = {"can_cast", "result_type", "promote_types", "min_scalar_type", "common_type",
            "mintypecode", "isscalar", "iterable", "isdtype", "issubdtype", "shape", "ndim", "size",
            "broadcast_shapes", "may_share_memory", "shares_memory", "get_printoptions",
            "set_printoptions", "printoptions", "typename", "base_repr", "binary_repr",
            "array2string", "array_repr", "array_str", "format_float_positional",
            "format_float_scientific", "iscomplexobj", "isrealobj", "isfortran"}


def _query(name, numpy_func):
    """cupy.<name> that answers about arrays (shapes, dtypes, overlap): results stay on the host."""
    def func(*args, **kwargs):
        args, kwargs, _ = _unwrap_all(args, kwargs, host_ok=True)
        return numpy_func(*args, **kwargs)
    func.__name__ = func.__qualname__ = name
    func.__module__ = __name__
    func.__doc__ = getattr(numpy_func, "__doc__", None)
    return func


_FUNCTIONS = {}
for _name in sorted(_FUNCTION_NAMES):
    _npf = _SPECIAL.get(_name) or _ALIASES.get(_name) or getattr(_np, _name, None)
    if _name in _SPECIAL:
        _FUNCTIONS[_name] = _npf
    elif not callable(_npf):
        _FUNCTIONS[_name] = _not_emulated(_name)
    elif _name in _NO_WRAP:
        _FUNCTIONS[_name] = _query(_name, _npf)
    else:
        _FUNCTIONS[_name] = _function(_name, _npf, host_ok=_name in _HOST_OK,
                                      wrap_python=_name in _WRAP_PYTHON)
del _name, _npf
# np.matmul is a NumPy ufunc; CuPy's matmul (a gufunc) answers its __array_ufunc__ calls
_UFUNC_BY_NUMPY_NAME["matmul"] = _FUNCTIONS["matmul"]


# ----------------------------------------------------------------------------- memory pools
class _MemoryPool:
    def used_bytes(self):
        return _memory.used

    def total_bytes(self):
        return _memory.used + _memory.held

    def free_bytes(self):
        return _memory.held

    def n_free_blocks(self):
        return 0 if not _memory.held else 1

    def free_all_blocks(self, stream=None):
        _memory.held = 0

    def free_all_free(self):
        self.free_all_blocks()

    def set_limit(self, size=None, fraction=None):
        self._limit = size or 0

    def get_limit(self):
        return getattr(self, "_limit", 0)

    def malloc(self, size):
        raise NotImplementedError("fakecupy does not emulate raw device allocations")


class _PinnedMemoryPool:
    def n_free_blocks(self):
        return 0

    def free_all_blocks(self):
        pass

    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0


_memory_pool = _MemoryPool()
_pinned_memory_pool = _PinnedMemoryPool()


# ----------------------------------------------------------------------------- cuda
_TOTAL_MEMORY = 16 << 30
_current = {"device": 0, "stream": None}


class _CUDARuntimeError(RuntimeError):
    def __init__(self, status, message):
        self.status = status
        super().__init__("%s: %s" % (status, message))


def _check_device(i):
    if not 0 <= int(i) < _getDeviceCount():
        raise _CUDARuntimeError("cudaErrorInvalidDevice", "invalid device ordinal")
    return int(i)


def _getDeviceCount():
    return 1


def _getDevice():
    return _current["device"]


def _setDevice(i):
    _current["device"] = _check_device(i)


def _getDeviceProperties(i):
    _check_device(i)
    return {
        "name": b"protonet fake device", "totalGlobalMem": _TOTAL_MEMORY,
        "sharedMemPerBlock": 49152, "regsPerBlock": 65536, "warpSize": 32, "memPitch": 2147483647,
        "maxThreadsPerBlock": 1024, "maxThreadsDim": (1024, 1024, 64),
        "maxGridSize": (2147483647, 65535, 65535), "clockRate": 1000000, "totalConstMem": 65536,
        "major": 9, "minor": 0, "textureAlignment": 512, "deviceOverlap": 1,
        "multiProcessorCount": 1, "kernelExecTimeoutEnabled": 0, "integrated": 0,
        "canMapHostMemory": 1, "computeMode": 0, "concurrentKernels": 1, "ECCEnabled": 0,
        "pciBusID": 0, "pciDeviceID": 0, "pciDomainID": 0, "tccDriver": 0,
        "asyncEngineCount": 1, "unifiedAddressing": 1, "memoryClockRate": 1000000,
        "memoryBusWidth": 64, "l2CacheSize": 1 << 20, "maxThreadsPerMultiProcessor": 2048,
        "managedMemory": 1, "isMultiGpuBoard": 0, "multiGpuBoardGroupID": 0,
    }


def _runtimeGetVersion():
    return 13000


def _driverGetVersion():
    return 13000


def _deviceSynchronize():
    pass


def _memGetInfo():
    return (_TOTAL_MEMORY - _memory.used, _TOTAL_MEMORY)


class _Device:
    def __init__(self, device=None):
        self.id = _current["device"] if device is None else int(device)
        self._previous = []

    def use(self):
        _setDevice(self.id)

    def synchronize(self):
        _check_device(self.id)

    @property
    def mem_info(self):
        _check_device(self.id)
        return _memGetInfo()

    @property
    def compute_capability(self):
        _check_device(self.id)
        return "90"

    @property
    def attributes(self):
        return {"MaxThreadsPerBlock": 1024, "WarpSize": 32, "MultiProcessorCount": 1}

    def __enter__(self):
        self._previous.append(_current["device"])
        self.use()
        return self

    def __exit__(self, *exc):
        _current["device"] = self._previous.pop()
        return False

    def __int__(self):
        return self.id

    def __index__(self):
        return self.id

    def __eq__(self, other):
        return isinstance(other, _Device) and other.id == self.id

    def __hash__(self):
        return hash(("Device", self.id))

    def __repr__(self):
        return "<CUDA Device %d>" % self.id


class _Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.disable_timing = disable_timing
        self._time = None
        self.ptr = id(self)

    def record(self, stream=None):
        self._time = _time.perf_counter()

    def synchronize(self):
        pass

    @property
    def done(self):
        return True


def _get_elapsed_time(start_event, end_event):
    if start_event._time is None or end_event._time is None:
        raise _CUDARuntimeError("cudaErrorInvalidResourceHandle", "invalid resource handle")
    if start_event.disable_timing or end_event.disable_timing:
        raise _CUDARuntimeError("cudaErrorInvalidResourceHandle", "invalid resource handle")
    return (end_event._time - start_event._time) * 1e3


class _Stream:
    null = None

    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        self.ptr = 0 if null else id(self)
        self._previous = []

    def synchronize(self):
        pass

    def use(self):
        _current["stream"] = self
        return self

    def record(self, event=None):
        event = _Event() if event is None else event
        event.record(self)
        return event

    def wait_event(self, event):
        pass

    @property
    def done(self):
        return True

    def __enter__(self):
        self._previous.append(_current["stream"])
        return self.use()

    def __exit__(self, *exc):
        _current["stream"] = self._previous.pop()
        return False


_Stream.null = _Stream(null=True)


def _get_current_stream(device_id=None):
    return _current["stream"] or _Stream.null


class _CompileException(Exception):
    def __init__(self, msg, source, name, options, backend="nvrtc"):
        self._msg = msg
        self.source = source
        self.name = name
        self.options = options
        self.backend = backend
        super().__init__(msg)

    def get_message(self):
        return self._msg


def _module(name, doc, **attrs):
    m = _types.ModuleType(__name__ + "." + name, doc)
    for k, v in attrs.items():
        if isinstance(v, type) and v.__name__ == "_" + k:
            v.__name__ = v.__qualname__ = k       # kept out of the top level, named as in CuPy
        setattr(m, k, v)
    return m


_runtime_names = dict(
    CUDARuntimeError=_CUDARuntimeError, getDeviceCount=_getDeviceCount, getDevice=_getDevice,
    setDevice=_setDevice, getDeviceProperties=_getDeviceProperties,
    runtimeGetVersion=_runtimeGetVersion, driverGetVersion=_driverGetVersion,
    deviceSynchronize=_deviceSynchronize, memGetInfo=_memGetInfo, is_hip=False)
_runtime = _module("cuda.runtime", "cupy.cuda.runtime stand-in", **_runtime_names)
_compiler = _module("cuda.compiler", "cupy.cuda.compiler stand-in",
                    CompileException=_CompileException)
_memory_module = _module("cuda.memory", "cupy.cuda.memory stand-in", MemoryPool=_MemoryPool,
                         PinnedMemoryPool=_PinnedMemoryPool, MemoryPointer=_MemoryPointer)
cuda = _module(
    "cuda", "cupy.cuda stand-in", runtime=_runtime, compiler=_compiler, memory=_memory_module,
    Device=_Device, Event=_Event, Stream=_Stream, MemoryPool=_MemoryPool,
    PinnedMemoryPool=_PinnedMemoryPool, MemoryPointer=_MemoryPointer,
    get_current_stream=_get_current_stream, get_elapsed_time=_get_elapsed_time,
    get_device_id=_getDevice, is_available=is_available,
    device=_module("cuda.device", "cupy.cuda.device stand-in", Device=_Device),
    stream=_module("cuda.stream", "cupy.cuda.stream stand-in", Stream=_Stream, Event=_Event,
                   get_current_stream=_get_current_stream, get_elapsed_time=_get_elapsed_time),
    get_local_runtime_version=_runtimeGetVersion)


# ----------------------------------------------------------------------------- cuda.nccl
# cupy.cuda.nccl's names that protonet uses, with the collectives carried out at call time over
# MPI (mpi4py's COMM_WORLD): each process started by mpiexec is one fake GPU. A buffer is
# an address and a count, as in NCCL; it must lie inside a live fake device array (anything
# else raises, where real NCCL would read or corrupt memory). Not emulated: asynchrony (the
# work is done when the call returns, so a missing stream wait goes unseen), groups, send/recv,
# communicators that are not the whole MPI world.
_NCCL_DTYPES = {0: _np.int8, 1: _np.uint8, 2: _np.int32, 3: _np.uint32, 4: _np.int64,
                5: _np.uint64, 6: _np.float16, 7: _np.float32, 8: _np.float64}


def _nccl_buffer(ptr, count, datatype):
    """The NumPy view of ``count`` elements at device address ``ptr``, checked to be inside
    one live fake array."""
    dtype = _np.dtype(_NCCL_DTYPES[datatype])
    end = ptr + count * dtype.itemsize
    with _memory.lock:
        owners = [ref() for ref in _memory.owner.values()]
    for fake in owners:
        if fake is None:
            continue
        root = _root(fake._a)
        start = root.__array_interface__["data"][0]
        if start <= ptr and end <= start + root.nbytes:
            flat = root.reshape(-1).view(_np.uint8)
            return flat[ptr - start:end - start].view(dtype)
    raise ValueError("fakecupy.cuda.nccl: %d elements of %s at 0x%x are not inside a live device "
                     "array" % (count, dtype, ptr))


class _NcclCommunicator:
    def __init__(self, ndev, commId, rank):
        from mpi4py import MPI
        self._mpi = MPI
        self._world = MPI.COMM_WORLD
        if (ndev, rank) != (self._world.Get_size(), self._world.Get_rank()):
            raise RuntimeError("fakecupy.cuda.nccl: communicator of %d ranks, rank %d, but the MPI "
                               "world is %d ranks and this is rank %d"
                               % (ndev, rank, self._world.Get_size(), self._world.Get_rank()))
        if not isinstance(commId, bytes) or len(commId) != 128:
            raise TypeError("commId must be the 128 bytes of get_unique_id()")
        self._ops = {0: MPI.SUM, 1: MPI.PROD, 2: MPI.MAX, 3: MPI.MIN}
        self._rank, self._size = rank, ndev

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
        recv = _nccl_buffer(recvbuf, count, datatype)
        if sendbuf == recvbuf:
            self._world.Allreduce(self._mpi.IN_PLACE, recv, op=self._ops[op])
        else:
            self._world.Allreduce(_nccl_buffer(sendbuf, count, datatype).copy(), recv,
                                  op=self._ops[op])

    def bcast(self, buff, count, datatype, root, stream):
        self._world.Bcast(_nccl_buffer(buff, count, datatype), root=root)

    def rank_id(self):
        return self._rank

    def size(self):
        return self._size

    def abort(self):
        pass

    def destroy(self):
        pass


def _nccl_get_unique_id():
    return bytes(_os.urandom(128))


nccl = _module("cuda.nccl", "cupy.cuda.nccl stand-in (collectives over MPI)",
               NcclCommunicator=_NcclCommunicator, get_unique_id=_nccl_get_unique_id,
               available=True, NCCL_SUM=0, NCCL_PROD=1, NCCL_MAX=2, NCCL_MIN=3,
               NCCL_INT8=0, NCCL_UINT8=1, NCCL_INT32=2, NCCL_UINT32=3, NCCL_INT64=4,
               NCCL_UINT64=5, NCCL_FLOAT16=6, NCCL_FLOAT32=7, NCCL_FLOAT64=8)
cuda.nccl = nccl
for _name in ("get_cuda_path", "get_nvcc_path", "get_rocm_path", "get_hipcc_path", "alloc",
              "alloc_pinned_memory", "malloc_async", "malloc_managed", "set_allocator",
              "get_allocator", "set_pinned_memory_allocator", "using_allocator", "profile",
              "get_cublas_handle"):
    setattr(cuda, _name, _not_emulated("cuda." + _name))
del _name


# ----------------------------------------------------------------------------- RawKernel
# How a kernel runs on the host: the CUDA qualifiers become C++, the thread and
# block indices are constants (one thread, one block), atomics are plain.
KERNEL_PRELUDE = r"""#include <cmath>
#include <cfloat>
struct pn_dim3 { unsigned int x, y, z; };
static const pn_dim3 blockIdx = {0,0,0}, threadIdx = {0,0,0}, blockDim = {1,1,1}, gridDim = {1,1,1};
#define __global__
#define __device__
#define __forceinline__ inline
template <class T> static inline T atomicAdd(T* p, T v) { T o = *p; *p += v; return o; }
"""

# launches per kernel name, for tests to see that a kernel was used
launch_counts = _collections.Counter()


def reset_launch_counts():
    launch_counts.clear()


_C_TYPES = {
    "float": _np.float32, "double": _np.float64, "int": _np.int32, "signed int": _np.int32,
    "unsigned int": _np.uint32, "unsigned": _np.uint32, "long long": _np.int64,
    "long long int": _np.int64, "signed long long": _np.int64, "unsigned long long": _np.uint64,
    "unsigned long long int": _np.uint64, "long": _np.int64, "long int": _np.int64,
    "unsigned long": _np.uint64, "short": _np.int16, "short int": _np.int16,
    "unsigned short": _np.uint16, "signed char": _np.int8, "char": _np.int8,
    "unsigned char": _np.uint8, "bool": _np.bool_, "size_t": _np.uint64, "ptrdiff_t": _np.int64,
    "int8_t": _np.int8, "int16_t": _np.int16, "int32_t": _np.int32, "int64_t": _np.int64,
    "uint8_t": _np.uint8, "uint16_t": _np.uint16, "uint32_t": _np.uint32, "uint64_t": _np.uint64,
    "void": None,
}
_CTYPES_OF = {
    _np.dtype(_np.float32): _ctypes.c_float, _np.dtype(_np.float64): _ctypes.c_double,
    _np.dtype(_np.int8): _ctypes.c_int8, _np.dtype(_np.int16): _ctypes.c_int16,
    _np.dtype(_np.int32): _ctypes.c_int32, _np.dtype(_np.int64): _ctypes.c_int64,
    _np.dtype(_np.uint8): _ctypes.c_uint8, _np.dtype(_np.uint16): _ctypes.c_uint16,
    _np.dtype(_np.uint32): _ctypes.c_uint32, _np.dtype(_np.uint64): _ctypes.c_uint64,
    _np.dtype(_np.bool_): _ctypes.c_bool,
}
_QUALIFIERS = {"const", "volatile", "__restrict__", "__restrict", "restrict", "struct"}


def _strip_comments(code):
    return _re.sub(r"/\*.*?\*/|//[^\n]*", " ", code, flags=_re.S)


def _kernel_params(code, name):
    """[(pointer depth, dtype or None, text)] of ``extern "C"`` kernel ``name``, or None."""
    code = _strip_comments(code)
    m = _re.search(r'extern\s+"C"[^;{}()]*?\bvoid\s+%s\s*\(([^)]*)\)' % _re.escape(name), code)
    if m is None:
        return None
    aliases = {alias: target.strip() for target, alias in
               _re.findall(r"typedef\s+([^;{}]+?)\s+(\w+)\s*;", code)}
    aliases.update({alias: target.strip() for alias, target in
                    _re.findall(r"using\s+(\w+)\s*=\s*([^;{}]+);", code)})
    params = []
    text = m.group(1).strip()
    if text in ("", "void"):
        return params
    for p in text.split(","):
        tokens = [t for t in _re.findall(r"\w+|\*", p) if t not in _QUALIFIERS]
        depth = tokens.count("*")
        words = [t for t in tokens if t != "*"]
        if len(words) >= 2:
            words = words[:-1]           # the parameter's name
        base = " ".join(words)
        for _ in range(8):               # resolve typedefs (which may add pointers)
            if base not in aliases:
                break
            target = [t for t in _re.findall(r"\w+|\*", aliases[base]) if t not in _QUALIFIERS]
            depth += target.count("*")
            base = " ".join(t for t in target if t != "*")
        params.append((depth, _C_TYPES.get(base, "unknown"), p.strip()))
    return params


def _compile_options(options):
    out = []
    for o in options:
        if o.startswith(("-D", "-I", "-U")):
            out.append(o)
        elif o.startswith(("-std=", "--std=")):
            out.append("-std=" + o.split("=", 1)[1])
    return out


_libraries = {}
_compile_lock = _threading.Lock()


def _cache_dir():
    path = _os.path.join(_tempfile.gettempdir(), "fakecupy-kernels-%d" % _os.getuid())
    _os.makedirs(path, exist_ok=True)
    return path


def _load_library(source, options, name):
    flags = _compile_options(options)
    key = _hashlib.sha256((source + "\0" + " ".join(flags)).encode()).hexdigest()[:32]
    with _compile_lock:
        lib = _libraries.get(key)
        if lib is not None:
            return lib
        folder = _cache_dir()
        so = _os.path.join(folder, key + ".so")
        if not _os.path.exists(so):
            src = _os.path.join(folder, key + ".cpp")
            with open(src, "w") as f:
                f.write(source)
            tmp = "%s.%d.tmp" % (so, _os.getpid())
            proc = _subprocess.run(["g++", "-O2", "-shared", "-fPIC"] + flags + ["-o", tmp, src],
                                   capture_output=True, text=True)
            if proc.returncode != 0:
                raise _CompileException(proc.stderr, source, name, tuple(options), "g++")
            _os.replace(tmp, so)
        lib = _libraries[key] = _ctypes.CDLL(so)
        return lib


class RawKernel:
    """cupy.RawKernel, run on the host (see KERNEL_PRELUDE)."""

    def __init__(self, code, name, options=(), backend="nvrtc", translate_cucomplex=False, *,
                 enable_cooperative_groups=False, jitify=False):
        if not isinstance(code, str) or not isinstance(name, str):
            raise TypeError("RawKernel needs the source and the kernel name as str")
        self.code = code
        self.name = name
        self.options = tuple(options)
        self.backend = backend
        self.enable_cooperative_groups = enable_cooperative_groups
        self._function = None
        self._params = _kernel_params(code, name)

    def compile(self, log_stream=None):
        self.kernel   # noqa: B018  (compiles)

    @property
    def kernel(self):
        if self._function is None:
            lib = _load_library(KERNEL_PRELUDE + self.code, self.options, self.name)
            try:
                fn = getattr(lib, self.name)
            except AttributeError:
                raise _CompileException("no extern \"C\" function named %s" % self.name, self.code,
                                       self.name, self.options) from None
            fn.restype = None
            self._function = fn
        return self._function

    @property
    def attributes(self):
        return {"max_threads_per_block": 1024, "shared_size_bytes": 0, "const_size_bytes": 0,
                "local_size_bytes": 0, "num_regs": 32, "ptx_version": 90, "binary_version": 90}

    max_threads_per_block = property(lambda self: 1024)
    num_regs = property(lambda self: 32)
    shared_size_bytes = property(lambda self: 0)

    def _arg(self, i, a, param):
        depth, dtype = (param[0], param[1]) if param is not None else (None, "unknown")
        where = "%s argument %d%s" % (self.name, i, " (%s)" % param[2] if param else "")
        if isinstance(a, ndarray):
            if depth == 0:
                raise TypeError("%s: an array for a value parameter" % where)
            if not a._a.flags.c_contiguous:
                raise ValueError("%s: the array is not C-contiguous (a kernel gets a bare pointer)"
                                 % where)
            if depth == 1 and dtype not in ("unknown", None) and a.dtype != _np.dtype(dtype):
                raise TypeError("%s: a %s array for a %s pointer" % (where, a.dtype, _np.dtype(dtype)))
            return _ctypes.c_void_p(a._a.__array_interface__["data"][0])
        if a is None:
            if depth == 0:
                raise TypeError("%s: None for a value parameter" % where)
            return _ctypes.c_void_p(0)
        if isinstance(a, _np.generic) and a.dtype in _CTYPES_OF:
            if depth:
                raise TypeError("%s: a %s scalar for a pointer parameter" % (where, a.dtype))
            if dtype not in ("unknown", None) and a.dtype != _np.dtype(dtype):
                raise TypeError("%s: a %s scalar for a %s parameter (the kernel would read it "
                                "as the wrong type)" % (where, a.dtype, _np.dtype(dtype)))
            return _CTYPES_OF[a.dtype](a.item())
        if isinstance(a, (_bi.bool, int, float)):
            raise TypeError("%s: a Python %s; pass a typed NumPy scalar (np.int32, np.int64, "
                            "np.float32, np.float64) that matches the kernel's parameter"
                            % (where, type(a).__name__))
        raise _unsupported(a)

    def _check_overlap(self, args, params):
        """Buffers that overlap where one is written race on a GPU (threads run in any order).

        The same buffer as input and output too: a thread that reads its
        neighbours' inputs (LRN, col2im) would see other threads' outputs, and
        one serial pass here cannot show it. So every overlap but read-only
        (const) pairs is refused: protonet's kernels never run in place.
        """
        spans = []
        for i, a in enumerate(args):
            if isinstance(a, ndarray) and a.size:
                lo = a._a.__array_interface__["data"][0]
                const = params is not None and "const" in params[i][2].split("*")[0].split()
                spans.append((lo, lo + a.nbytes, const, i))
        for j, (lo, hi, const, i) in enumerate(spans):
            for lo2, hi2, const2, i2 in spans[j + 1:]:
                if lo < hi2 and lo2 < hi and not (const and const2):
                    raise ValueError("%s: arguments %d and %d overlap in memory and one is written; "
                                     "the kernel's threads would race on a GPU" % (self.name, i, i2))

    def __call__(self, grid, block, args, *, shared_mem=0):
        dims = []
        for what, d, limit in (("grid", grid, (2 ** 31 - 1, 65535, 65535)),
                               ("block", block, (1024, 1024, 64))):
            if not isinstance(d, tuple) or not 1 <= len(d) <= 3:
                raise TypeError("%s must be a tuple of 1 to 3 ints, got %r" % (what, d))
            for v, most in zip(d, limit):
                if not isinstance(v, (int, _np.integer)) or not 1 <= v <= most:
                    raise _CUDARuntimeError("CUDA_ERROR_INVALID_VALUE",
                                           "%s dimension %r out of range" % (what, v))
            dims.append(d)
        threads = 1
        for v in dims[1]:
            threads *= int(v)
        if threads > 1024:
            raise _CUDARuntimeError("CUDA_ERROR_INVALID_VALUE", "more than 1024 threads per block")
        if not 0 <= shared_mem <= 49152:
            raise _CUDARuntimeError("CUDA_ERROR_INVALID_VALUE", "shared_mem %r" % (shared_mem,))
        args = tuple(args)
        params = self._params
        if params is not None and len(params) != len(args):
            raise TypeError("%s takes %d arguments, got %d" % (self.name, len(params), len(args)))
        c_args = [self._arg(i, a, params[i] if params is not None else None)
                  for i, a in enumerate(args)]
        self._check_overlap(args, params)
        fn = self.kernel
        fn(*c_args)
        launch_counts[self.name] += 1


def _kernel_class(name):
    class NotEmulated:
        def __init__(self, *args, **kwargs):
            raise NotImplementedError("fakecupy does not emulate cupy.%s" % name)
    NotEmulated.__name__ = NotEmulated.__qualname__ = name
    return NotEmulated


# ----------------------------------------------------------------------------- random
def _host_params(args, kwargs):
    """Distribution parameters may be device or host arrays (CuPy copies them over)."""
    args, kwargs, _ = _unwrap_all(args, kwargs, host_ok=True)
    return args, kwargs


def _float_dtype(dtype):
    dtype = _np.dtype(dtype)
    if dtype.char not in "fd":
        raise TypeError("cupy.random only supports float32 and float64")
    return dtype


class _RandomState:
    """cupy.random.RandomState drawing from a NumPy Generator (seeded like CuPy: any int)."""

    def __init__(self, seed=None, method=None):
        self.seed(seed)

    def seed(self, seed=None):
        if isinstance(seed, ndarray):
            seed = seed.get()
        if isinstance(seed, _np.generic):
            seed = seed.item()
        self._gen = _np.random.default_rng(seed)

    def _draw(self, method, size, cast, *args, **kwargs):
        args, kwargs = _host_params(args, kwargs)
        r = getattr(self._gen, method)(*args, size=size, **kwargs)
        r = _np.asarray(r)
        if cast is not None:
            r = r.astype(cast, copy=False)
        return _wrap_array(_np.array(r, copy=True))

    def random_sample(self, size=None, dtype=float):
        return self._draw("random", size, None, dtype=_float_dtype(dtype))

    def rand(self, *size, **kwargs):
        dtype = kwargs.pop("dtype", float)
        if kwargs:
            raise TypeError("rand() got unexpected keyword arguments %s" % ", ".join(kwargs))
        return self.random_sample(size or None, dtype)

    def randn(self, *size, **kwargs):
        dtype = kwargs.pop("dtype", float)
        if kwargs:
            raise TypeError("randn() got unexpected keyword arguments %s" % ", ".join(kwargs))
        return self.standard_normal(size or None, dtype)

    def standard_normal(self, size=None, dtype=float):
        return self._draw("standard_normal", size, None, dtype=_float_dtype(dtype))

    def normal(self, loc=0.0, scale=1.0, size=None, dtype=float):
        return self._draw("normal", size, _float_dtype(dtype), loc, scale)

    def uniform(self, low=0.0, high=1.0, size=None, dtype=float):
        return self._draw("uniform", size, _float_dtype(dtype), low, high)

    def randint(self, low, high=None, size=None, dtype=int):
        if high is None:
            low, high = 0, low
        return self._draw("integers", size, None, low, high, dtype=_np.dtype(dtype))

    def tomaxint(self, size=None):
        return self._draw("integers", size, None, 0, _np.iinfo(_np.int64).max, dtype=_np.int64)

    def choice(self, a, size=None, replace=True, p=None):
        (a, p), _ = _host_params((a, p), {})
        return _wrap_array(_np.array(self._gen.choice(a, size=size, replace=replace, p=p), copy=True))

    def permutation(self, a):
        (a,), _ = _host_params((a,), {})
        return _wrap_array(_np.array(self._gen.permutation(a), copy=True))

    def shuffle(self, a):
        if not isinstance(a, ndarray):
            raise TypeError("The array must be cupy.ndarray")
        self._gen.shuffle(a._a)

    def binomial(self, n, p, size=None, dtype=int):
        return self._draw("binomial", size, _np.dtype(dtype), n, p)


def _distribution(method, float_result=True):
    def draw(self, *args, size=None, dtype=float if float_result else int, **kwargs):
        return self._draw(method, size, _np.dtype(dtype), *args, **kwargs)
    draw.__name__ = method
    return draw


for _name in sorted(_RANDOMSTATE_METHODS):
    if not hasattr(_RandomState, _name):
        _int = _name in ("geometric", "hypergeometric", "logseries", "negative_binomial",
                         "poisson", "zipf")
        setattr(_RandomState, _name, _distribution(_name, float_result=not _int))
del _name, _int


class _Generator:
    """cupy.random.Generator (from default_rng) over a NumPy Generator."""

    def __init__(self, bit_generator=None):
        seed = getattr(bit_generator, "_seed", bit_generator)
        self._gen = _np.random.default_rng(seed)
        self.bit_generator = bit_generator

    def __getattr__(self, name):
        if name not in _GENERATOR_METHODS:
            raise AttributeError(name)
        method = getattr(self._gen, name)

        def draw(*args, **kwargs):
            out = kwargs.pop("out", None)
            args, kwargs = _host_params(args, kwargs)
            r = _np.array(method(*args, **kwargs), copy=True)
            if out is not None:
                out[...] = _wrap_array(r)
                return out
            return _wrap_array(r)
        return draw


class _BitGenerator:
    def __init__(self, seed=None, *args, **kwargs):
        self._seed = seed


class _XORWOW(_BitGenerator):
    pass


class _MRG32k3a(_BitGenerator):
    pass


class _Philox4x3210(_BitGenerator):
    pass


_random_state = {"state": None}


def _get_random_state():
    if _random_state["state"] is None:
        _random_state["state"] = _RandomState()
    return _random_state["state"]


def _set_random_state(rs):
    _random_state["state"] = rs


def _reset_states():
    _random_state["state"] = None


def _seed(seed=None):
    _get_random_state().seed(seed)


def _default_rng(seed=None):
    return _Generator(seed)


def _global(name):
    def draw(*args, **kwargs):
        return getattr(_get_random_state(), name)(*args, **kwargs)
    draw.__name__ = name
    return draw


_random_attrs = {"RandomState": _RandomState, "BitGenerator": _BitGenerator, "XORWOW": _XORWOW,
                 "MRG32k3a": _MRG32k3a, "Philox4x3210": _Philox4x3210,
                 "get_random_state": _get_random_state, "set_random_state": _set_random_state,
                 "reset_states": _reset_states, "seed": _seed, "default_rng": _default_rng}
for _name in sorted(_RANDOM_FUNCTION_NAMES):
    if _name in _random_attrs:
        continue
    _target = {"random": "random_sample", "ranf": "random_sample", "sample": "random_sample",
               "random_integers": None, "multinomial": None, "bytes": None}.get(_name, _name)
    if _target is None or not hasattr(_RandomState, _target):
        _random_attrs[_name] = _not_emulated("random." + _name)
    else:
        _random_attrs[_name] = _global(_target)
del _name, _target
random = _module("random", "cupy.random stand-in", **_random_attrs)


# ----------------------------------------------------------------------------- lib, linalg, ...
def _as_strided(x, shape=None, strides=None):
    if not isinstance(x, ndarray):
        raise _unsupported(x)
    return _wrap(_np.lib.stride_tricks.as_strided(x._a, shape, strides))


def _sliding_window_view(x, window_shape, axis=None, *, subok=False, writeable=False):
    if not isinstance(x, ndarray):
        raise _unsupported(x)
    return _wrap(_np.lib.stride_tricks.sliding_window_view(x._a, window_shape, axis,
                                                           writeable=writeable))


lib = _module("lib", "cupy.lib stand-in",
              stride_tricks=_module("lib.stride_tricks", "cupy.lib.stride_tricks stand-in",
                                    as_strided=_as_strided,
                                    sliding_window_view=_sliding_window_view))
linalg = _module("linalg", "cupy.linalg stand-in", LinAlgError=_np.linalg.LinAlgError,
                 **{n: _function(n, getattr(_np.linalg, n)) for n in sorted(_LINALG_NAMES)
                    if hasattr(_np.linalg, n)})
exceptions = _module("exceptions", "cupy.exceptions stand-in",
                     AxisError=_np.exceptions.AxisError,
                     ComplexWarning=_np.exceptions.ComplexWarning,
                     ModuleDeprecationWarning=_np.exceptions.ModuleDeprecationWarning,
                     RankWarning=_np.exceptions.RankWarning,
                     TooHardError=_np.exceptions.TooHardError,
                     VisibleDeprecationWarning=_np.exceptions.VisibleDeprecationWarning)


def _host_assert(name):
    check = getattr(_np.testing, name)

    def assertion(*args, **kwargs):
        args = tuple(asnumpy(a) if isinstance(a, ndarray) else a for a in args)
        return check(*args, **kwargs)
    assertion.__name__ = name
    return assertion


testing = _module("testing", "cupy.testing stand-in (the assertions)",
                  **{n: _host_assert(n) for n in ("assert_allclose", "assert_array_equal",
                                                   "assert_array_almost_equal", "assert_array_less",
                                                   "assert_array_max_ulp",
                                                   "assert_array_almost_equal_nulp")})

# ----------------------------------------------------------------------------- the namespace
_namespace = {}
_namespace.update(_UFUNCS)
_namespace.update(_FUNCTIONS)
_namespace.update({n: getattr(_np, n) for n in _NUMPY_TYPE_NAMES})
_namespace.update({n: getattr(_np, n) for n in ("e", "euler_gamma", "inf", "nan", "newaxis", "pi",
                                                "c_", "r_", "s_", "index_exp", "mgrid", "ogrid")})
_namespace.update({"Inf": _np.inf, "Infinity": _np.inf, "infty": _np.inf, "PINF": _np.inf,
                   "NINF": -_np.inf, "NAN": _np.nan, "NaN": _np.nan, "PZERO": 0.0,
                   "NZERO": -0.0, "disable_experimental_feature_warning": False})
_namespace.update({
    "ndarray": ndarray, "ufunc": ufunc, "flatiter": flatiter, "RawKernel": RawKernel,
    "ElementwiseKernel": _kernel_class("ElementwiseKernel"),
    "ReductionKernel": _kernel_class("ReductionKernel"), "RawModule": _kernel_class("RawModule"),
    "vectorize": _kernel_class("vectorize"), "broadcast": _kernel_class("broadcast"),
    "poly1d": _kernel_class("poly1d"), "format_parser": _np.rec.format_parser,
    "DataSource": _np.lib.npyio.DataSource, "AxisError": _np.exceptions.AxisError,
    "ComplexWarning": _np.exceptions.ComplexWarning,
    "ModuleDeprecationWarning": _np.exceptions.ModuleDeprecationWarning,
    "RankWarning": _np.exceptions.RankWarning, "TooHardError": _np.exceptions.TooHardError,
    "VisibleDeprecationWarning": _np.exceptions.VisibleDeprecationWarning,
    "cfloat": _np.complex128, "complex_": _np.complex128, "float_": _np.float64,
    "singlecomplex": _np.complex64,
})
_namespace.update({"cuda": cuda, "random": random, "lib": lib, "linalg": linalg,
                   "exceptions": exceptions, "testing": testing})
assert set(_namespace) >= (_UFUNC_NAMES | _FUNCTION_NAMES | _NUMPY_TYPE_NAMES | _CLASS_NAMES
                           | _CONSTANT_NAMES), "a CuPy name is missing"
globals().update(_namespace)
del _namespace
