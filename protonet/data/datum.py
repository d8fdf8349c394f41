"""Datum <-> array, and image decoding in Caffe's (OpenCV's) layout.

A Datum holds one C x H x W record: uint8 pixels in ``data``, floats in
``float_data``, or (``encoded: true``) a PNG/JPEG file in ``data``. Arrays
here are C x H x W like pycaffe's ``caffe.io.datum_to_array``; decoded
images follow OpenCV, which Caffe decodes with: colour is BGR, gray is one
channel, alpha is kept only when the image is read unchanged.
"""
import io

import numpy as np

from ..proto import caffe_pb2


class DataError(ValueError):
    """A data source (DB, image, list file, record) cannot be read as expected."""


# -- images -----------------------------------------------------------------

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _pillow():
    try:
        from PIL import Image
    except ImportError as exc:
        raise DataError("decoding PNG/JPEG images needs Pillow: `pip install Pillow` (%s)"
                        % exc) from None
    return Image


def decode_image(payload, color=None, what="image"):
    """Decode PNG/JPEG bytes to an H x W (gray) or H x W x C (BGR/BGRA) uint8 array.

    ``color``: None keeps the file's own channels (OpenCV IMREAD_UNCHANGED,
    Caffe's native decode), True gives 3-channel BGR (IMREAD_COLOR), False
    one gray channel (IMREAD_GRAYSCALE). ``what`` names the source in errors.
    """
    Image = _pillow()
    try:
        img = Image.open(io.BytesIO(bytes(payload)))
        if color is False and img.format == "JPEG" and img.mode in ("RGB", "YCbCr"):
            # libjpeg's own gray output (the Y plane), as OpenCV asks for it.
            img.draft("L", img.size)
        img.load()
    except Exception as exc:  # Pillow raises several types for bad files
        raise DataError("%s: cannot decode as an image (%s: %s)"
                        % (what, type(exc).__name__, exc)) from None
    mode = img.mode
    if mode in _SIXTEEN_BIT or mode == "F":
        arr = np.asarray(img)
        if color is None:
            # Caffe's transformer takes only 8-bit images (CHECK depth == CV_8U).
            raise DataError("%s: %s image with mode %s is not 8-bit; Caffe reads only 8-bit "
                            "encoded images (store such data as float_data instead)"
                            % (what, img.format, mode))
        # OpenCV scales 16-bit down by 256 when asked for an 8-bit image.
        gray = (arr.astype(np.int64) >> 8).clip(0, 255).astype(np.uint8) if mode != "F" \
            else arr.clip(0, 255).astype(np.uint8)
        return gray if color is False else np.repeat(gray[:, :, None], 3, axis=2)
    if color is False:
        if mode == "L":
            return np.asarray(img)
        if img.format == "PNG":
            return _png_gray(img)
        return np.asarray(img.convert("L"))
    if color is True:
        return np.ascontiguousarray(np.asarray(img.convert("RGB"))[:, :, ::-1])
    # Native: gray stays one channel, alpha is kept (BGRA), palettes expand.
    if mode in ("L", "1"):
        return np.asarray(img.convert("L"))
    if mode in ("LA", "RGBA", "PA") or (mode in ("P", "RGB") and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"))
        return np.ascontiguousarray(rgba[:, :, [2, 1, 0, 3]])
    return np.ascontiguousarray(np.asarray(img.convert("RGB"))[:, :, ::-1])


def _png_gray(img):
    """A colour PNG as one gray channel, as OpenCV reads it: libpng's rgb_to_gray.

    libpng turns the weights 0.299/0.587 into 15-bit integers by truncation
    (9797, 19234, and 3737 for blue) and truncates the weighted sum; Pillow's
    own conversion rounds, which differs by one level in about half the pixels.
    """
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F", "1"):
        return np.asarray(img.convert("L"))
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint32)     # alpha dropped, palette expanded
    gray = (rgb[:, :, 0] * 9797 + rgb[:, :, 1] * 19234 + rgb[:, :, 2] * 3737) >> 15
    return gray.astype(np.uint8)


def image_to_chw(img):
    """H x W or H x W x C (OpenCV layout) -> C x H x W."""
    return img[None] if img.ndim == 2 else np.ascontiguousarray(img.transpose(2, 0, 1))


