"""A synthetic Sunnybrook: real DICOM files and expert-style contours in the challenge's layout.

``protonet data synth-sunnybrook --out DIR`` writes::

    DIR/images/challenge_training/SC-HF-I-1/IM-0004-0001.dcm ...
    DIR/contours/TrainingDataContours/SC-HF-I-01/contours-manual/IRCCI-expert/
        IM-0001-0001-icontour-manual.txt ...

so ``protonet data sunnybrook --images DIR/images --contours DIR/contours``
runs on it unchanged. Case folders use the challenge's names; cases listed
in :data:`~protonet.data.sunnybrook.SAX_SERIES` get that series number,
the others a number of their own (found by the image-number search), and
every case also holds a localizer series (``IM-0001-0001.dcm``), as real exams
do, which the image-number search must pass over.

Each image is a 256 x 256, 16-bit (12 bits stored) MR short-axis-like slice:
a bright LV blood pool (an irregular ellipse: random centre, size, rotation,
with papillary muscles) whose boundary is the contour, a darker myocardial
ring, a bright right-ventricle crescent (not labelled), a bright descending
aorta (not labelled), dark lungs, liver, spine, chest wall with bright fat,
a smooth bias field and Rician noise; intensity scales vary by case. Slices
run base to apex at end-diastole and end-systole, so the LV shrinks along a
case (about 0.7-3 % of the image, like the real data). Contour files hold
the boundary as ``x y`` floats, about one point per pixel of perimeter.
Predicting all background gives LV Dice 0; FCN-AlexNet learns it in minutes.
"""
import math
import os
import sys

import numpy as np

from .. import argtypes
from ..log import plural
from .sunnybrook import SAX_SERIES

_CATEGORIES = ("SC-HF-I", "SC-HF-NI", "SC-HYP", "SC-N")
_PHASES = ((1, 0.0), (8, 300.0))  # (image number offset, trigger time ms): ED, ES
_SIZE = 256
_SPACING = 1.367  # mm per pixel, as the challenge's 256 x 256 images of a ~350 mm field
_LOCALIZER = "0001"


