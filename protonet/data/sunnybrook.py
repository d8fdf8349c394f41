"""Sunnybrook Cardiac Data (LV Segmentation Challenge 2009) -> a DIGITS segmentation dataset.

``protonet data sunnybrook --images DIR --contours DIR --out DIR`` does what
the DIGITS Sunnybrook data plugin (and the tutorial code it came from) does:

* **Images**: every folder under ``--images`` (searched recursively, so
  ``challenge_training/``, ``challenge_validation/``... may sit in between)
  that holds ``IM-SSSS-NNNN.dcm`` files is a case, named by the folder
  (``SC-HF-I-1``). SSSS is a series number, NNNN an image number in it.
* **Contours**: ``<case>/contours-manual/IRCCI-expert/IM-0001-NNNN-icontour-manual.txt``
  anywhere under ``--contours``: the expert's inner (endocardial) contour of
  image NNNN of the case's short-axis (SAX) series, one ``x y`` point a line.
  The contour folders spell cases with leading zeros (``SC-HF-I-01``) where
  the image folders do not (``SC-HF-I-1``); both are normalised to the
  latter, as the tutorial's ``shrink_case`` does.
* **Which series**: the contour names do not say. The tutorial hard-codes a
  case -> SAX series table (:data:`SAX_SERIES`); it is used when the case
  folder holds that series. For a case it does not list (or a folder
  without the listed series, reported as a warning), image NNNN is looked
  up in every series of the case folder and the series with the most
  images wins (a cine SAX stack holds 20 phases x ~10 slices, localizers
  and long-axis views far fewer); on a tie, the highest series number
  (localizers are acquired first). The series used per case are listed in
  ``summary.json``.
* **Pixels**: the stored DICOM values as float32 (no rescale slope, no
  windowing: the tutorial feeds ``pixel_array`` as is). The label is the
  inner contour filled with 1 on a 0 background, with exactly the pixels of
  OpenCV's ``cv2.fillPoly(label, [np.int32(points)], 1)`` on the points
  truncated to integers (:func:`fill_poly`, a NumPy re-implementation).
* **Dataset**: DIGITS' layout: ``train_db/features``, ``train_db/labels``,
  ``val_db/features``, ``val_db/labels`` LMDBs. Features are Datum
  ``float_data`` 1 x 256 x 256 (``--channels gray``) or 3 x 256 x 256
  (``rgb``: the gray copied to three channels), labels Datum uint8 ``data``
  1 x 256 x 256, both with ``label: 0``, under the same key ``%09d`` (DIGITS'
  ``create_generic_db`` numbering, from 0 in each DB). The contours are
  sorted and shuffled with ``--seed``.
* **Split** (``--val-by``): by default by *case*: every slice of a patient
  lands on one side, so validation Dice measures patients the net has not
  seen (neighbouring slices of one heart look alike; split by image, val
  shares patients with train and its Dice is optimistic). The cases are
  shuffled with ``--seed`` and taken greedily while that brings the val
  share closer to ``--val-pct`` (at least one val case when it is above 0
  and there are two cases or more). ``--val-by image`` is DIGITS' own
  split: of the n images that could be read, the first
  ``floor(n * val_pct / 100)`` go to val.
* **Preview**: ``preview/contact_sheet*.png`` shows every written image
  with its contour (green) and filled label, captioned by case, image
  number, slice and split, sorted by case; ``preview/counts.txt`` counts
  images per case and split. Look at it before training: a contour that
  does not sit on the LV means a wrong series or a shifted contour.
  ``mean.binaryproto`` (also copied to ``train_db/``, where DIGITS writes
  it) is the mean train feature; DIGITS rounds it to uint8, which wraps
  16-bit MR values, so it is kept as float here.

A contour whose DICOM is missing (or whose case has no image folder), a
contour file with a malformed line, or an image that is not ``size`` x
``size`` is reported (file and line), the rest is written, and :func:`run`
exits 1.
"""
import json
import math
import os
import re
import shutil
import sys

import numpy as np

from .. import argtypes
from ..io import write_binary
from ..log import plural
from ..proto import caffe_pb2
from .datum import array_to_datum
from .db import LMDBWriter

KEY_FORMAT = "%09d"

# The tutorial's case -> SAX series table (the DIGITS plugin keeps its first 15
# rows). One widely copied version says "0984" for SC-N-6; the image-number
# search below finds the series either way.
SAX_SERIES = {
    "SC-HF-I-1": "0004", "SC-HF-I-2": "0106", "SC-HF-I-4": "0116", "SC-HF-I-5": "0156",
    "SC-HF-I-6": "0180", "SC-HF-I-7": "0209", "SC-HF-I-8": "0226", "SC-HF-I-9": "0241",
    "SC-HF-I-10": "0024", "SC-HF-I-11": "0043", "SC-HF-I-12": "0062", "SC-HF-I-40": "0134",
    "SC-HF-NI-3": "0379", "SC-HF-NI-4": "0501", "SC-HF-NI-7": "0523", "SC-HF-NI-11": "0270",
    "SC-HF-NI-12": "0286", "SC-HF-NI-13": "0304", "SC-HF-NI-14": "0331", "SC-HF-NI-15": "0359",
    "SC-HF-NI-31": "0401", "SC-HF-NI-33": "0424", "SC-HF-NI-34": "0446", "SC-HF-NI-36": "0474",
    "SC-HYP-1": "0550", "SC-HYP-3": "0650", "SC-HYP-6": "0767", "SC-HYP-7": "0007",
    "SC-HYP-8": "0796", "SC-HYP-9": "0003", "SC-HYP-10": "0579", "SC-HYP-11": "0601",
    "SC-HYP-12": "0629", "SC-HYP-37": "0702", "SC-HYP-38": "0734", "SC-HYP-40": "0755",
    "SC-N-2": "0898", "SC-N-3": "0915", "SC-N-5": "0963", "SC-N-6": "0981", "SC-N-7": "1009",
    "SC-N-9": "1031", "SC-N-10": "0851", "SC-N-11": "0878", "SC-N-40": "0944",
}

