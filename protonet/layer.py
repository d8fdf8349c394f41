"""Layer base class and the registry keyed by Caffe's type strings.

Built-in layers and Python plugins share one interface, pycaffe's:
``setup(bottom, top)``, ``reshape(bottom, top)``, ``forward(bottom, top)``,
``backward(top, propagate_down, bottom)``; ``bottom``/``top`` are lists of
:class:`~protonet.blob.Blob`. As in Caffe, ``backward`` overwrites bottom
diffs and *accumulates* into parameter diffs (the solver clears them once per
iteration).

The clear may be lazy (``Blob.clear_diff`` sets a flag while no script holds
the diff; reading it zero-fills first), so ``blob.engine_diff() += g`` stays
correct everywhere; layers read parameter diffs through ``engine_diff()``,
which does not hand the array out as the public ``diff`` does. A layer
that computes a parameter's whole gradient in one product may instead ask
``diff, overwrite = blob.grad_target()`` and write ``diff[...] = g`` (or a
GEMM with ``out=diff``) when ``overwrite`` is True, ``+=`` otherwise: the
first writer after a clear overwrites, later ones (``iter_size`` > 1,
parameters shared between layers) add. ``add_product_to_diff`` does this
for a GEMM, and leaves a big low-rank gradient (FCN's fc6, fc7) as a
promised product that the SGD step folds into its momentum.
"""
import math

import numpy as np

from . import backend
from . import blas as _blas
from .blob import Blob

TRAIN = 0
TEST = 1

_REGISTRY = {}
# type name -> factory(layer_param, phase, dtype, xp, search_dirs), for types that no one class
# implements: "Python" (registered by protonet.python_layer, which the built-ins import)
_FACTORIES = {}


class LayerError(ValueError):
    """A layer was configured wrongly; the message names the layer."""


def register(*type_names):
    """Class decorator: register a layer under its Caffe type name(s)."""
    def deco(cls):
        for name in type_names:
            if name in _REGISTRY and _REGISTRY[name] is not cls:
                raise RuntimeError("layer type %r registered twice" % name)
            _REGISTRY[name] = cls
        cls.type = type_names[0]
        return cls
    return deco


def register_factory(type_name, factory):
    """Make ``type: "<type_name>"`` built by ``factory(layer_param, phase, dtype, xp, search_dirs)``."""
    _FACTORIES[type_name] = factory


def known_types():
    _load_builtins()
    return sorted(_REGISTRY)


def layer_class(type_name):
    _load_builtins()
    return _REGISTRY.get(type_name)


def _load_builtins():
    from . import layers  # noqa: F401  (importing registers every built-in)


class BlobList(list):
    """A layer's parameter blobs; ``add_blob(*shape)`` as in pycaffe's BlobVec."""

    def __init__(self, layer, items=()):
        super().__init__(items)
        self._layer = layer

    def add_blob(self, *shape):
        self.append(self._layer.new_blob(shape))
        return self[-1]


class Layer:
    """Base of every layer.

    Subclasses set the arity attributes (None = unchecked) and override the
    four methods. ``self.layer_param`` is the LayerParameter message,
    ``self.blobs`` the learnable parameter blobs, ``self.phase`` TRAIN/TEST.
    """

    type = None
    exact_num_bottom = None
    min_bottom = None
    max_bottom = None
    exact_num_top = None
    min_top = None
    max_top = None
    equal_num_bottom_top = False
    # True for *Loss layers: top 0 gets loss_weight 1 unless the prototxt says otherwise.
    is_loss = False
    # Whether reshape's outcome depends only on which arrays its bottoms and tops hold (their
    # shapes): the net then skips the call while none of them changed since the last one. False
    # where reshape reads values (Filter counts its selector) or is user code (Python layers).
    reshape_from_shapes = True

    def __init__(self, layer_param, phase=TRAIN, dtype=np.float32, xp=None):
        self.layer_param = layer_param
        self.phase = phase
        self.dtype = np.dtype(dtype)
        self.xp = xp if xp is not None else backend.xp()
        self.blobs = BlobList(self)
        self.param_propagate_down = []
        self.loss_weights = []

    @property
    def name(self):
        return self.layer_param.name

    # -- the four calls ------------------------------------------------
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        raise NotImplementedError("layer type %s has no reshape" % self.type)

    def forward(self, bottom, top):
        raise NotImplementedError("layer type %s has no forward" % self.type)

    def backward(self, top, propagate_down, bottom):
        # Layers without a gradient (data, Accuracy, ArgMax...) say so only if asked for one.
        if any(propagate_down):
            raise LayerError("layer '%s' (type %s) has no backward" % (self.name, self.type))

    def allow_force_backward(self, bottom_index):
        """Whether force_backward may ask for this bottom's gradient."""
        return True

    # -- helpers for subclasses ----------------------------------------
    def new_blob(self, shape=()):
        return Blob(shape, dtype=self.dtype, xp=self.xp)

    def error(self, message):
        return LayerError("layer '%s' (type %s): %s" % (self.name, self.type, message))

    def check_arity(self, nbottom, ntop):
        def bad(what, expected, got):
            return self.error("expects %s %s blob(s), got %d" % (expected, what, got))
        if self.exact_num_bottom is not None and nbottom != self.exact_num_bottom:
            raise bad("bottom", "exactly %d" % self.exact_num_bottom, nbottom)
        if self.min_bottom is not None and nbottom < self.min_bottom:
            raise bad("bottom", "at least %d" % self.min_bottom, nbottom)
        if self.max_bottom is not None and nbottom > self.max_bottom:
            raise bad("bottom", "at most %d" % self.max_bottom, nbottom)
        if self.exact_num_top is not None and ntop != self.exact_num_top:
            raise bad("top", "exactly %d" % self.exact_num_top, ntop)
        if self.min_top is not None and ntop < self.min_top:
            raise bad("top", "at least %d" % self.min_top, ntop)
        if self.max_top is not None and ntop > self.max_top:
            raise bad("top", "at most %d" % self.max_top, ntop)
        if self.equal_num_bottom_top and nbottom != ntop:
            raise self.error("needs as many tops as bottoms, got %d bottoms and %d tops" % (nbottom, ntop))

    def param_needs_grad(self, i):
        return i < len(self.param_propagate_down) and self.param_propagate_down[i]