def case_names(n):
    """The first ``n`` synthetic case names, cycling the challenge's four groups."""
    return ["%s-%d" % (_CATEGORIES[i % 4], i // 4 + 1) for i in range(n)]


def _contour_name(case):
    # the contour folders write the case number with two digits
    head, num = case.rsplit("-", 1)
    return "%s-%02d" % (head, int(num))


# -- drawing ------------------------------------------------------------------

class _Canvas:
    """Pixel-centre coordinates and soft (anti-aliased) shape masks."""

    def __init__(self, size):
        self.y, self.x = np.mgrid[0:size, 0:size].astype(np.float32)

    def ellipse(self, cx, cy, a, b, angle):
        c, s = math.cos(angle), math.sin(angle)
        u = (self.x - cx) * c + (self.y - cy) * s
        v = -(self.x - cx) * s + (self.y - cy) * c
        rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        # (1 - rho) * min(a, b) approximates the signed distance to the edge in pixels
        return np.clip((1.0 - rho) * min(a, b) + 0.5, 0.0, 1.0)

    def polar(self, cx, cy):
        dx, dy = self.x - cx, self.y - cy
        return np.hypot(dx, dy), np.arctan2(dy, dx)


class _Shape:
    """A star-shaped closed curve r(theta): an ellipse with a few smooth harmonics."""

    def __init__(self, a, b, angle, harmonics):
        self.a, self.b, self.angle, self.harmonics = a, b, angle, harmonics

    def radius(self, theta):
        t = theta - self.angle
        r = self.a * self.b / np.sqrt((self.b * np.cos(t)) ** 2 + (self.a * np.sin(t)) ** 2)
        wobble = 1.0
        for k, amp, phase in self.harmonics:
            wobble = wobble + amp * np.cos(k * theta + phase)
        return r * wobble

    @staticmethod
    def mask(r, rad, grow=0.0):
        """Soft inside-mask from the pixel radius ``r`` and the curve's radius ``rad`` there."""
        return np.clip(rad + grow - r + 0.5, 0.0, 1.0)

    def points(self, cx, cy):
        fine = np.linspace(0.0, 2 * np.pi, 720, endpoint=False)
        rr = self.radius(fine)
        perimeter = np.sum(np.hypot(np.diff(rr * np.cos(fine), append=rr[0] * np.cos(fine[0])),
                                    np.diff(rr * np.sin(fine), append=rr[0] * np.sin(fine[0]))))
        theta = np.linspace(0.0, 2 * np.pi, max(int(round(perimeter)), 12), endpoint=False)
        r = self.radius(theta)
        return np.stack([cx + r * np.cos(theta), cy + r * np.sin(theta)], axis=1)


def _bias_field(canvas, rng, strength):
    field = np.zeros_like(canvas.x)
    for _ in range(3):
        k = rng.uniform(2 * np.pi / 400, 2 * np.pi / 160)
        d = rng.uniform(0, 2 * np.pi)
        field += np.cos(k * (canvas.x * math.cos(d) + canvas.y * math.sin(d)) + rng.uniform(0, 6.3))
    return np.exp(strength * field / 3.0).astype(np.float32)


def _new_case(rng):
    """Anatomy and scanner settings shared by the slices of one case."""
    return {
        "gain": rng.uniform(0.6, 1.6),                   # scanner/coil intensity scale
        "blood": rng.uniform(380, 520),                  # blood pool before gain
        "noise": rng.uniform(0.025, 0.06),               # Rician sigma / blood
        "body": (128 + rng.uniform(-6, 6), 132 + rng.uniform(-6, 6),
                 rng.uniform(104, 120), rng.uniform(78, 94), rng.uniform(-0.12, 0.12)),
        "lv": (128 + rng.uniform(-22, 22), 118 + rng.uniform(-18, 18)),
        "r_base": rng.uniform(19.0, 24.5),               # LV radius at the base, end-diastole
        "ecc": rng.uniform(1.0, 1.3),
        "angle": rng.uniform(0, np.pi),
        "wall": rng.uniform(6.0, 9.5),                   # myocardium thickness
        "rv_dir": np.deg2rad(rng.uniform(160, 230)),     # RV lies to the image left
        "bias": rng.uniform(0.15, 0.35),
        "bias_seed": int(rng.integers(1 << 31)),
        "harmonics": [(k, rng.uniform(0.01, 0.05), rng.uniform(0, 2 * np.pi)) for k in (3, 4, 5)],
    }


def _background(canvas, rng, case):
    """The anatomy around the heart, shared by a case's slices: (image, inside-the-body mask)."""
    blood = case["blood"]
    img = np.zeros_like(canvas.x)
    bx, by, ba, bb, bang = case["body"]
    body = canvas.ellipse(bx, by, ba, bb, bang)
    inner = canvas.ellipse(bx, by, ba - 7, bb - 7, bang)
    img += body * 0.30 * blood                                   # muscle / soft tissue
    img += (body - inner) * 0.55 * blood                         # subcutaneous fat
    muscle = canvas.ellipse(bx, by - bb * 0.55, ba * 0.6, bb * 0.25, bang)
    img += muscle * inner * 0.05 * blood                         # chest wall muscle
    for side in (-1, 1):                                         # lungs: dark, beside the heart
        lung = canvas.ellipse(case["lv"][0] + side * 52 + rng.uniform(-3, 3),
                              case["lv"][1] - 4 + rng.uniform(-3, 3),
                              rng.uniform(30, 38), rng.uniform(44, 54), side * 0.25)
        img = img * (1 - lung * inner) + lung * inner * 0.06 * blood
    liver = canvas.ellipse(bx - 45, by + 40, 55, 38, 0.35) * inner
    img = img * (1 - liver) + liver * 0.36 * blood
    spine = canvas.ellipse(bx + 4, by + bb - 24, 13, 11, 0.0) * inner
    img = img * (1 - spine) + spine * 0.16 * blood
    return img, inner


def _render(canvas, rng, case, level, systole):
    """One slice: (uint16 image, contour points (N, 2) as x, y)."""
    blood = case["blood"]
    f = (1.0 - 0.28 * level) * (0.84 if systole else 1.0)
    r_lv = case["r_base"] * f
    cx = case["lv"][0] + rng.uniform(-2.5, 2.5) + 4 * level
    cy = case["lv"][1] + rng.uniform(-2.5, 2.5) + 3 * level
    harm = [(k, a * rng.uniform(0.7, 1.3), p + rng.uniform(-0.3, 0.3)) for k, a, p in
            case["harmonics"]]
    lv = _Shape(r_lv * case["ecc"] ** 0.5, r_lv / case["ecc"] ** 0.5,
                case["angle"] + rng.uniform(-0.15, 0.15), harm)
    wall = case["wall"] * (1.25 if systole else 1.0) * (1.0 - 0.15 * level)

    img = case["background"].copy()
    inner = case["inside"]
    bx, by, ba, bb, bang = case["body"]
    aorta = canvas.ellipse(bx + 22 + rng.uniform(-2, 2), by + bb - 40, 8.0, 7.5, 0.0) * inner
    img = img * (1 - aorta) + aorta * 0.92 * blood

    r, theta = canvas.polar(cx, cy)
    rad = lv.radius(theta)
    epi = lv.mask(r, rad, grow=wall)
    # right ventricle: a crescent hugging the septum, bright but not labelled
    d = case["rv_dir"] + rng.uniform(-0.1, 0.1)
    rv_dist = r_lv + wall * 0.6
    rv = canvas.ellipse(cx + rv_dist * math.cos(d), cy + rv_dist * math.sin(d),
                        r_lv * 1.65, r_lv * 1.05, d + np.pi / 2)
    rv_wall = np.clip(rv - lv.mask(r, rad, grow=wall + 2.5), 0, 1)
    rv_blood = np.clip(canvas.ellipse(cx + rv_dist * math.cos(d), cy + rv_dist * math.sin(d),
                                      r_lv * 1.65 - 2.5, r_lv * 1.05 - 2.5, d + np.pi / 2)
                       - lv.mask(r, rad, grow=wall + 3.5), 0, 1)
    img = img * (1 - rv_wall) + rv_wall * 0.22 * blood
    img = img * (1 - rv_blood) + rv_blood * rng.uniform(0.8, 0.95) * blood
    # myocardium, then the LV blood pool inside it
    img = img * (1 - epi) + epi * 0.2 * blood
    pool = lv.mask(r, rad)
    img = img * (1 - pool) + pool * blood * (1 + 0.08 * rng.standard_normal())
    # papillary muscles: small dark blobs just inside the endocardium (inside the contour)
    for _ in range(int(rng.integers(0, 3))):
        t = rng.uniform(0, 2 * np.pi)
        at = float(lv.radius(np.array([t]))[0]) - 4.0
        pm = canvas.ellipse(cx + at * math.cos(t), cy + at * math.sin(t),
                            rng.uniform(1.5, 3.0), rng.uniform(1.2, 2.2), t) * pool
        img = img * (1 - pm) + pm * 0.3 * blood

    from scipy.ndimage import gaussian_filter
    # tissue texture and blood-flow inhomogeneity: smooth noise, a few pixels across
    texture = gaussian_filter(rng.standard_normal(img.shape).astype(np.float32), 2.0)
    img *= 1.0 + 0.35 * texture  # the filtered noise has a std of about 0.14
    bias = _bias_field(canvas, np.random.default_rng(case["bias_seed"]), case["bias"])
    img *= bias * case["gain"]
    img = gaussian_filter(img, 0.7)
    sigma = case["noise"] * blood * case["gain"]
    img = np.sqrt((img + sigma * rng.standard_normal(img.shape)) ** 2
                  + (sigma * rng.standard_normal(img.shape)) ** 2)
    pixels = np.clip(np.rint(img), 0, 4095).astype(np.uint16)
    return pixels, lv.points(cx, cy)


def _localizer(canvas, rng, case):
    """A plain scout image for the localizer series (not used by the conversion)."""
    bx, by, ba, bb, bang = case["body"]
    img = canvas.ellipse(bx, by, ba * 0.8, bb * 1.3, bang + 0.4) * 0.4 * case["blood"]
    img += canvas.ellipse(bx - 10, by - 10, 30, 22, 0.7) * 0.6 * case["blood"]
    img = np.abs(img + 15 * rng.standard_normal(img.shape))
    return np.clip(np.rint(img), 0, 4095).astype(np.uint16)


# -- DICOM ----------------------------------------------------------------------

def write_dicom(path, pixels, case, series, image_no, seed, trigger_time=0.0, slice_location=0.0,
                description="CINE SAX"):
    """Write a 16-bit unsigned MR image (``pixels`` uint16 H x W) as a DICOM Part 10 file."""
    from pydicom.dataset import FileMetaDataset, Dataset
    from pydicom.uid import (ExplicitVRLittleEndian, MRImageStorage, PYDICOM_IMPLEMENTATION_UID,
                             generate_uid)

    def uid(*parts):  # deterministic for a seed, unique per object
        return generate_uid(entropy_srcs=["protonet-synth", str(seed)] + [str(p) for p in parts])

    rows, cols = pixels.shape
    sop = uid(case, series, image_no)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyDate = "20090101"
    ds.Modality = "MR"
    ds.Manufacturer = "protonet synthetic"
    ds.StudyDescription = "synthetic cardiac MR"
    ds.SeriesDescription = description
    ds.PatientName = case
    ds.PatientID = case
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = "SS"
    ds.MRAcquisitionType = "2D"
    ds.SliceThickness = "8"
    ds.RepetitionTime = "3.4"
    ds.EchoTime = "1.7"
    ds.MagneticFieldStrength = "1.5"
    ds.FlipAngle = "60"
    ds.TriggerTime = "%g" % trigger_time
    ds.StudyInstanceUID = uid(case)
    ds.SeriesInstanceUID = uid(case, series)
    ds.StudyID = "1"
    ds.SeriesNumber = int(series)
    ds.InstanceNumber = int(image_no)
    ds.ImagePositionPatient = ["-175", "-175", "%g" % slice_location]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = uid(case, "frame")
    ds.SliceLocation = "%g" % slice_location
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = ["%g" % _SPACING, "%g" % _SPACING]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    top = max(int(np.percentile(pixels, 99)), 1)
    ds.WindowCenter = "%d" % (top // 2)
    ds.WindowWidth = "%d" % top
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    try:
        ds.save_as(path, enforce_file_format=True)
    except TypeError:  # pydicom < 3 spells it differently and wants the encoding on the dataset
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)


def _format_contour(points):
    return "".join("%.2f %.2f\n" % (x, y) for x, y in points)


def synth_sunnybrook(out_dir, cases=20, seed=0, images_per_case=10, overwrite=False,
                     progress=False):
    """Write a synthetic Sunnybrook dataset under ``out_dir``; returns a summary dict.

    ``cases`` case folders with ``images_per_case`` contoured short-axis
    images each (end-diastole and end-systole of successive slices), plus a
    one-image localizer series per case. Deterministic for a ``seed``.
    Returns {"images": dir, "contours": dir, "cases": [names],
    "images_written": n, "lv_fraction": mean labelled fraction}.
    """
    cases, images_per_case = int(cases), int(images_per_case)
    if cases < 1 or images_per_case < 1:
        raise ValueError("cases and images_per_case must be at least 1")
    images_root = os.path.join(out_dir, "images")
    contours_root = os.path.join(out_dir, "contours")
    for root in (images_root, contours_root):
        if os.path.exists(root) and os.listdir(root) and not overwrite:
            raise FileExistsError("%s already exists and is not empty; pass --overwrite "
                                  "(overwrite=True) to write over it" % root)
    if overwrite:
        import shutil
        for root in (images_root, contours_root):
            if os.path.exists(root):
                shutil.rmtree(root)
    from .sunnybrook import contour_label

    rng = np.random.default_rng(seed)
    canvas = _Canvas(_SIZE)
    names = case_names(cases)
    slices = (images_per_case + 1) // 2
    written, lv = 0, 0.0
    show = progress and sys.stderr.isatty()
    for i, name in enumerate(names):
        case = _new_case(rng)
        case["background"], case["inside"] = _background(canvas, rng, case)
        series = SAX_SERIES.get(name, "%04d" % (1100 + 17 * i))
        img_dir = os.path.join(images_root, "challenge_training", name)
        ctr_dir = os.path.join(contours_root, "TrainingDataContours", _contour_name(name),
                               "contours-manual", "IRCCI-expert")
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ctr_dir, exist_ok=True)
        # a one-image localizer that shares image number 1 with the SAX series
        write_dicom(os.path.join(img_dir, "IM-%s-0001.dcm" % _LOCALIZER),
                    _localizer(canvas, rng, case), name, _LOCALIZER, 1, seed,
                    description="localizer")
        for n in range(images_per_case):
            s, phase = divmod(n, 2)
            level = s / max(slices - 1, 1)
            offset, trigger = _PHASES[phase]
            image_no = s * 20 + offset
            pixels, points = _render(canvas, rng, case, level, systole=phase == 1)
            write_dicom(os.path.join(img_dir, "IM-%s-%04d.dcm" % (series, image_no)), pixels,
                        name, series, image_no, seed, trigger_time=trigger,
                        slice_location=float(-10 * s))
            with open(os.path.join(ctr_dir, "IM-0001-%04d-icontour-manual.txt" % image_no),
                      "w") as f:
                f.write(_format_contour(points))
            lv += float(contour_label(points, pixels.shape).mean())
            written += 1
        if show:
            sys.stderr.write("\rsynth-sunnybrook case %d/%d" % (i + 1, cases))
            sys.stderr.flush()
    if show:
        sys.stderr.write("\n")
    return {"images": images_root, "contours": contours_root, "cases": names,
            "images_written": written, "lv_fraction": lv / max(written, 1)}


# -- command line -------------------------------------------------------------

def add_arguments(parser):
    """Arguments of ``protonet data synth-sunnybrook``."""
    import argparse
    parser.description = ("Write a synthetic Sunnybrook LV segmentation dataset (real 16-bit MR\n"
                          "DICOM files and expert-style inner contours) in the challenge's\n"
                          "on-disk layout: OUT/images and OUT/contours.")
    parser.epilog = ("example:\n"
                     "  protonet data synth-sunnybrook --out synth --cases 20\n"
                     "  protonet data sunnybrook --images synth/images "
                     "--contours synth/contours \\\n      --out synth/dataset")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    parser.add_argument("--cases", type=argtypes.positive_int, default=20, metavar="N",
                        help="number of cases (default 20)")
    parser.add_argument("--images-per-case", type=argtypes.positive_int, default=10, metavar="N",
                        help="contoured images per case (default 10)")
    parser.add_argument("--seed", type=argtypes.seed, default=0, help="random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT/images and OUT/contours if they exist")
    return parser


def run(args):
    """Run ``protonet data synth-sunnybrook``; returns the exit status."""
    try:
        s = synth_sunnybrook(args.out, cases=args.cases, seed=args.seed,
                             images_per_case=args.images_per_case, overwrite=args.overwrite,
                             progress=True)
    except (ValueError, FileExistsError) as exc:
        print("protonet data synth-sunnybrook: error: %s" % exc, file=sys.stderr)
        return 2
    print("wrote %s of %s (LV %.2f%% of pixels)\n  images:   %s\n  contours: %s\n"
          "next: protonet data sunnybrook --images %s --contours %s --out %s"
          % (plural(s["images_written"], "image"), plural(len(s["cases"]), "case"),
             100 * s["lv_fraction"], s["images"],
             s["contours"], s["images"], s["contours"], os.path.join(args.out, "dataset")))
    return 0
