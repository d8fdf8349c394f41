"""Devices as Caffe's tools pick them: ``--gpu`` flags, the CPU or one GPU.

Shared by the command line (:mod:`protonet.cli`) and the tutorial
(:mod:`protonet.tutorial`); CuPy is reached through :mod:`protonet.backend`.
"""
from . import backend
from .log import get_logger

__all__ = ["DeviceError", "gpu_ids", "use_devices", "device_count", "device_name", "no_gpu_reason"]

log = get_logger()


class DeviceError(Exception):
    """A ``--gpu`` flag names no usable device; printed as one line, exit status 1."""


def gpu_ids(flag):
    """Caffe's get_gpus: '' / None -> [], 'all' -> every device, '0,1' -> [0, 1]; -1 -> CPU."""
    if flag is None or flag.strip() in ("", "-1"):
        return []
    if flag.strip() == "all":
        count = device_count()
        if not count:
            raise DeviceError("--gpu all: no GPU is usable (%s)" % no_gpu_reason())
        return list(range(count))
    try:
        ids = [int(x) for x in flag.split(",")]
    except ValueError:
        raise DeviceError("--gpu expects device ids separated by ',', 'all' or -1; got %r" % flag) from None
    if any(i < 0 for i in ids):
        return []
    return ids


def cupy():
    """CuPy through protonet.backend (the only module that imports it), or None."""
    return backend._load_cupy()  # noqa: SLF001  (backend owns the import)


def device_count():
    cp = cupy()
    if cp is None:
        return 0
    try:
        return int(cp.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def no_gpu_reason():
    cp = cupy()
    if cp is None:
        return "CuPy is not installed or failed to load: %r" % (backend._cupy_error,)  # noqa: SLF001
    return "CuPy sees no CUDA device"


def device_name(i):
    try:
        name = cupy().cuda.runtime.getDeviceProperties(i)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return "?"


def use_devices(ids, training=False):
    """Set protonet's mode as Caffe's tools do: the CPU, or one GPU."""
    if not ids:
        log.info("Use CPU.")
        backend.set_mode_cpu()
        return
    if training and len(ids) > 1:
        # `caffe train` splits the batch over the GPUs with NCCL, or stops when built without
        raise DeviceError("--gpu %s: training on several GPUs at once (Caffe's NCCL data "
                          "parallelism) is not available in protonet; give one device id"
                          % ",".join(map(str, ids)))
    while len(ids) > 1:
        log.info("Not using GPU #%d for single-GPU function", ids.pop())
    count = device_count()
    if ids[0] >= count:
        raise DeviceError("GPU %d requested but %s" % (
            ids[0], "only %d GPU(s) are usable" % count if count else "no GPU is usable (%s)"
            % no_gpu_reason()))
    if training:                       # train words it differently from test and time
        log.info("Using GPUs %d", ids[0])
        log.info("GPU %d: %s", ids[0], device_name(ids[0]))
    else:
        log.info("Use GPU with device ID %d", ids[0])
        log.info("GPU device name: %s", device_name(ids[0]))
    backend.set_device(ids[0])
    backend.set_mode_gpu()
