"""``caffe.io``: pycaffe's array/proto conversions, image loading and preprocessing.

Same names and results as Caffe 1.0's ``python/caffe/io.py``, without its
scikit-image dependency: images are decoded with Pillow (``.npy`` files with
NumPy), resized with SciPy's ``ndimage`` in scikit-image's pixel-centre
geometry and border handling.
"""
import io

import numpy as np
from PIL import Image

from .proto import caffe_pb2


# -- proto / datum / ndarray conversion ------------------------------------

def blobproto_to_array(blob, return_diff=False):
    """A BlobProto as a float64 array (pycaffe's ``np.array(blob.data)``).

    The legacy num/channels/height/width shape wins when any of them is set,
    as in pycaffe; ``double_data``/``double_diff`` are read when the float
    fields are empty.
    """
    if return_diff:
        values = blob.diff if len(blob.diff) or not len(blob.double_diff) else blob.double_diff
    else:
        values = blob.data if len(blob.data) or not len(blob.double_data) else blob.double_data
    arr = np.array(values, dtype=np.float64)
    if blob.HasField("num") or blob.HasField("channels") or blob.HasField("height") \
            or blob.HasField("width"):
        return arr.reshape(blob.num, blob.channels, blob.height, blob.width)
    return arr.reshape(tuple(blob.shape.dim))


def array_to_blobproto(arr, diff=None):
    """An N-d array (and optionally its diff) as a BlobProto with ``shape.dim``."""
    arr = np.asarray(arr)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(int(d) for d in arr.shape)
    blob.data.extend(arr.astype(float).flat)
    if diff is not None:
        blob.diff.extend(np.asarray(diff).astype(float).flat)
    return blob


def arraylist_to_blobprotovector_str(arraylist):
    """A list of arrays as a serialized BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend([array_to_blobproto(arr) for arr in arraylist])
    return vec.SerializeToString()


# pycaffe's historic misspelling, kept so old scripts run.
arraylist_to_blobprotovecor_str = arraylist_to_blobprotovector_str


def blobprotovector_str_to_arraylist(str_):
    """A serialized BlobProtoVector as a list of arrays."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(str_)
    return [blobproto_to_array(blob) for blob in vec.blobs]


def array_to_datum(arr, label=None):
    """A C x H x W array as a Datum: uint8 arrays go to ``data`` (bytes), others to ``float_data``."""
    from protonet.data.datum import array_to_datum as to_datum
    return to_datum(arr, label)


def datum_to_array(datum):
    """A Datum's values as a C x H x W array (uint8 for ``data``, float64 for ``float_data``).

    The label is not returned (it is ``datum.label``). An encoded Datum (a
    PNG/JPEG file) is decoded as Caffe's data layers decode it: BGR, uint8.
    """
    if datum.encoded:
        from protonet.data.datum import datum_to_array as decode_datum
        return decode_datum(datum, what="encoded Datum")
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(
            datum.channels, datum.height, datum.width).copy()
    return np.array(datum.float_data).astype(float).reshape(
        datum.channels, datum.height, datum.width)


# -- pre-processing -----------------------------------------------------------

