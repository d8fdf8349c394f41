"""Built-in layers: every module in this package registers its classes on import."""
import importlib
import pkgutil

from .. import python_layer  # noqa: F401  (registers type "Python" with protonet.layer)

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _info.name.startswith("_"):
        importlib.import_module("%s.%s" % (__name__, _info.name))