_DICOM_RE = re.compile(r"^IM-(\d{4})-(\d{4})\.dcm$", re.IGNORECASE)
_CONTOUR_RE = re.compile(r"^IM-0001-(\d{4})-icontour-manual\.txt$")


class DicomError(ValueError):
    """A file that is not a readable single-frame DICOM image; the message names it."""


class SunnybrookError(ValueError):
    """The inputs cannot be converted at all (missing folders, no contours, output in the way)."""


class ContourError(ValueError):
    """A contour file that cannot be read; the message names file:line."""


def normalize_case(name):
    """``SC-HF-I-01`` -> ``SC-HF-I-1``: numeric parts lose their leading zeros."""
    return "-".join(str(int(t)) if t.isdigit() else t for t in name.split("-"))


# -- OpenCV-exact polygon fill ------------------------------------------------

_XY_SHIFT = 16  # OpenCV's drawing code keeps x in 16.16 fixed point


def _tdiv(a, b):
    """C integer division (truncates toward zero) on Python ints."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def _clip_line(w, h, x1, y1, x2, y2):
    """OpenCV's ``clipLine(Size, pt1, pt2)``, integer arithmetic and all."""
    right, bottom = w - 1, h - 1
    c1 = (x1 < 0) + (x1 > right) * 2 + (y1 < 0) * 4 + (y1 > bottom) * 8
    c2 = (x2 < 0) + (x2 > right) * 2 + (y2 < 0) * 4 + (y2 > bottom) * 8
    if (c1 & c2) == 0 and (c1 | c2) != 0:
        if c1 & 12:
            a = 0 if c1 < 8 else bottom
            x1 += _tdiv((a - y1) * (x2 - x1), y2 - y1)
            y1 = a
            c1 = (x1 < 0) + (x1 > right) * 2
        if c2 & 12:
            a = 0 if c2 < 8 else bottom
            x2 += _tdiv((a - y2) * (x2 - x1), y2 - y1)
            y2 = a
            c2 = (x2 < 0) + (x2 > right) * 2
        if (c1 & c2) == 0 and (c1 | c2) != 0:
            if c1:
                a = 0 if c1 == 1 else right
                y1 += _tdiv((a - x1) * (y2 - y1), x2 - x1)
                x1 = a
                c1 = 0
            if c2:
                a = 0 if c2 == 1 else right
                y2 += _tdiv((a - x2) * (y2 - y1), x2 - x1)
                x2 = a
                c2 = 0
    return (c1 | c2) == 0, x1, y1, x2, y2