class Transformer:
    """Prepare images for a net's inputs, as pycaffe's ``caffe.io.Transformer``.

    ``inputs``: {input name: blob shape}, e.g. ``{'data': net.blobs['data'].data.shape}``.
    ``preprocess`` does, in order: float32, resize to the input's H x W,
    transpose, channel swap, raw scale, mean subtraction, input scale;
    ``deprocess`` undoes it (except the resize).
    """

    def __init__(self, inputs):
        self.inputs = inputs
        self.transpose = {}
        self.channel_swap = {}
        self.raw_scale = {}
        self.mean = {}
        self.input_scale = {}

    def __check_input(self, in_):
        if in_ not in self.inputs:
            raise Exception("{} is not one of the net inputs: {}".format(in_, self.inputs))

    def preprocess(self, in_, data):
        """(H' x W' x K) image -> (K x H x W) float32 array for input ``in_``."""
        self.__check_input(in_)
        caffe_in = np.asarray(data).astype(np.float32, copy=False)
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        in_dims = tuple(self.inputs[in_][2:])
        if tuple(caffe_in.shape[:2]) != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        if transpose is not None:
            caffe_in = caffe_in.transpose(transpose)
        if channel_swap is not None:
            caffe_in = caffe_in[list(channel_swap), :, :]
        if raw_scale is not None:
            caffe_in = caffe_in * raw_scale
        if mean is not None:
            caffe_in = caffe_in - mean
        if input_scale is not None:
            caffe_in = caffe_in * input_scale
        return caffe_in.astype(np.float32, copy=False)

    def deprocess(self, in_, data):
        """Invert :meth:`preprocess` (all but the resize)."""
        self.__check_input(in_)
        decaf_in = np.array(data, copy=True).squeeze()
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            decaf_in = decaf_in / input_scale
        if mean is not None:
            decaf_in = decaf_in + mean
        if raw_scale is not None:
            decaf_in = decaf_in / raw_scale
        if channel_swap is not None:
            decaf_in = decaf_in[np.argsort(channel_swap), :, :]
        if transpose is not None:
            decaf_in = decaf_in.transpose(np.argsort(transpose))
        return decaf_in

    def set_transpose(self, in_, order):
        """Axis order applied to the (H x W x K) image, e.g. (2, 0, 1) for K x H x W."""
        self.__check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise Exception("Transpose order needs to have the same number of "
                            "dimensions as the input.")
        self.transpose[in_] = order

    def set_channel_swap(self, in_, order):
        """Channel order after the transpose; (2, 1, 0) turns RGB into BGR."""
        self.__check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise Exception("Channel swap needs to have the same number of "
                            "dimensions as the input channels.")
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_, scale):
        """Scale applied before the mean: 255 for models trained on [0, 255] pixels."""
        self.__check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """Mean to subtract: K values (per channel) or a K x H x W (or H x W) array."""
        self.__check_input(in_)
        mean = np.asarray(mean)
        ms = mean.shape
        if mean.ndim == 1:
            if ms[0] != self.inputs[in_][1]:
                raise ValueError("Mean channels incompatible with input.")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if len(ms) == 2:
                ms = (1,) + ms
            if len(ms) != 3:
                raise ValueError("Mean shape invalid")
            if tuple(ms) != tuple(self.inputs[in_][1:]):
                raise ValueError("Mean shape incompatible with input shape.")
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Scale applied last, after the mean subtraction."""
        self.__check_input(in_)
        self.input_scale[in_] = scale


# -- image IO -------------------------------------------------------------------

def load_image(filename, color=True):
    """An image file as float32 in [0, 1], H x W x 3 RGB (``color``) or H x W x 1.

    As pycaffe: gray images are tiled to three channels when ``color``, alpha
    is dropped, and ``color=False`` converts colour to luminance with
    scikit-image's weights (0.2125 R + 0.7154 G + 0.0721 B).
    """
    with open(filename, "rb") as f:
        payload = f.read()
    img = _as_float(_decode(payload, str(filename)))
    if img.ndim == 3 and img.shape[2] in (2, 4):
        img = img[:, :, :-1]                      # drop alpha
    if not color and img.ndim == 3 and img.shape[2] == 3:
        img = img @ np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.tile(img, (1, 1, 3))
    return np.ascontiguousarray(img, dtype=np.float32)


def resize_image(im, new_dims, interp_order=1):
    """Resize an H x W x K image to ``new_dims`` (height, width) with spline order ``interp_order``.

    As Caffe 1.0: a 1- or 3-channel image is scaled to [0, 1], resampled as
    scikit-image's ``resize(..., mode='constant')`` does (pixel-centre
    geometry, 0 beyond the border, so enlarging darkens the outermost pixels
    towards the minimum; no anti-aliasing, which Caffe-era scikit-image did
    not do), then scaled back to [min, max]; a constant image stays constant.
    Other channel counts go through ``scipy.ndimage.zoom``. Returns float32.
    """
    from scipy import ndimage
    im = np.asarray(im)
    if im.ndim != 3:
        raise ValueError("resize_image needs an H x W x K array; got shape %s" % (im.shape,))
    try:
        new_dims = tuple(int(d) for d in new_dims)
    except TypeError:
        raise TypeError("new_dims must be (height, width); got %r" % (new_dims,)) from None
    if len(new_dims) != 2 or min(new_dims) < 1 or min(im.shape[:2]) < 1:
        raise ValueError("cannot resize a %dx%d image to %s: both sizes must be positive"
                         % (im.shape[0], im.shape[1], "x".join(map(str, new_dims))))
    if im.shape[-1] in (1, 3):
        im_min, im_max = im.min(), im.max()
        if im_max <= im_min:
            out = np.empty((new_dims[0], new_dims[1], im.shape[-1]), dtype=np.float32)
            out.fill(im_min)
            return out
        std = (im.astype(np.float64) - im_min) / (float(im_max) - float(im_min))
        h, w = im.shape[:2]
        # Output pixel centre i maps to input coordinate (i + 0.5) * in / out - 0.5.
        rows = (np.arange(new_dims[0]) + 0.5) * (h / new_dims[0]) - 0.5
        cols = (np.arange(new_dims[1]) + 0.5) * (w / new_dims[1]) - 0.5
        grid = np.meshgrid(rows, cols, indexing="ij")
        # 'grid-constant' is scikit-image's 'constant': taps beyond the border read 0 and
        # still interpolate (scipy's 'constant' gives 0 for any point beyond the edge centres).
        resized = np.stack([ndimage.map_coordinates(std[:, :, k], grid, order=interp_order,
                                                    mode="grid-constant", cval=0.0)
                            for k in range(im.shape[-1])], axis=-1)
        # Splines above order 1 overshoot; scikit-image clips to the input's range.
        np.clip(resized, 0.0, 1.0, out=resized)
        resized = resized * (float(im_max) - float(im_min)) + float(im_min)
    else:
        scale = tuple(np.array(new_dims, dtype=float) / np.array(im.shape[:2]))
        resized = ndimage.zoom(im, scale + (1,), order=interp_order)
    return resized.astype(np.float32)


def oversample(images, crop_dims):
    """The four corner crops and the centre crop of each image, then their mirrors.

    ``images``: iterable of H x W x K arrays; returns (10*N) x h x w x K float32.
    """
    im_shape = np.array(images[0].shape)
    crop_dims = np.array(crop_dims)
    im_center = im_shape[:2] / 2.0
    h_indices = (0, im_shape[0] - crop_dims[0])
    w_indices = (0, im_shape[1] - crop_dims[1])
    crops_ix = np.empty((5, 4), dtype=int)
    curr = 0
    for i in h_indices:
        for j in w_indices:
            crops_ix[curr] = (i, j, i + crop_dims[0], j + crop_dims[1])
            curr += 1
    crops_ix[4] = np.tile(im_center, (1, 2)) + np.concatenate([-crop_dims / 2.0, crop_dims / 2.0])
    crops_ix = np.tile(crops_ix, (2, 1))
    crops = np.empty((10 * len(images), crop_dims[0], crop_dims[1], im_shape[-1]),
                     dtype=np.float32)
    ix = 0
    for im in images:
        for crop in crops_ix:
            crops[ix] = im[crop[0]:crop[2], crop[1]:crop[3], :]
            ix += 1
        crops[ix - 5:ix] = crops[ix - 5:ix, :, ::-1, :]   # the mirrors of the last five
    return crops


# -- decoders -------------------------------------------------------------------

def _as_float(img):
    """scikit-image's img_as_float: unsigned ints scaled by their maximum, floats kept."""
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    if img.dtype == np.bool_:
        return img.astype(np.float32)
    return img.astype(np.float32)


def _decode(payload, what):
    """Image bytes -> H x W or H x W x C array in the file's channel order (RGB[A]).

    Pillow decodes every image format; what it hands back is normalised to
    what scikit-image's reader (pycaffe's) gives: palettes expanded, bilevel
    as bool, 16-bit gray as uint16. Pillow reads 16-bit colour images at 8
    bits per channel, and so did pycaffe, whose reader went through Pillow.
    """
    if payload[:6] == b"\x93NUMPY":
        return np.load(io.BytesIO(payload), allow_pickle=False)
    try:
        img = Image.open(io.BytesIO(payload))
        img.load()
    except Exception as exc:
        raise IOError("%s: cannot decode as an image (%s: %s)"
                      % (what, type(exc).__name__, exc)) from None
    if img.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGBA" if "transparency" in img.info or img.mode == "PA" else "RGB")
    elif img.mode == "I" and img.format in ("PPM", "PNG"):
        # 16-bit gray (a PGM, or a PNG before Pillow kept them as I;16): Pillow widens it
        # to int32, already scaled to 0..65535
        return np.asarray(img).astype(np.uint16)
    arr = np.asarray(img)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr
