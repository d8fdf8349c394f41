"""Write nets in Python: ``caffe.NetSpec``, ``caffe.layers as L``, ``caffe.params as P``.

pycaffe's net specification, with its naming rules:

- ``L.Convolution(bottom, kernel_size=3, ...)`` makes a layer and returns its
  top (a tuple of tops when ``ntop`` > 1, the layer itself when ``ntop`` = 0);
  ``in_place=True`` makes the tops the bottoms.
- Keyword arguments go into the layer's own ``<type>_param`` message when it
  has that field, else into the LayerParameter (``name``, ``include``,
  ``param``, ``loss_weight``...); any ``*_param=dict(...)`` is set as given.
  Dicts become messages, lists repeated fields, a scalar for a repeated field
  a one-element list.
- ``NetSpec`` attribute names name the tops; a layer is named after its first
  top (so an in-place ReLU assigned to ``n.relu1`` is layer ``relu1`` writing
  the bottom's blob). Unnamed tops and layers get ``<Type><count>``.
- ``P.Pooling.MAX`` is ``caffe_pb2.PoolingParameter.MAX``.
"""
from collections import Counter, OrderedDict

from .proto import caffe_pb2


def param_name_dict():
    """{message type stem: LayerParameter field stem}, e.g. {'Convolution': 'convolution'}."""
    layer = caffe_pb2.LayerParameter()
    names = {}
    for field in layer.DESCRIPTOR.fields:
        if field.name.endswith("_param") and field.message_type is not None:
            type_name = field.message_type.name
            if type_name.endswith("Parameter"):
                names[type_name[:-len("Parameter")]] = field.name[:-len("_param")]
    return names


def to_proto(*tops):
    """A NetParameter with every layer needed to compute ``tops``."""
    layers = OrderedDict()
    autonames = Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


def assign_proto(proto, name, val):
    """Set field ``name`` of message ``proto`` from a Python value (recursively).

    Lists fill repeated fields (a list of dicts adds one message per dict),
    dicts fill sub-messages, scalars are assigned; a scalar given for a
    repeated field becomes a one-element list.
    """
    field = getattr(proto, name)
    is_repeated = hasattr(field, "extend")
    if is_repeated and not isinstance(val, (list, tuple)):
        val = [val]
    if isinstance(val, (list, tuple)):
        if len(val) and isinstance(val[0], dict):
            for item in val:
                sub = field.add()
                for k, v in item.items():
                    assign_proto(sub, k, v)
        else:
            field.extend(val)
    elif isinstance(val, dict):
        for k, v in val.items():
            assign_proto(field, k, v)
    else:
        setattr(proto, name, val)


class Top:
    """One output blob of a layer function (output ``n`` of ``fn``)."""

    def __init__(self, fn, n):
        self.fn = fn
        self.n = n

    def to_proto(self):
        """A NetParameter with every layer needed to compute this top."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)

    def __repr__(self):
        return "<Top %d of %s>" % (self.n, self.fn.type_name)


class Function:
    """A layer: its type, its input tops and its parameters."""

    def __init__(self, type_name, inputs, params):
        self.type_name = type_name
        for index, inp in enumerate(inputs):
            if not isinstance(inp, Top):
                # Caffe's text, with the type's repr: "(type is <class 'tuple'>)"
                raise TypeError("%s input %d is not a Top (type is %s)"
                                % (type_name, index, type(inp)))
        self.inputs = inputs
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _get_name(self, names, autonames):
        if self not in names and self.ntop > 0:
            names[self] = self._get_top_name(self.tops[0], names, autonames)
        elif self not in names:
            autonames[self.type_name] += 1
            names[self] = self.type_name + str(autonames[self.type_name])
        return names[self]

    def _get_top_name(self, top, names, autonames):
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
        return names[top]

    def _to_proto(self, layers, names, autonames):
        if self in layers:
            return
        bottom_names = []
        for inp in self.inputs:
            inp._to_proto(layers, names, autonames)
            bottom_names.append(layers[inp.fn].top[inp.n])
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(bottom_names)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            for top in self.tops:
                layer.top.append(self._get_top_name(top, names, autonames))
        layer.name = self._get_name(names, autonames)
        own = _param_names.get(self.type_name)
        for k, v in self.params.items():
            if k.endswith("param"):
                assign_proto(layer, k, v)
                continue
            # The layer's own parameter message first (kernel_size=...), then the
            # LayerParameter itself (name=, include=, loss_weight=...).
            sub = getattr(layer, own + "_param") if own else None
            if sub is not None and k in sub.DESCRIPTOR.fields_by_name:
                assign_proto(sub, k, v)
            else:
                assign_proto(layer, k, v)
        layers[self] = layer


class NetSpec:
    """Tops assigned as attributes (or items) are named by their attribute name;
    :meth:`to_proto` gives every layer needed to compute them, in assignment order."""

    def __init__(self):
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError("NetSpec has no top named %r" % name) from None

    def __setitem__(self, key, value):
        self.__setattr__(key, value)

    def __getitem__(self, item):
        return self.__getattr__(item)

    def __delitem__(self, name):
        del self.tops[name]

    def keys(self):
        return list(self.tops.keys())

    def vals(self):
        return list(self.tops.values())

    def to_proto(self):
        names = {v: k for k, v in self.tops.items()}
        autonames = Counter()
        layers = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


class Layers:
    """``L.<Type>(*bottoms, **params)`` makes a layer of that type (any name: Python too)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def layer_fn(*args, **kwargs):
            fn = Function(name, args, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops
        layer_fn.__name__ = name
        return layer_fn


class Parameters:
    """``P.<Type>.<CONSTANT>``: an enum value of ``<Type>Parameter``, e.g. ``P.Pooling.MAX``."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        message = getattr(caffe_pb2, name + "Parameter")

        class Param:
            def __getattr__(self, param_name):
                return getattr(message, param_name)
        return Param()


_param_names = param_name_dict()
layers = Layers()
params = Parameters()