def _line_pixels(x0, y0, x1, y1):
    """All pixels of OpenCV's 8-connected lines (LineIterator, left to right), vectorised.

    Bresenham with err0 = dx - 2dy stepping the minor axis when err < 0 puts
    the minor coordinate after k major steps at ceil((2*minor*k - major) / (2*major)).
    """
    swap = x1 < x0
    x0, x1, y0, y1 = (np.where(swap, x1, x0), np.where(swap, x0, x1),
                      np.where(swap, y1, y0), np.where(swap, y0, y1))
    dx, dy = x1 - x0, y1 - y0
    sy = np.where(dy < 0, -1, 1)
    vert = np.abs(dy) > dx
    major = np.maximum(dx, np.abs(dy))
    minor = np.minimum(dx, np.abs(dy))
    count = major + 1
    seg = np.repeat(np.arange(len(x0)), count)
    k = np.arange(int(count.sum())) - (np.cumsum(count) - count)[seg]
    big = major[seg]
    m = -((big - 2 * minor[seg] * k) // np.maximum(2 * big, 1))
    v = vert[seg]
    return x0[seg] + np.where(v, m, k), y0[seg] + sy[seg] * np.where(v, k, m)


def fill_poly(shape, points):
    """A uint8 ``shape`` mask: 1 on the pixels ``cv2.fillPoly(mask, [np.int32(points)], 1)`` sets.

    OpenCV (shift 0, LINE_8) draws every edge with an 8-connected line, then
    fills scanlines by the even-odd rule: an edge is active on rows
    ``y0 <= y < y1``, its x walks in 16.16 fixed point from the (clipped)
    upper end by ``dx = (x1 - x0 << 16) / (y1 - y0)`` (C division), and
    each pair of sorted crossings fills ``ceil(xl) .. floor(xr)``.
    """
    h, w = int(shape[0]), int(shape[1])
    out = np.zeros((h, w), np.uint8)
    pts = np.asarray(points, dtype=np.int64).reshape(-1, 2)
    n = len(pts)
    if n == 0 or h <= 0 or w <= 0:
        return out
    X1, Y1 = pts[:, 0], pts[:, 1]
    X0, Y0 = np.roll(X1, 1), np.roll(Y1, 1)  # edge i runs from point i-1 to point i

    lx0, ly0, lx1, ly1 = X0.copy(), Y0.copy(), X1.copy(), Y1.copy()
    cy0, cy1 = Y0.copy(), Y1.copy()
    drawn = np.ones(n, bool)
    outside = ~((X0 >= 0) & (X0 < w) & (X1 >= 0) & (X1 < w)
                & (Y0 >= 0) & (Y0 < h) & (Y1 >= 0) & (Y1 < h))
    for i in np.flatnonzero(outside):  # rare: contours normally lie inside the image
        ok, a, b, c, d = _clip_line(w, h, int(X0[i]), int(Y0[i]), int(X1[i]), int(Y1[i]))
        drawn[i] = ok
        lx0[i], ly0[i], lx1[i], ly1[i] = a, b, c, d
        if b != d:  # OpenCV starts the edge from the clipped end only if it is not flat
            cy0[i], cy1[i] = b, d
    xs, ys = _line_pixels(lx0[drawn], ly0[drawn], lx1[drawn], ly1[drawn])
    out[ys, xs] = 1

    e = Y0 != Y1  # horizontal edges are drawn but never filled from
    if e.sum() < 2:
        return out
    cx0, cx1 = lx0[e] << _XY_SHIFT, lx1[e] << _XY_SHIFT
    cy0, cy1, Y0e, Y1e = cy0[e], cy1[e], Y0[e], Y1[e]
    num, den = cx1 - cx0, cy1 - cy0
    dxs = np.abs(num) // np.abs(den)
    dxs = np.where((num < 0) != (den < 0), -dxs, dxs)
    down = Y0e < Y1e
    ey0, ey1 = np.where(down, Y0e, Y1e), np.where(down, Y1e, Y0e)
    ex = np.where(down, cx0 + (Y0e - cy0) * dxs, cx1 + (Y1e - cy1) * dxs)
    xend = ex + (ey1 - ey0) * dxs
    if (ey1.max() < 0 or ey0.min() >= h or max(ex.max(), xend.max()) < 0
            or min(ex.min(), xend.min()) >= (w << _XY_SHIFT)):
        return out
    lo, hi = np.maximum(ey0, 0), np.minimum(ey1, h)
    cnt = np.maximum(hi - lo, 0)
    if cnt.sum() == 0:
        return out
    eid = np.repeat(np.arange(len(ey0)), cnt)
    y = lo[eid] + np.arange(int(cnt.sum())) - (np.cumsum(cnt) - cnt)[eid]
    x = ex[eid] + (y - ey0[eid]) * dxs[eid]
    order = np.lexsort((x, y))
    y, x = y[order], x[order]
    idx = np.arange(len(y))
    rank = idx - np.maximum.accumulate(np.where(np.r_[True, y[1:] != y[:-1]], idx, 0))
    left = idx[rank % 2 == 0]
    left = left[left + 1 < len(y)]
    left = left[y[left + 1] == y[left]]
    xa = (x[left] + (1 << _XY_SHIFT) - 1) >> _XY_SHIFT
    xb = x[left + 1] >> _XY_SHIFT
    ok = (xa < w) & (xb >= 0) & (xa <= xb)
    xa, xb, yy = np.maximum(xa[ok], 0), np.minimum(xb[ok], w - 1), y[left][ok]
    runs = np.zeros((h, w + 1), np.int32)
    np.add.at(runs, (yy, xa), 1)
    np.add.at(runs, (yy, xb + 1), -1)
    out[np.cumsum(runs[:, :w], axis=1) > 0] = 1
    return out


# -- reading ------------------------------------------------------------------

def read_contour(path):
    """A contour file's points as an (N, 2) float array of (x, y); ContourError names file:line."""
    pts = []
    with open(path, "r", encoding="ascii", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            text = line.strip()
            if not text:
                continue
            parts = text.split()
            try:
                if len(parts) != 2:
                    raise ValueError
                x, y = float(parts[0]), float(parts[1])
                if not (math.isfinite(x) and math.isfinite(y)):
                    raise ValueError
            except ValueError:
                raise ContourError("%s:%d: expected one point 'x y' (two numbers), got %r"
                                   % (path, lineno, text[:80])) from None
            pts.append((x, y))
    if len(pts) < 3:
        raise ContourError("%s: holds %d point(s); a contour needs at least 3" % (path, len(pts)))
    return np.array(pts, dtype=np.float64)


def contour_label(points, shape):
    """The 0/1 uint8 label of a contour: points truncated to int, filled as cv2.fillPoly does."""
    return fill_poly(shape, np.trunc(np.asarray(points, np.float64)).astype(np.int64))


def read_dicom(path, dtype=np.float32):
    """The stored pixel values of a single-frame DICOM image as an H x W array.

    No rescale slope/intercept and no windowing, as the tutorial reads them;
    ``dtype=None`` keeps the stored integer type.
    """
    return _read_dicom(path, dtype)[0]


def _read_dicom(path, dtype=np.float32):
    """(pixels as read_dicom returns them, SliceLocation in mm or None)."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as exc:
        raise DicomError("%s: cannot read (%s)" % (path, exc.strerror or exc)) from None
    if not head:
        raise DicomError("%s: not a DICOM file: the file is empty (0 bytes)" % path)
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        try:
            ds = pydicom.dcmread(path, force=True)  # an old export without the 128-byte preamble
        except Exception:
            ds = None
    except Exception as exc:                    # a DICOM cut short or damaged
        raise DicomError("%s: a damaged DICOM file (%s: %s)" % (path, type(exc).__name__, exc)) \
            from None
    if ds is None or "PixelData" not in ds:
        # pydicom's force=True reads almost anything as an empty dataset; say what it is
        marker = head[128:132] == b"DICM"
        raise DicomError("%s: not a DICOM image: %s (it starts with %r)" % (
            path, "it has the DICOM marker but no image data (PixelData)" if marker else
            "it has no 'DICM' marker at byte 128 and does not read as an old-style DICOM "
            "with image data either", head[:16]))
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise DicomError("%s: the DICOM image data cannot be decoded (%s: %s)"
                         % (path, type(exc).__name__, exc)) from None
    if arr.ndim != 2:
        raise ValueError("%s: pixel data has shape %s; expected one gray frame"
                         % (path, "x".join(map(str, arr.shape))))
    try:
        location = float(ds.SliceLocation)
    except (AttributeError, TypeError, ValueError):
        location = None
    return (arr if dtype is None else arr.astype(dtype)), location


# The challenge's cine short-axis series hold 20 phases per slice, numbered slice
# by slice (images 1-20: slice 1, 21-40: slice 2, ...).
PHASES_PER_SLICE = 20


def slice_of(image_no):
    """The slice (from 1) of image number ``image_no`` of a Sunnybrook cine SAX series."""
    return (int(image_no) - 1) // PHASES_PER_SLICE + 1


def find_image_cases(images_dir):
    """({case: {"dir": folder, "series": {SSSS: {NNNN: path}}}}, warnings) for the case
    folders under images_dir; a case found twice is warned about and its first folder used."""
    cases, warnings = {}, []
    for dirpath, dirnames, files in os.walk(images_dir):
        dirnames.sort()
        series = {}
        for name in files:
            m = _DICOM_RE.match(name)
            if m:
                series.setdefault(m.group(1), {})[int(m.group(2))] = os.path.join(dirpath, name)
        if not series:
            continue
        case = normalize_case(os.path.basename(dirpath))
        if case in cases:
            warnings.append("case %s found twice: %s and %s; using the first"
                            % (case, cases[case]["dir"], dirpath))
            continue
        cases[case] = {"dir": dirpath, "series": series}
    return cases, warnings


def find_contours(contours_dir):
    """[(case, image number, path)] for every inner expert contour under contours_dir, sorted,
    and warnings for contour-named files outside ``<case>/contours-manual/IRCCI-expert/``."""
    found, warnings = [], []
    for dirpath, dirnames, files in os.walk(contours_dir):
        dirnames.sort()
        for name in sorted(files):
            m = _CONTOUR_RE.match(name)
            if not m:
                continue
            path = os.path.join(dirpath, name)
            parent = os.path.basename(dirpath)
            grand = os.path.dirname(dirpath)
            case_dir = os.path.dirname(grand)
            if parent != "IRCCI-expert" or os.path.basename(grand) != "contours-manual" \
                    or not os.path.basename(case_dir):
                warnings.append("%s: not under <case>/contours-manual/IRCCI-expert/; ignored"
                                % path)
                continue
            found.append((normalize_case(os.path.basename(case_dir)), int(m.group(1)), path))
    found.sort()
    return found, warnings


def find_dicom(case_entry, case, image_no):
    """(path, series, note) of image ``image_no`` of the case's SAX series; path None if absent.

    A case in SAX_SERIES whose folder holds that series uses it (a missing
    image there is missing). Otherwise (a case not in the table, or a folder
    without the listed series) the series holding image ``image_no`` with
    the most images is used, the highest series number on a tie; ``note``
    then says so for a listed case.
    """
    series = case_entry["series"]
    known = SAX_SERIES.get(case)
    if known is not None and known in series:
        return series[known].get(image_no), known, None
    holding = [s for s, imgs in series.items() if image_no in imgs]
    if not holding:
        return None, known, None
    best = max(holding, key=lambda s: (len(series[s]), int(s)))
    note = None
    if known is not None:
        note = ("case %s: SAX_SERIES names series %s but %s has none; using series %s "
                "(the largest holding the contoured image numbers)" % (
                    case, known, case_entry["dir"], best))
    return series[best][image_no], best, note


# -- progress and reporting ---------------------------------------------------

class _Progress:
    """A one-line ``\\r`` counter on stderr when it is a terminal; problems print above it."""

    def __init__(self, enabled):
        self.stream = sys.stderr
        self.enabled = bool(enabled) and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._text = ""

    def update(self, what, i, total):
        if self.enabled and (i == total or i % 8 == 0):
            self._text = "%s %d/%d" % (what, i, total)
            self.stream.write("\r" + self._text)
            self.stream.flush()

    def done(self):
        """Keep the last count on its own line."""
        if self._text:
            self.stream.write("\n")
            self.stream.flush()
            self._text = ""

    def message(self, text):
        if self._text:  # wipe the counter; the next update redraws it below the message
            self.stream.write("\r%s\r" % (" " * len(self._text)))
            self._text = ""
        self.stream.write(text + "\n")
        self.stream.flush()


# -- writing ------------------------------------------------------------------

def _write_split(out_dir, split, examples, channels, progress):
    """Write features/labels LMDBs of one split; returns (feature sum or None, LV pixel count)."""
    feats = os.path.join(out_dir, split, "features")
    labels = os.path.join(out_dir, split, "labels")
    size = examples[0]["image"].shape
    per = (channels * 4 + 1) * size[0] * size[1] + 4096
    map_size = max(1 << 24, int(per * len(examples) * 1.2))
    total = None
    lv = 0
    with LMDBWriter(feats, map_size=map_size, commit_every=64) as fw, \
            LMDBWriter(labels, map_size=map_size // 4, commit_every=64) as lw:
        for i, ex in enumerate(examples):
            img = ex["image"].astype(np.float32)
            feature = np.broadcast_to(img, (channels,) + img.shape)
            key = KEY_FORMAT % i
            fw.put(key, array_to_datum(feature, label=0))
            lw.put(key, array_to_datum(ex["label"][None], label=0))
            total = feature.astype(np.float64) if total is None else total + feature
            lv += int(ex["label"].sum())
            ex["key"] = key
            progress.update("writing %s" % split, i + 1, len(examples))
    progress.done()
    return total, lv


def _write_mean(path, mean):
    blob = caffe_pb2.BlobProto()
    blob.num = 1
    blob.channels, blob.height, blob.width = (int(s) for s in mean.shape)
    blob.data.extend(mean.astype(np.float32).ravel().tolist())
    write_binary(path, blob)


def _load_examples(contours, order, cases, images_dir, size, report, warnings):
    """Read the contours in ``order`` and their images; returns (examples, skipped, series used)."""
    examples, skipped, series_used, noted, no_folder = [], [], {}, set(), {}

    def skip(contour_path, case, image_no, reason, where=True, quiet=False):
        text = "%s: %s" % (contour_path, reason) if where else reason
        skipped.append({"contour": contour_path, "case": case, "image": image_no, "reason": text})
        if not quiet:
            report.message("sunnybrook: skipped " + text)

    for n, j in enumerate(order):
        case, image_no, cpath = contours[j]
        report.update("reading", n + 1, len(order))
        if case not in cases:  # reported once per case below
            no_folder[case] = no_folder.get(case, 0) + 1
            skip(cpath, case, image_no, "no image folder for case %s under %s"
                 % (case, images_dir), quiet=True)
            continue
        try:
            points = read_contour(cpath)
        except ContourError as exc:  # the message starts with file:line
            skip(cpath, case, image_no, str(exc), where=False)
            continue
        except OSError as exc:
            skip(cpath, case, image_no, "cannot read (%s)" % (exc.strerror or exc))
            continue
        dpath, series, note = find_dicom(cases[case], case, image_no)
        if dpath is None:
            skip(cpath, case, image_no, "missing DICOM: no IM-%s-%04d.dcm in %s" % (
                series or "SSSS", image_no, cases[case]["dir"]))
            continue
        if note and case not in noted:
            noted.add(case)
            warnings.append(note)
            report.message("sunnybrook: warning: " + note)
        try:
            img, location = _read_dicom(dpath, dtype=None)
        except DicomError as exc:
            skip(cpath, case, image_no, str(exc))
            continue
        except Exception as exc:  # pydicom raises many types for damaged files
            skip(cpath, case, image_no, "cannot read DICOM %s (%s: %s)"
                 % (dpath, type(exc).__name__, exc))
            continue
        if img.shape != (size, size):
            skip(cpath, case, image_no, "%s is %s pixels, expected %dx%d (the challenge images "
                 "are %dx%d; images are not resized)" % (
                     dpath, "x".join(map(str, img.shape)), size, size, size, size))
            continue
        examples.append({"image": img, "label": contour_label(points, img.shape),
                         "contour": cpath, "dicom": dpath, "case": case, "image_no": image_no,
                         "slice": slice_of(image_no), "slice_location": location})
        series_used.setdefault(case, set()).add(series)
    report.done()
    for case, count in sorted(no_folder.items()):
        report.message("sunnybrook: skipped %d contour(s) of case %s: no folder named %s holding "
                       "IM-SSSS-NNNN.dcm files under %s" % (count, case, case, images_dir))
    return examples, skipped, series_used


def _case_key(case):
    """Natural order of case names: SC-HF-I-2 before SC-HF-I-10."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in case.split("-")]


def choose_val_cases(counts, val_pct, seed=0):
    """The cases for validation: ``counts`` is {case: images}; their share is close to val_pct.

    The cases (sorted, then shuffled with ``seed``) are taken one by one
    when adding a case brings the val image count closer to
    ``total * val_pct / 100``. With val_pct above 0 and two cases or more,
    at least one case goes to val (the one closest to the target), and below
    100 at least one stays for training (the smallest val case goes back).
    """
    cases = sorted(counts, key=_case_key)
    target = sum(counts.values()) * float(val_pct) / 100.0
    order = [cases[i] for i in np.random.default_rng([int(seed) & 0xFFFFFFFF, 1])
             .permutation(len(cases))]
    val, n = [], 0
    for case in order:
        if abs(n + counts[case] - target) < abs(n - target):
            val.append(case)
            n += counts[case]
    if len(cases) >= 2:
        if float(val_pct) > 0 and not val:
            val.append(min(order, key=lambda c: abs(counts[c] - target)))
        elif float(val_pct) < 100 and len(val) == len(cases):
            val.remove(min(val, key=lambda c: counts[c]))
    return set(val)


def _case_counts(examples, skipped, split_of):
    """{case: {"train": n, "val": n, "skipped": n, "slices": [..]}} in natural case order."""
    table = {}
    for ex in examples:
        row = table.setdefault(ex["case"], {"train": 0, "val": 0, "skipped": 0, "slices": set()})
        row[split_of(ex)] += 1
        row["slices"].add(ex["slice"])
    for sk in skipped:
        table.setdefault(sk["case"], {"train": 0, "val": 0, "skipped": 0, "slices": set()})
        table[sk["case"]]["skipped"] += 1
    return {c: dict(table[c], slices=sorted(table[c]["slices"]))
            for c in sorted(table, key=_case_key)}


PREVIEW_THUMB = 192       # pixels per tile: the LV is ~2% of a 256 x 256 image
PREVIEW_PER_SHEET = 64    # 8 x 8 tiles a sheet
_PREVIEW_COLOR = (0, 255, 0)


def write_preview(out_dir, examples, cases, split_of):
    """``out_dir``/preview: contact sheets of every image with its contour, and counts.txt.

    Returns the written paths relative to ``out_dir``.
    """
    from .. import viz
    folder = os.path.join(out_dir, "preview")
    os.makedirs(folder, exist_ok=True)
    written = []
    ordered = sorted(examples, key=lambda e: (_case_key(e["case"]), e["image_no"]))
    for k, start in enumerate(range(0, len(ordered), PREVIEW_PER_SHEET)):
        chunk = ordered[start:start + PREVIEW_PER_SHEET]
        tiles = [viz.overlay(ex["image"], ex["label"], alpha=0.2, thickness=2,
                             fill=_PREVIEW_COLOR, pred_color=_PREVIEW_COLOR) for ex in chunk]
        captions = ["%s  IM %04d\nslice %d  %s" % (ex["case"], ex["image_no"], ex["slice"],
                                                   split_of(ex)) for ex in chunk]
        name = "contact_sheet.png" if k == 0 else "contact_sheet_%d.png" % (k + 1)
        viz.save_png(os.path.join(folder, name),
                     viz.contact_sheet(tiles, captions, thumb=PREVIEW_THUMB, per_row=8))
        written.append(os.path.join("preview", name))
    lines = ["%-14s %6s %6s %8s  %s" % ("case", "train", "val", "skipped", "slices")]
    for case, row in cases.items():
        lines.append("%-14s %6d %6d %8d  %s" % (case, row["train"], row["val"], row["skipped"],
                                              ",".join(map(str, row["slices"]))))
    lines.append("%-14s %6d %6d %8d" % ("total", sum(r["train"] for r in cases.values()),
                                        sum(r["val"] for r in cases.values()),
                                        sum(r["skipped"] for r in cases.values())))
    with open(os.path.join(folder, "counts.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    written.append(os.path.join("preview", "counts.txt"))
    return written


def convert(images_dir, contours_dir, out_dir, channels="gray", val_pct=10, seed=0, size=256,
            progress=True, overwrite=False, val_by="case", preview=True):
    """Convert the Sunnybrook challenge data to a DIGITS segmentation dataset in ``out_dir``.

    ``val_by``: "case" (a patient's images all in train or all in val, see
    :func:`choose_val_cases`) or "image" (DIGITS' split). ``preview``: write
    ``out_dir/preview`` (:func:`write_preview`). Returns the summary dict also written to ``out_dir/summary.json``:
    ``splits`` (entries, shapes, LV pixel fraction, DB paths per split),
    ``entries`` (split, key, case, contour, DICOM, image number, slice and
    DICOM SliceLocation of every example), ``cases`` (images per case and
    split), ``val_cases`` (with ``val_by="case"``), ``preview`` (files),
    ``skipped`` (contour, reason), ``series`` (SAX series used per case)
    and ``ok`` (False when anything was skipped). Raises SunnybrookError
    when nothing can be done: a missing input folder, no contour files, no
    image folder for any contoured case, or a dataset already in
    ``out_dir`` (unless ``overwrite``).
    """
    if channels not in ("gray", "rgb"):
        raise SunnybrookError("channels must be 'gray' or 'rgb', not %r" % (channels,))
    if val_by not in ("case", "image"):
        raise SunnybrookError("val_by must be 'case' or 'image', not %r" % (val_by,))
    if not 0 <= float(val_pct) <= 100:
        raise SunnybrookError("val_pct must be between 0 and 100, not %r" % (val_pct,))
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise SunnybrookError("size must be a whole number of pixels, at least 1, not %r" % (size,))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SunnybrookError("seed must be a whole number 0 or more, not %r" % (seed,))
    for what, folder in (("images", images_dir), ("contours", contours_dir)):
        if not os.path.isdir(folder):
            raise SunnybrookError("%s folder %s does not exist or is not a folder" % (what, folder))
    outputs = [os.path.join(out_dir, d) for d in ("train_db", "val_db", "mean.binaryproto",
                                                  "preview")]
    present = [d for d in outputs if os.path.exists(d)]
    if present and not overwrite:
        raise SunnybrookError("%s already exists; pass --overwrite (overwrite=True) to replace "
                              "the dataset in %s" % (present[0], out_dir))
    nch = 3 if channels == "rgb" else 1
    report = _Progress(progress)
    images_dir, contours_dir = os.path.abspath(images_dir), os.path.abspath(contours_dir)

    contours, warnings = find_contours(contours_dir)
    if not contours:
        raise SunnybrookError("no contour files IM-0001-NNNN-icontour-manual.txt under %s "
                              "(expected <case>/contours-manual/IRCCI-expert/...)" % contours_dir)
    cases, more = find_image_cases(images_dir)
    warnings += more
    wanted = sorted({c for c, _, _ in contours})
    if not any(c in cases for c in wanted):
        raise SunnybrookError(
            "none of the %d contoured cases (%s) has a folder of IM-SSSS-NNNN.dcm files under %s%s"
            % (len(wanted), ", ".join(wanted[:4]) + (", ..." if len(wanted) > 4 else ""),
               images_dir, "; image folders found: " + ", ".join(sorted(cases)[:8])
               if cases else "; it holds no IM-SSSS-NNNN.dcm files at all"))
    for w in warnings:
        report.message("sunnybrook: warning: " + w)

    order = np.random.default_rng(seed).permutation(len(contours))
    examples, skipped, series_used = _load_examples(contours, order, cases, images_dir, size,
                                                    report, warnings)

    for path in present:
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    os.makedirs(out_dir, exist_ok=True)
    val_cases = None
    if val_by == "image":   # DIGITS: the first floor(n * pct) of the shuffled images
        n_val = int(math.floor(len(examples) * float(val_pct) / 100.0))
        for i, ex in enumerate(examples):
            ex["split"] = "val" if i < n_val else "train"
    else:
        counts = {}
        for ex in examples:
            counts[ex["case"]] = counts.get(ex["case"], 0) + 1
        val_cases = choose_val_cases(counts, val_pct, seed)
        for ex in examples:
            ex["split"] = "val" if ex["case"] in val_cases else "train"
    # val first, as DIGITS lists them; each keeps the shuffled order
    examples = ([ex for ex in examples if ex["split"] == "val"]
                + [ex for ex in examples if ex["split"] == "train"])
    splits = {"val_db": [ex for ex in examples if ex["split"] == "val"],
              "train_db": [ex for ex in examples if ex["split"] == "train"]}
    summary_splits = {}
    mean_files = []
    for split in ("train_db", "val_db"):
        exs = splits[split]
        name = split[:-3]
        if not exs:
            summary_splits[name] = {"entries": 0}
            continue
        total, lv = _write_split(out_dir, split, exs, nch, report)
        summary_splits[name] = {
            "entries": len(exs),
            "features": os.path.join(split, "features"),
            "labels": os.path.join(split, "labels"),
            "feature_shape": [nch, size, size],
            "label_shape": [1, size, size],
            "lv_fraction": lv / float(len(exs) * size * size),
        }
        if split == "train_db":
            mean = (total / len(exs)).astype(np.float32)
            for rel in ("mean.binaryproto", os.path.join("train_db", "mean.binaryproto")):
                _write_mean(os.path.join(out_dir, rel), mean)
                mean_files.append(rel)

    cases_table = _case_counts(examples, skipped, split_of=lambda ex: ex["split"])
    preview_files = (write_preview(out_dir, examples, cases_table, lambda ex: ex["split"])
                     if preview and examples else [])
    summary = {
        "out_dir": os.path.abspath(out_dir),
        "images_dir": images_dir,
        "contours_dir": contours_dir,
        "channels": channels,
        "size": size,
        "seed": seed,
        "val_pct": val_pct,
        "val_by": val_by,
        "val_cases": sorted(val_cases, key=_case_key) if val_cases is not None else None,
        "key_format": KEY_FORMAT,
        "contours_found": len(contours),
        "written": len(examples),
        "splits": summary_splits,
        "lv_fraction": (sum(float(ex["label"].sum()) for ex in examples)
                        / float(max(len(examples), 1) * size * size)),
        "mean_files": mean_files,
        "series": {c: sorted(s) for c, s in sorted(series_used.items())},
        "entries": [{"split": ex["split"], "key": ex.get("key"), "case": ex["case"],
                     "contour": ex["contour"], "dicom": ex["dicom"], "image": ex["image_no"],
                     "slice": ex["slice"], "slice_location": ex["slice_location"]}
                    for ex in examples],
        "cases": cases_table,
        "preview": preview_files,
        "skipped": skipped,
        "warnings": warnings,
        "ok": not skipped,
    }
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def format_summary(summary):
    """The human-readable summary ``protonet data sunnybrook`` prints."""
    lines = ["Sunnybrook dataset in %s (%s, keys %s)" % (summary["out_dir"], summary["channels"],
                                                        summary["key_format"])]
    for name in ("train", "val"):
        s = summary["splits"].get(name, {"entries": 0})
        if s["entries"]:
            lines.append("  %-5s %5d %-7s  features %s  labels %s  LV pixels %.2f%%" % (
                name, s["entries"], "entry" if s["entries"] == 1 else "entries", "x".join(map(str, s["feature_shape"])),
                "x".join(map(str, s["label_shape"])), 100 * s["lv_fraction"]))
        else:
            lines.append("  %-5s     0 entries (no %s_db written)" % (name, name))
    written = max(summary["written"], 1)
    n_val = summary["splits"].get("val", {"entries": 0})["entries"]
    if summary.get("val_by") == "image":
        lines.append("  split by image (DIGITS' split): %.1f%% val; a patient's slices may sit on "
                     "both sides" % (100.0 * n_val / written))
    else:
        val_cases = summary.get("val_cases") or []
        lines.append("  split by case (every slice of a patient on one side): %d of %s, "
                     "%.1f%% of the images for val (asked %g%%)%s" % (
                         len(val_cases), plural(len(summary.get("cases", {})), "case"),
                         100.0 * n_val / written,
                         float(summary["val_pct"]),
                         ": " + ", ".join(val_cases) if 0 < len(val_cases) <= 8 else ""))
    if summary["mean_files"]:
        lines.append("  mean  %s" % ", ".join(summary["mean_files"]))
    if summary.get("preview"):
        lines.append("  preview: check that the contours sit on the LV before training: %s"
                     % ", ".join(os.path.join(summary["out_dir"], p) for p in summary["preview"]))
    lines.append("  %d of %s written; summary.json lists every entry"
                 % (summary["written"], plural(summary["contours_found"], "contour")))
    skipped = summary["skipped"]
    if skipped:
        lines.append("  SKIPPED %d:" % len(skipped))
        lines.extend("    " + s["reason"] for s in skipped[:20])
        if len(skipped) > 20:
            lines.append("    ... and %d more (summary.json lists them all)" % (len(skipped) - 20))
    return "\n".join(lines)


# -- command line -------------------------------------------------------------

def add_arguments(parser):
    """Arguments of ``protonet data sunnybrook``."""
    import argparse
    parser.description = ("Convert the Sunnybrook LV Segmentation Challenge data (DICOM images\n"
                          "and expert inner contours) into a DIGITS segmentation dataset:\n"
                          "train_db/{features,labels} and val_db/{features,labels} LMDBs,\n"
                          "mean.binaryproto, summary.json and preview/ (contact sheets of\n"
                          "the images with their contours, counts per case). The split is by\n"
                          "case by default: a patient's slices all go to train or all to val.")
    parser.epilog = ("example:\n"
                     "  protonet data sunnybrook --images challenge_training \\\n"
                     "      --contours TrainingDataContours --out sunnybrook_db --channels rgb\n\n"
                     "exit status: 0 all contours written, 1 some skipped (each is listed),\n"
                     "2 nothing could be done")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--images", required=True, metavar="DIR",
                        help="folder holding the case folders (SC-HF-I-1/IM-SSSS-NNNN.dcm), "
                             "searched recursively")
    parser.add_argument("--contours", required=True, metavar="DIR",
                        help="folder holding <case>/contours-manual/IRCCI-expert/"
                             "IM-0001-NNNN-icontour-manual.txt, searched recursively")
    parser.add_argument("--out", required=True, metavar="DIR", help="dataset folder to write")
    parser.add_argument("--channels", choices=("gray", "rgb"), default="gray",
                        help="features as 1 gray channel or the gray copied to 3 (default gray)")
    parser.add_argument("--val-pct", type=argtypes.percent, default=10, metavar="PCT",
                        help="percent of the examples for validation (default 10)")
    parser.add_argument("--val-by", choices=("case", "image"), default="case",
                        help="split by case (default: every slice of a patient on one side, "
                             "val cases chosen so val is close to PCT%% of the images) or by "
                             "image (DIGITS' split, exactly: slices of one patient on both "
                             "sides, an optimistic val Dice)")
    parser.add_argument("--seed", type=argtypes.seed, default=0, help="shuffle seed (default 0)")
    parser.add_argument("--size", type=argtypes.positive_int, default=256,
                        help="expected image size; other sizes are skipped (default 256)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace train_db/val_db already in --out")
    parser.add_argument("--no-preview", action="store_true",
                        help="do not write preview/ (contact sheets of the images with their "
                             "contours, counts per case)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    return parser


def run(args):
    """Run ``protonet data sunnybrook``; returns the exit status (1 if anything was skipped)."""
    try:
        summary = convert(args.images, args.contours, args.out, channels=args.channels,
                          val_pct=args.val_pct, seed=args.seed, size=args.size,
                          progress=not args.quiet, overwrite=args.overwrite,
                          val_by=args.val_by, preview=not args.no_preview)
    except SunnybrookError as exc:
        print("protonet data sunnybrook: error: %s" % exc, file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0 if summary["ok"] else 1