def encode_image(arr, fmt="png", quality=95):
    """Encode a C x H x W uint8 array (C = 1 gray, 3 BGR, 4 BGRA) as PNG or JPEG bytes."""
    Image = _pillow()
    arr = np.asarray(arr)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[0] not in (1, 3, 4):
        raise DataError("encode_image needs a uint8 C x H x W array with C in 1, 3, 4; got %s %s"
                        % (arr.dtype, arr.shape))
    if arr.shape[0] == 1:
        img = Image.fromarray(arr[0], "L")
    elif arr.shape[0] == 3:
        img = Image.fromarray(np.ascontiguousarray(arr[::-1].transpose(1, 2, 0)), "RGB")
    else:
        img = Image.fromarray(np.ascontiguousarray(arr[[2, 1, 0, 3]].transpose(1, 2, 0)), "RGBA")
    fmt = fmt.lower()
    pil_fmt = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG"}.get(fmt)
    if pil_fmt is None:
        raise DataError("unknown image encoding %r (use 'png' or 'jpg')" % fmt)
    if pil_fmt == "JPEG" and arr.shape[0] == 4:
        raise DataError("JPEG cannot hold an alpha channel (4-channel array)")
    buf = io.BytesIO()
    img.save(buf, pil_fmt, **({"quality": quality} if pil_fmt == "JPEG" else {}))
    return buf.getvalue()


def read_image_file(path, color=True):
    """An image file as Caffe's ReadImageToCVMat reads it (color True: BGR, False: gray)."""
    try:
        with open(path, "rb") as f:
            payload = f.read()
    except OSError as exc:
        raise DataError("could not open or find the image file %s (%s)"
                        % (path, exc.strerror or exc)) from None
    return decode_image(payload, color=color, what=str(path))


# -- Datum ------------------------------------------------------------------

def parse_datum(value, what="record"):
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(bytes(value))
    except Exception as exc:
        raise DataError("%s is not a serialized Datum (%s)" % (what, exc)) from None
    return datum


def datum_to_array(datum, force_color=False, force_gray=False, what="record"):
    """The record as a C x H x W array: uint8 for ``data``/encoded, float32 for ``float_data``.

    Encoded records are decoded as Caffe does: natively, or with 3 colour
    channels (``force_color``) or one gray channel (``force_gray``). As in
    Caffe, non-empty ``data`` wins over ``float_data``.
    """
    if isinstance(datum, (bytes, bytearray, memoryview)):
        datum = parse_datum(datum, what)
    if datum.encoded:
        if force_color and force_gray:
            raise DataError("%s: cannot set both force_color and force_gray" % what)
        color = True if force_color else (False if force_gray else None)
        return image_to_chw(decode_image(datum.data, color=color, what=what))
    shape = (datum.channels, datum.height, datum.width)
    count = shape[0] * shape[1] * shape[2]
    if shape[0] <= 0 or shape[1] <= 0 or shape[2] <= 0:
        raise DataError("%s: Datum has a non-positive shape channels=%d height=%d width=%d"
                        % ((what,) + shape))
    if len(datum.data):
        arr = np.frombuffer(datum.data, dtype=np.uint8)
        field = "data"
    elif len(datum.float_data):
        arr = np.array(datum.float_data, dtype=np.float32)
        field = "float_data"
    else:
        raise DataError("%s: Datum has neither data nor float_data (shape %s)" % (what, shape))
    if arr.size != count:
        raise DataError("%s: Datum %s holds %d values but channels x height x width = %s needs %d"
                        % (what, field, arr.size, "x".join(map(str, shape)), count))
    return arr.reshape(shape)


def array_to_datum(arr, label=None, encoding=None):
    """A Datum for a C x H x W array (pycaffe's ``caffe.io.array_to_datum``).

    uint8 arrays go to ``data``, anything else to ``float_data``;
    ``encoding`` 'png'/'jpg' stores a uint8 array as an encoded image
    (C = 1 gray or 3 BGR; 4 BGRA for PNG).
    """
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise DataError("array_to_datum needs a 3-d (C x H x W) array, got shape %s"
                        % (arr.shape,))
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = (int(s) for s in arr.shape)
    if encoding:
        datum.data = encode_image(arr, encoding)
        datum.encoded = True
    elif arr.dtype == np.uint8:
        datum.data = np.ascontiguousarray(arr).tobytes()
    else:
        datum.float_data.extend(np.asarray(arr, dtype=np.float32).ravel().tolist())
    if label is not None:
        datum.label = int(label)
    return datum