# Accumulating a product into a big diff goes through row blocks of about
# this many values, so no second weight-sized buffer is ever needed.
_ACCUMULATE_BLOCK = 1 << 20
# A product at least this big whose operands are at most a quarter of its
# size is only promised (Blob.defer_diff_product), for the SGD step to fold.
DEFER_PRODUCT_MIN = 1 << 20


def add_product_to_diff(blob, a, b):
    """``blob.diff += a @ b`` (batched over leading axes like ``matmul``).

    Right after the solver's clear (``blob.grad_target()`` says overwrite)
    the product goes straight into the diff: no clearing pass, no temporary;
    or, on NumPy for a big low-rank product, it is only promised (see
    ``Blob.defer_diff_product``). Otherwise it is added: by a GEMM with
    beta = 1 through NumPy's OpenBLAS (Caffe's own accumulation), else in
    blocks of rows through a small scratch. Through OpenBLAS the overwrite
    is the same GEMM with beta = 0, so a gradient written over a lazily
    cleared diff and one added to a zero-filled diff (a script held it) are
    the same bits: whether anybody looks at a diff never changes training.
    """
    xp = backend.xp_of(a, b)
    diff, overwrite = blob.grad_target()
    if a.ndim == 2 and b.ndim == 2:
        # the common case (InnerProduct, ungrouped convolutions), without the batch machinery
        out_shape = (a.shape[0], b.shape[1])
    else:
        out_shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
    out = diff.reshape(out_shape)
    if overwrite:
        batch = math.prod(out_shape[:-2])   # ints: no NumPy call per product
        if (xp is np and batch == 1 and out.size >= DEFER_PRODUCT_MIN
                and 4 * (a.size + b.size) <= out.size):
            blob.defer_diff_product(a.reshape(a.shape[-2:]), b.reshape(b.shape[-2:]))
            return
    blas = _blas.get(out.dtype) if xp is np else None
    if blas is not None and len(out_shape) == 2:
        if blas.try_gemm(a, b, out, beta=0.0 if overwrite else 1.0):
            return
    elif blas is not None:
        batch_shape = out_shape[:-2]
        a_all = np.broadcast_to(a, batch_shape + a.shape[-2:])
        b_all = np.broadcast_to(b, batch_shape + b.shape[-2:])
        first = (0,) * len(batch_shape)
        if blas.takes(a_all[first], b_all[first], out[first]):    # every item has the same strides
            for idx in np.ndindex(*batch_shape):
                blas.gemm(a_all[idx], b_all[idx], out[idx], beta=0.0 if overwrite else 1.0)
            return
    if overwrite:
        xp.matmul(a, b, out=out)
        return
    rows = a.shape[-2]
    per_row = max(1, out.size // max(rows, 1))
    step = max(1, min(rows, _ACCUMULATE_BLOCK // per_row))
    scratch = xp.empty(out_shape[:-2] + (step, out_shape[-1]), out.dtype)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        part = scratch[..., :r1 - r0, :]
        xp.matmul(a[..., r0:r1, :], b, out=part)
        out[..., r0:r1, :] += part


def create_layer(layer_param, phase=TRAIN, dtype=np.float32, xp=None, search_dirs=()):
    """Instantiate the registered class for ``layer_param.type``.

    ``type: "Python"`` instantiates the user's class named by python_param,
    looked up also in ``search_dirs`` (the prototxt's folder).
    """
    _load_builtins()
    factory = _FACTORIES.get(layer_param.type)
    if factory is not None:
        return factory(layer_param, phase, dtype, xp, search_dirs)
    cls = layer_class(layer_param.type)
    if cls is None:
        import difflib
        known = known_types()
        # case-insensitive, so "convolution" and "RELU" find Convolution and ReLU
        lower = {t.lower(): t for t in known}
        close = [lower[t] for t in difflib.get_close_matches(layer_param.type.lower(), lower, 3,
                                                               0.6)]
        raise LayerError(
            "layer '%s': unknown layer type '%s'. %s (%d types are known: the README's layer "
            "catalogue lists them)"
            % (layer_param.name, layer_param.type,
               "Did you mean %s?" % " or ".join("'%s'" % t for t in close) if close
               else "No known type is close", len(known)))
    return cls(layer_param, phase=phase, dtype=dtype, xp=xp)
