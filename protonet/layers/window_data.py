"""WindowData: R-CNN's fine-tuning data layer (object and background windows of images).

A window file lists images and, for each, candidate boxes with the class of
the object they overlap and by how much. Each batch samples background
windows, then foreground ones, crops each from its image (with optional
context and square boxes), warps it to crop_size x crop_size, mirrors it at
random and subtracts the mean, as Caffe 1.0's window_data_layer.cpp does.
"""
import itertools
import math
import os
import re

import numpy as np

from .. import rng as _rng
from ..data.datum import DataError, decode_image, read_image_file
from ..data.transform import DataTransformer, resize_bilinear
from ..comm import data_share
from ..layer import TEST, register
from ..log import get_logger
from .data import PrefetchingDataLayer, seed_data_layer_rngs

# Columns of the window tables (one row per kept window).
IMAGE, LABEL, X1, Y1, X2, Y2, LINE = range(7)


_ROW = np.dtype([("label", np.int32), ("overlap", np.float32), ("x1", np.int32),
                 ("y1", np.int32), ("x2", np.int32), ("y2", np.int32)])
_INT = re.compile(r"[+-]?[0-9]+\Z")


class _Tokens:
    """Whitespace-separated tokens of a text file, as C++'s ``>>`` reads them, with line numbers."""

    def __init__(self, path, f):
        self.path, self.f = path, f
        self.lineno = 0                 # the line of the last token handed out
        self.tokens, self.i = [], 0     # that line's tokens, and how many were used
        self.back = []                  # lines read ahead and handed back (last first)

    def _next_line(self):
        line = self.back.pop() if self.back else self.f.readline()
        if not line:
            return False
        self.lineno += 1
        self.tokens, self.i = line.split(), 0
        return True

    def at_end(self):
        while self.i >= len(self.tokens):
            if not self._next_line():
                return True
        return False

    def token(self, what):
        if self.at_end():
            raise DataError("%s: the file ends (after line %d) where %s was expected"
                            % (self.path, self.lineno, what))
        self.i += 1
        return self.tokens[self.i - 1]

    def number(self, kind, what):
        return self.convert(kind, self.token(what), what)

    def convert(self, kind, tok, what):
        # Strict like C++'s >>: no "1.0" for an integer, no Python-only spellings ("1_0").
        ok = _INT.match(tok) if kind is int else "_" not in tok
        try:
            if ok:
                return kind(tok)
        except ValueError:
            pass
        raise DataError("%s:%d: expected %s (%s), got %r"
                        % (self.path, self.lineno, what,
                           "an integer" if kind is int else "a number", tok))

    def window_rows(self, count):
        """The next ``count`` lines as window rows when each holds exactly one (the usual
        layout), parsed in one go; else None, with nothing consumed."""
        if self.i < len(self.tokens) or self.back:
            return None
        lines = list(itertools.islice(self.f, count))
        rows = None
        if len(lines) == count:
            try:
                rows = np.loadtxt(lines, dtype=_ROW, comments=None, ndmin=1)
            except ValueError:
                pass
        # loadtxt skips blank lines, so a short result means the layout is not one row a line.
        if rows is None or len(rows) != count:
            self.back = lines[::-1]
            return None
        self.lineno += count
        return rows

    def window_rows_slowly(self, count, what):
        """The same, token by token (any layout); errors name the line."""
        rows = np.empty(count, _ROW)
        lines = np.empty(count, np.int64)
        for k in range(count):
            where = " of window %d of %d %s" % (k + 1, count, what)
            label = self.number(int, "the class index" + where)
            overlap = self.number(float, "the overlap" + where)
            box = [self.number(int, "coordinate %s%s" % (c, where))
                   for c in ("x1", "y1", "x2", "y2")]
            if any(abs(v) > 2 ** 31 - 1 for v in [label] + box):
                raise DataError("%s:%d: a value%s does not fit a 32-bit integer"
                                % (self.path, self.lineno, where))
            rows[k] = (label, overlap, *box)
            lines[k] = self.lineno
        return rows, lines


def read_window_file(path, root_folder, fg_threshold, bg_threshold):
    """Parse a window file into (images, fg, bg).

    images: [(path, declared (channels, height, width), line)]; fg and bg:
    int32 tables with columns IMAGE, LABEL, X1, Y1, X2, Y2, LINE. As in
    Caffe, overlap >= fg_threshold is foreground (its class must be > 0),
    overlap < bg_threshold is background (label forced to 0), and windows in
    between are dropped. Overlaps and thresholds compare in float32, Caffe's type.
    """
    fg_t, bg_t = np.float32(fg_threshold), np.float32(bg_threshold)
    images, fg, bg = [], [], []
    try:
        # Paths are bytes to Caffe: undecodable ones go through unchanged.
        f = open(path, encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise DataError("window file %s cannot be read (%s)"
                        % (path, exc.strerror or exc)) from None
    with f:
        toks = _Tokens(path, f)
        if toks.at_end():
            raise DataError("window file %s is empty" % path)
        while not toks.at_end():
            tok = toks.token("'#'")
            block_line = toks.lineno
            if tok != "#":
                raise DataError("%s:%d: expected '#' to start the block of image %d, got %r"
                                % (path, block_line, len(images), tok))
            index = toks.number(int, "the image index after '#'")
            # Caffe looks a window's image up by this number in the order the
            # blocks come: any other numbering would crop from the wrong image.
            if index != len(images):
                raise DataError("%s:%d: image index %d, expected %d (blocks are numbered "
                                "0, 1, 2... in file order)"
                                % (path, toks.lineno, index, len(images)))
            name = toks.token("the image path")
            # Caffe prefixes root_folder as a plain string (no separator added).
            image_path = root_folder + name
            size = tuple(toks.number(int, "the image's %s" % w)
                         for w in ("channels", "height", "width"))
            if size[0] != 3:
                raise DataError("%s:%d: image %s has %d channels; WindowData reads every image "
                                "as 3-channel BGR, so the window file must say 3"
                                % (path, toks.lineno, image_path, size[0]))
            images.append((image_path, size, block_line))
            count = toks.number(int, "the number of windows")
            if count < 0:
                raise DataError("%s:%d: negative number of windows %d" % (path, toks.lineno, count))
            if count == 0:
                continue
            first = toks.lineno + 1
            rows = toks.window_rows(count)
            if rows is not None:
                lines = np.arange(first, first + count)
            else:
                rows, lines = toks.window_rows_slowly(count, "for image %d" % index)
            is_fg = rows["overlap"] >= fg_t
            is_bg = ~is_fg & (rows["overlap"] < bg_t)
            bad = np.flatnonzero(is_fg & (rows["label"] <= 0))
            if len(bad):
                k = bad[0]
                raise DataError("%s:%d: foreground window (overlap %g >= fg_threshold %g) has "
                                "class %d; object classes must be > 0 (0 is background)"
                                % (path, lines[k], rows["overlap"][k], fg_t, rows["label"][k]))
            table = np.stack([np.full(count, index), rows["label"], rows["x1"], rows["y1"],
                              rows["x2"], rows["y2"], lines], axis=1).astype(np.int32)
            fg.append(table[is_fg])
            bg.append(table[is_bg])
            bg[-1][:, LABEL] = 0
    empty = np.empty((0, 7), np.int32)
    return images, np.concatenate(fg or [empty]), np.concatenate(bg or [empty])


def _round(v):
    """C's round(): halves away from zero (Python's round() goes to even)."""
    v = float(v)
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def window_geometry(box, img_h, img_w, crop, context_pad, square, mirror, dtype=np.float32):
    """Where a window goes: (source box x1, y1, x2, y2 inclusive, (warp_h, warp_w), (pad_h, pad_w)).

    The box, grown by context_pad (and made square), is warped as a whole
    to crop x crop; the part of it inside the image is cut out, resized to
    its share of that warp and placed at (pad_h, pad_w), so what lies
    outside the image stays 0. The arithmetic is in ``dtype`` with C
    rounding, as Caffe computes it in the net's Dtype. Raises ValueError
    (with the reason) where Caffe's OpenCV calls would fail.
    """
    x1, y1, x2, y2 = (int(v) for v in box)
    t = np.dtype(dtype).type
    pad_h = pad_w = 0
    warp_h = warp_w = crop
    if context_pad > 0 or square:
        context_scale = t(crop) / t(crop - 2 * context_pad)
        half_h = t((y2 - y1 + 1) / 2.0)
        half_w = t((x2 - x1 + 1) / 2.0)
        cx = t(x1) + half_w
        cy = t(y1) + half_h
        if square:
            half_h = half_w = max(half_h, half_w)
        x1 = _round(cx - half_w * context_scale)
        x2 = _round(cx + half_w * context_scale)
        y1 = _round(cy - half_h * context_scale)
        y2 = _round(cy + half_h * context_scale)
        full_h, full_w = y2 - y1 + 1, x2 - x1 + 1
        left, top = max(0, -x1), max(0, -y1)
        right, bottom = max(0, x2 - img_w + 1), max(0, y2 - img_h + 1)
        x1, x2, y1, y2 = x1 + left, x2 - right, y1 + top, y2 - bottom
        if x1 > x2 or y1 > y2:
            raise ValueError("the padded box lies outside the %dx%d image" % (img_w, img_h))
        # The scale the whole padded box would be warped with.
        sx = t(crop) / t(full_w)
        sy = t(crop) / t(full_h)
        warp_w = _round(t(x2 - x1 + 1) * sx)
        warp_h = _round(t(y2 - y1 + 1) * sy)
        pad_h = _round(t(top) * sy)
        # A mirrored crop is flipped with its padding: the right margin goes left.
        pad_w = _round(t(right if mirror else left) * sx)
        # Rounding can overshoot the crop by a pixel.
        warp_h = min(warp_h, crop - pad_h)
        warp_w = min(warp_w, crop - pad_w)
        if warp_h <= 0 or warp_w <= 0:
            raise ValueError("the part of the padded box inside the image warps to %dx%d pixels"
                             % (max(warp_w, 0), max(warp_h, 0)))
    elif not (0 <= x1 <= x2 < img_w and 0 <= y1 <= y2 < img_h):
        raise ValueError("the box is not inside the %dx%d image (0 <= x1 <= x2 < width, "
                         "0 <= y1 <= y2 < height without context_pad)" % (img_w, img_h))
    return (x1, y1, x2, y2), (warp_h, warp_w), (pad_h, pad_w)


class _WindowBatches:
    """Samples and warps one batch of windows per call (runs on the prefetch thread)."""

    def __init__(self, layer, images, fg, bg, num_fg, cache, mean, mean_off, mean_values, seed):
        p = layer.layer_param.window_data_param
        self.source = p.source
        self.batch_size = p.batch_size
        self.context_pad = p.context_pad
        self.square = p.crop_mode == "square"
        self.crop = layer.layer_param.transform_param.crop_size
        self.mirror = layer.layer_param.transform_param.mirror
        self.dtype = layer.dtype
        self.scale = self.dtype.type(p.scale)
        self.images, self.fg, self.bg, self.num_fg = images, fg, bg, num_fg
        self.cache = cache
        self.mean, self.mean_off, self.mean_values = mean, mean_off, mean_values
        # Caffe's prefetch_rng_: a boost::mt19937 whose raw 32-bit draws pick
        # windows (draw % count) and mirroring (draw % 2)
        self.rand = _rng.Mt19937(seed)

    def image(self, index):
        path = self.images[index][0]
        if self.cache is not None:
            return decode_image(self.cache[index], color=True, what="image %s" % path)
        return read_image_file(path, color=True)

    def __call__(self):
        n, crop = self.batch_size, self.crop
        per = 2 if self.mirror else 1
        draws = self.rand.raw(n * per)
        picks = draws[::per].astype(np.int64)
        flips = draws[1::2] % 2 == 1 if self.mirror else np.zeros(n, bool)
        num_bg = n - self.num_fg
        data = np.zeros((n, 3, crop, crop), dtype=self.dtype)
        labels = np.empty(n, dtype=self.dtype)
        decoded = {}       # an image sampled twice in a batch is decoded once
        for i in range(n):
            table = self.bg if i < num_bg else self.fg
            window = table[picks[i] % len(table)]
            index = int(window[IMAGE])
            if index not in decoded:
                decoded[index] = self.image(index)
            img = decoded[index]
            try:
                (x1, y1, x2, y2), (h, w), (ph, pw) = window_geometry(
                    window[X1:Y2 + 1], img.shape[0], img.shape[1], crop, self.context_pad,
                    self.square, flips[i], self.dtype)
            except ValueError as exc:
                raise DataError("%s:%d: window (%d, %d, %d, %d) of image %s: %s"
                                % (self.source, window[LINE], window[X1], window[Y1], window[X2],
                                   window[Y2], self.images[index][0], exc)) from None
            patch = resize_bilinear(img[y1:y2 + 1, x1:x2 + 1], h, w)
            if flips[i]:
                patch = patch[:, ::-1]
            values = patch.transpose(2, 0, 1).astype(self.dtype)
            # Caffe takes the mean at the *output* position (the mean is not
            # mirrored with the crop), from the mean's centre crop_size square.
            if self.mean is not None:
                r0, c0 = self.mean_off + ph, self.mean_off + pw
                values -= self.mean[:, r0:r0 + h, c0:c0 + w]
            elif self.mean_values is not None:
                values -= self.mean_values[:, None, None]
            values *= self.scale
            data[i, :, ph:ph + h, pw:pw + w] = values
            labels[i] = window[LABEL]
        return data, labels


@register("WindowData", "WINDOW_DATA")
class WindowDataLayer(PrefetchingDataLayer):
    """Windows of images named in a window file, warped to crop_size x crop_size.

    Window file (whitespace-separated, repeated per image)::

        # image_index        (0, 1, 2... in file order)
        image_path           (root_folder is prefixed as is)
        channels height width
        num_windows
        class_index overlap x1 y1 x2 y2     (num_windows lines; 0-based, inclusive)

    Reads window_data_param source, root_folder, batch_size, fg_threshold,
    bg_threshold, fg_fraction (int(batch_size * fg_fraction) foreground
    windows per batch, after the background ones), context_pad, crop_mode
    ("warp" or "square"), scale, cache_images (hold the image files in
    memory); and transform_param crop_size (required), mirror, mean_file or
    mean_value. Windows are drawn uniformly with replacement and mirrored in TEST too.
    Tops: data N x 3 x crop_size x crop_size (BGR), label (N,).
    """

    exact_num_top = 2

    def setup(self, bottom, top):
        p = self.layer_param.window_data_param
        tp = self.layer_param.transform_param
        log = get_logger()
        if not p.source:
            raise self.error("window_data_param.source (the window file) is empty")
        if p.batch_size <= 0:
            raise self.error("window_data_param.batch_size must be positive, got %d"
                             % p.batch_size)
        crop = tp.crop_size
        if crop <= 0:
            hint = (" (window_data_param.crop_size is not read: Caffe takes it from "
                    "transform_param)" if p.crop_size else "")
            raise self.error("transform_param.crop_size must be positive: windows are warped "
                             "to crop_size x crop_size%s" % hint)
        if p.crop_mode not in ("warp", "square"):
            raise self.error("crop_mode must be \"warp\" or \"square\", got %r" % p.crop_mode)
        if crop - 2 * p.context_pad <= 0:
            raise self.error("context_pad %d leaves nothing of the %d-pixel crop for the window "
                             "(needs crop_size - 2 * context_pad > 0)" % (p.context_pad, crop))
        if not 0 <= p.fg_fraction <= 1:
            raise self.error("fg_fraction must lie in [0, 1], got %g" % p.fg_fraction)
        # Caffe's WindowData scales by window_data_param.scale only; a V1 net's
        # scale ends up in transform_param (the upgrade moves it there) and is lost.
        if tp.scale != 1:
            log.warning("layer '%s': transform_param.scale %g is ignored: Caffe's WindowData "
                        "scales by window_data_param.scale (%g)", self.name, tp.scale, p.scale)
        for field in ("mean_file", "mirror"):
            if p.HasField(field):
                log.warning("layer '%s': window_data_param.%s is ignored: Caffe's WindowData "
                            "reads it from transform_param", self.name, field)
        try:
            loader = DataTransformer(tp, self.phase, self.dtype, what="transform_param")
            mean, mean_off, mean_values = self._mean(loader, crop)
            images, fg, bg = read_window_file(p.source, p.root_folder, p.fg_threshold,
                                              p.bg_threshold)
            num_fg = int(np.float32(p.batch_size) * np.float32(p.fg_fraction))
            rank, solvers = data_share(self.phase == TEST)
            if solvers > 1:
                # windows are sampled, not read in order: with N solvers rank r samples
                # from every N-th window of each kind, starting at r
                fg, bg = fg[rank::solvers], bg[rank::solvers]
            for count, table, what, rule in (
                    (num_fg, fg, "foreground", "overlap >= fg_threshold %g" % p.fg_threshold),
                    (p.batch_size - num_fg, bg, "background",
                     "overlap < bg_threshold %g" % p.bg_threshold)):
                if count and not len(table):
                    raise DataError("each batch takes %d %s windows but the window file %s has "
                                    "none%s (%s)" % (count, what, p.source,
                                                     " for solver rank %d of %d" % (rank, solvers)
                                                     if solvers > 1 else "", rule))
            cache = self._check_images(images, p.cache_images, p.source)
        except DataError as exc:
            raise self.error(str(exc)) from None
        classes, counts = np.unique(np.concatenate([fg[:, LABEL], bg[:, LABEL]]),
                                    return_counts=True)
        log.info("WindowData '%s': %d images, %d foreground and %d background windows (%s); "
                 "%d foreground of %d per batch; context_pad %d, crop_mode %s",
                 self.name, len(images), len(fg), len(bg),
                 ", ".join("class %d: %d" % cc for cc in zip(classes, counts)),
                 num_fg, p.batch_size, p.context_pad, p.crop_mode)
        top[0].reshape((p.batch_size, 3, crop, crop))
        top[1].reshape((p.batch_size,))
        self.images, self.fg_windows, self.bg_windows, self.num_fg = images, fg, bg, num_fg
        # The main-stream draws of Caffe's set-up: the transformer's InitRand (its
        # generator is never used: WindowData crops and mirrors with prefetch_rng_),
        # prefetch_rng_'s seed (crop_size is always set), InitRand again, the thread's seed.
        state = {}

        def in_setup():
            state["seed"] = _rng.rng_rand()
        seed_data_layer_rngs(loader, in_setup)
        self.prefetch_seed = state["seed"]
        batches = _WindowBatches(self, images, fg, bg, num_fg, cache, mean, mean_off,
                                 mean_values, self.prefetch_seed)
        self.start_prefetch(batches, 4)

    def _mean(self, loader, crop):
        """(mean C x H x W or None, its offset, per-channel mean values or None), checked."""
        if loader.mean is not None:
            c, h, w = loader.mean.shape
            # Caffe centres the crop_size square by the mean's width on both axes.
            off = (w - crop) // 2
            if c != 3 or w < crop or off + crop > h:
                raise DataError("transform_param: the mean_file %s is %dx%dx%d; WindowData "
                                "needs 3 channels and room for a %dx%d centre square (offset "
                                "(width - crop_size) / 2 on both axes)"
                                % (loader.param.mean_file, c, h, w, crop, crop))
            return loader.mean, off, None
        if loader.mean_values is not None:
            values = loader.mean_values
            if len(values) not in (1, 3):
                raise DataError("transform_param: specify either 1 mean_value or 3 (one per "
                                "BGR channel), got %d" % len(values))
            return None, 0, np.broadcast_to(values, (3,)).astype(self.dtype)
        return None, 0, None

    @staticmethod
    def _check_images(images, cache_images, source):
        """The image files' bytes when cache_images, else None; a missing file is an error now."""
        cache = [] if cache_images else None
        for path, _, line in images:
            if cache is not None:
                try:
                    with open(path, "rb") as f:
                        cache.append(f.read())
                except OSError as exc:
                    raise DataError("%s:%d: could not open or find the image file %s (%s)"
                                    % (source, line, path, exc.strerror or exc)) from None
            elif not os.path.isfile(path):
                raise DataError("%s:%d: could not open or find the image file %s"
                                % (source, line, path))
        return cache
