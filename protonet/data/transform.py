"""Caffe's DataTransformer, vectorised over a batch, and OpenCV-style bilinear resizing.

For each item (C x H x W) Caffe computes, in the net's dtype,

    out[c, i, j] = (x[c, h_off + i, w_off + jj] - mean[c, h_off + i, w_off + jj]) * scale

with jj = j, or crop_w - 1 - j when the item is mirrored: the mean is taken
at the *source* pixel, i.e. cropped with the data's offsets and flipped with
it; mean_value gives one mean per channel instead of a per-pixel mean.
Offsets: random in [0, H - crop] at TRAIN, (H - crop) // 2 at TEST.
Mirroring is a coin flip per item whenever ``mirror`` is set, in TEST too.
The random draws are Caffe's, from the transformer's own generator (a
protonet.rng.Mt19937 the data layer seeds as Caffe's InitRand does).
"""
import numpy as np

from .. import backend
from ..io import FormatError, read_blobproto
from ..layer import TRAIN
from ..log import get_logger
from .datum import DataError

log = get_logger()


class DataTransformer:
    """Reads ``transform_param``: scale, mirror, crop_size, mean_file, mean_value,
    force_color, force_gray (the last two pick how encoded images are decoded)."""

    def __init__(self, param, phase=TRAIN, dtype=np.float32, what="transform_param"):
        self.param = param
        self.phase = phase
        self.dtype = np.dtype(dtype)
        self.what = what
        self.scale = float(param.scale)
        self.mirror = bool(param.mirror)
        self.crop_size = int(param.crop_size)
        self.force_color = bool(param.force_color)
        self.force_gray = bool(param.force_gray)
        self.mean = None
        self.mean_values = None
        if param.HasField("mean_file"):
            if len(param.mean_value):
                raise DataError("%s: cannot specify mean_file and mean_value at the same time"
                                % what)
            try:
                mean = read_blobproto(param.mean_file)
            except FormatError as exc:
                raise DataError("%s: mean_file: %s" % (what, exc)) from None
            if mean.ndim == 4:
                if mean.shape[0] != 1:      # Caffe reads the first C x H x W values
                    log.warning("%s: mean_file %s holds %d means; using the first, as Caffe",
                                what, param.mean_file, mean.shape[0])
                mean = mean[0]
            if mean.ndim != 3:
                raise DataError("%s: mean_file %s holds a blob of shape %s; expected 1 x C x H x W"
                                % (what, param.mean_file, mean.shape))
            self.mean = mean.astype(self.dtype)
        elif len(param.mean_value):
            self.mean_values = np.asarray(param.mean_value, dtype=self.dtype)

    @property
    def needs_rand(self):
        return self.mirror or (self.phase == TRAIN and self.crop_size > 0)

    def infer_shape(self, shape):
        """Output C x h x w for an input C x H x W, checking it against the settings."""
        self.check(shape)
        c, h, w = shape
        if self.crop_size:
            h = w = self.crop_size
        return (c, h, w)

    def check(self, shape, what=None):
        c, h, w = shape
        what = what or self.what
        if self.crop_size and (h < self.crop_size or w < self.crop_size):
            raise DataError("%s: crop_size %d is larger than the input %dx%d"
                            % (what, self.crop_size, h, w))
        if self.mean is not None and self.mean.shape != tuple(shape):
            raise DataError("%s: the mean_file %s is %s but the data is %s (they must match)"
                            % (what, self.param.mean_file, "x".join(map(str, self.mean.shape)),
                               "x".join(map(str, shape))))
        if self.mean_values is not None and len(self.mean_values) not in (1, c):
            raise DataError("%s: specify either 1 mean_value or as many as channels (%d), got %d"
                            % (what, c, len(self.mean_values)))

    def transform(self, batch, rng=None, out=None):
        """Transform an N x C x H x W batch (uint8 or float) into N x C x h x w of ``dtype``."""
        xp = backend.xp_of(batch)
        n, c, h, w = batch.shape
        self.check((c, h, w))
        crop = self.crop_size
        oh, ow = (crop, crop) if crop else (h, w)
        random_crop = bool(crop) and self.phase == TRAIN
        if self.needs_rand and rng is None:
            raise ValueError("this transform (mirror or a random crop) needs an rng")
        # Caffe's order, item by item: mirror = rng() % 2 (if mirror), then
        # h_off = rng() % (H - crop + 1) and w_off = rng() % (W - crop + 1) (a
        # TRAIN crop, drawn even when the crop is the whole image).
        per = int(self.mirror) + 2 * int(random_crop)
        draws = rng.raw(n * per).reshape(n, per).astype(np.int64) if per else None
        flip = draws[:, 0] % 2 == 1 if self.mirror else None
        if random_crop:
            h_off = draws[:, per - 2] % (h - crop + 1)
            w_off = draws[:, per - 1] % (w - crop + 1)
        else:
            h_off = np.full(n, (h - oh) // 2)
            w_off = np.full(n, (w - ow) // 2)

        mean = self.mean
        if mean is not None and xp is not np:
            mean = xp.asarray(mean)
        if not random_crop and (flip is None or not flip.any()):
            # One window for the whole batch: plain slicing.
            h0, w0 = int(h_off[0]), int(w_off[0])
            x = batch[:, :, h0:h0 + oh, w0:w0 + ow]
            m = None if mean is None else mean[None, :, h0:h0 + oh, w0:w0 + ow]
        else:
            rows = h_off[:, None] + np.arange(oh)                   # N x oh
            cols = w_off[:, None] + np.arange(ow)                   # N x ow
            if flip is not None:
                cols[flip] = cols[flip, ::-1]
            rows = xp.asarray(rows)[:, None, :, None]
            cols = xp.asarray(cols)[:, None, None, :]
            chan = xp.arange(c)[None, :, None, None]
            x = batch[xp.arange(n)[:, None, None, None], chan, rows, cols]
            m = None if mean is None else mean[chan, rows, cols]
        if out is None:
            out = xp.empty((n, c, oh, ow), dtype=self.dtype)
        out[...] = x
        if m is not None:
            out -= m
        elif self.mean_values is not None:
            mv = self.mean_values if len(self.mean_values) == c else \
                np.repeat(self.mean_values, c)
            out -= xp.asarray(mv)[None, :, None, None]
        out *= self.dtype.type(self.scale)
        return out


def resize_bilinear(img, new_h, new_w):
    """Resize an H x W (x C) uint8 image as OpenCV's ``cv::resize`` with INTER_LINEAR.

    Pixel centres are aligned (src = (dst + 0.5) * in / out - 0.5), edges are
    clamped and there is no antialiasing. The arithmetic is OpenCV's 8-bit
    fixed point, which Caffe's images went through: weights in 1/2048ths,
    rows summed horizontally as integers, then the vertical blend with its
    shifts (``((b0 * (S0 >> 4)) >> 16) + ((b1 * (S1 >> 4)) >> 16) + 2) >> 2``).
    Rounding the exact float value instead differs from OpenCV by one level
    in about one pixel in eight; this matches all but a few in a thousand.
    Written out: no allowed library has OpenCV's arithmetic, and scipy's zoom
    (float) was also 2.3x slower per image.
    """
    img = np.asarray(img)
    h, w = img.shape[:2]
    if (h, w) == (new_h, new_w):
        return img.copy()

    def axis(n_out, n_in):
        src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        i0 = np.floor(src).astype(np.int64)
        frac = src - i0
        frac[i0 < 0] = 0.0
        i0 = np.clip(i0, 0, n_in - 1)
        frac[i0 >= n_in - 1] = 0.0
        w0 = np.rint((1.0 - frac) * 2048).astype(np.int64)
        return i0, np.minimum(i0 + 1, n_in - 1), w0, 2048 - w0

    y0, y1, b0, b1 = axis(new_h, h)
    x0, x1, a0, a1 = axis(new_w, w)
    extra = (None,) * (img.ndim - 2)
    src = img.astype(np.int64)
    rows = src[:, x0] * a0[(slice(None),) + extra] + src[:, x1] * a1[(slice(None),) + extra]
    b0 = b0[(slice(None), None) + extra]
    b1 = b1[(slice(None), None) + extra]
    out = (((b0 * (rows[y0] >> 4)) >> 16) + ((b1 * (rows[y1] >> 4)) >> 16) + 2) >> 2
    return out.clip(0, 255).astype(np.uint8)
