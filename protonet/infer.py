"""``protonet infer``: run a segmentation net on images; write overlays, masks, Dice, a contact
sheet and a browsable report (index.html).

    protonet infer --model deploy.prototxt --weights snap.caffemodel IM-0001-0048.dcm --out pred
    protonet infer --model fcn_alexnet.prototxt --weights snap.caffemodel \\
        dataset/val_db/features --labels dataset/val_db/labels --out pred
    protonet infer --model fcn_alexnet.prototxt --weights snap.caffemodel \\
        Sunnybrook/challenge_validation/SC-HF-I-5 --contours Sunnybrook/contours --out pred

**Model.** A deploy prototxt (an ``Input`` layer; built in phase TEST with
stage ``deploy``), or a DIGITS train/val prototxt (data layers, no Input)
from which the deploy net is derived with DIGITS' rule
(:func:`protonet.digits.derive_deploy`: data layers dropped, TEST + stage
``deploy`` filtering, one Input ``data``). The derived net's input is
1 x C x H x W with H x W from the first input and C from the weights (the
input channels of the first Convolution) or else the first input's; it is
written to ``OUT/deploy.prototxt``. The net reshapes to each input's size.

**Inputs**, each fed as one 1 x C x H x W float32 batch, the way the
training data reached the net:

* DICOM (``.dcm``, or any file with the ``DICM`` marker): the stored 16-bit
  values as float32, no rescale or windowing (as the Sunnybrook conversion).
* PNG/JPEG (Pillow): 8-bit gray is one channel, colour is BGR (Caffe reads
  images with OpenCV); 16-bit PNGs keep their raw values. Alpha is dropped.
* a folder: its ``.dcm``/``.png``/``.jpg``/``.jpeg`` files, sorted by name;
  a folder holding ``data.mdb`` is an LMDB; a DIGITS split folder
  (``val_db`` with ``features``/``labels``) gives both.
* an LMDB of Datum records (``data`` or ``float_data``), in key order; with
  ``--labels`` the label LMDB's record of the same key is the true mask.

**Names.** Outputs are named by case and image, not by database key: a
DICOM ``IM-SSSS-NNNN.dcm`` is ``<case folder>_IM-SSSS-NNNN`` (case numbers
without leading zeros, as the Sunnybrook converter spells them); a record of
an LMDB of a Sunnybrook dataset (``protonet data sunnybrook`` or the
tutorial: its ``summary.json`` beside or above the LMDB lists split, key,
case and DICOM of each record) is ``<case>_IM-SSSS-NNNN``; other files are
their stem, other records their key. Slice is the summary's "slice" where it
has one, else the image number NNNN.

**Truth.** ``--labels`` (an LMDB's labels, by key) or ``--contours DIR``:
the Sunnybrook expert contours (``<case>/contours-manual/IRCCI-expert/
IM-0001-NNNN-icontour-manual.txt``, read and filled as the dataset
converter does) for DICOM inputs named ``IM-SSSS-NNNN.dcm`` in their case
folder; a contour goes with the image of the case's SAX series (the one the
converter would pick), never a localizer that shares the image number.

**Areas** in mm² use the DICOM's PixelSpacing (the input's, or the one an
LMDB record came from, when its size matches); unknown otherwise.

Channels are matched to the net's: gray is copied to 3 channels when the
net wants 3, colour is averaged to gray when it wants 1.

**Prediction.** The class is the argmax over axis 1 of the output blob
(default: the last net output in layer order, e.g. ``score``/``prob``; a
1-channel output is thresholded at 0.5); class > 0 is the mask (LV).
A label's nonzero pixels are its mask.

**Outputs** in ``OUT``: ``index.html`` (:mod:`protonet.report`: a
sortable table, a viewer with prediction/truth toggles, opacity and zoom,
a legend and the contact sheet; self-contained up to ``--embed-mb``, beyond
it with its pictures in ``OUT/report/``), ``<name>_overlay.png`` (the image
windowed 1-99% to gray, the predicted mask tinted red, its contour red, the
true contour green), ``<name>_mask.png`` (0/255, the input's size),
``summary.json``, ``summary.csv`` (per image: case, image, slice, pixels
and mm² predicted, pixels labelled, Dice; a last row ``MEAN``),
``contact_sheet.png``. An input that cannot be read or run is reported,
named and skipped; the exit status is then 1 (2 when nothing could be done).
"""
import argparse
import csv
import json
import os
import re
import sys

import numpy as np

from . import argtypes, backend, viz
from .log import quiet_net_setup

EXAMPLE = """example:
  protonet infer --model deploy.prototxt --weights snap_iter_1000.caffemodel \\
      IM-0001-0048.dcm scans/ --out pred
  protonet infer --model examples/sunnybrook/fcn_alexnet.prototxt \\
      --weights snap_iter_1000.caffemodel dataset/val_db/features \\
      --labels dataset/val_db/labels --out pred
  protonet infer --model fcn_alexnet.prototxt --weights snap.caffemodel dataset/val_db --out pred
  protonet infer --model fcn_alexnet.prototxt --weights snap.caffemodel \\
      Sunnybrook/challenge_validation/SC-HF-I-5 --contours Sunnybrook/contours --out pred

A DIGITS split folder (val_db) reads its features with its labels.
--contours scores DICOMs named IM-SSSS-NNNN.dcm against the Sunnybrook expert contours.

A train/val prototxt (DIGITS style, data layers) gets a deploy net derived
from it (written to OUT/deploy.prototxt). Writes OUT/index.html (open it in
a browser), OUT/<name>_overlay.png, OUT/<name>_mask.png, OUT/summary.json,
OUT/summary.csv and OUT/contact_sheet.png; <name> is <case>_IM-SSSS-NNNN
where the case is known.

exit status: 0 every input done, 1 some skipped (each is named), 2 nothing done"""

DATA_LAYER_TYPES = ("Data", "ImageData", "HDF5Data", "MemoryData")  # what derive_deploy drops
FILE_KINDS = {".dcm": "dicom", ".dicom": "dicom", ".png": "image", ".jpg": "image",
              ".jpeg": "image"}
CSV_FIELDS = ("name", "case", "image", "slice", "file", "key", "height", "width", "pred_lv_pixels",
              "pred_lv_mm2", "true_lv_pixels", "dice")


class InferError(ValueError):
    """An input, model or option that inference cannot use; the message names it."""


# ------------------------------------------------------------------ inputs
class Item:
    """One input: ``name`` (for output files), ``file`` (path or LMDB folder), ``key``
    (LMDB key or None), ``load()`` -> C x H x W float32, ``load_label(shape)`` -> H x W bool
    or None; what is known of it: ``case``, ``image`` (``IM-SSSS-NNNN``), ``slice``, ``dicom``
    (a DICOM file whose pixel spacing applies), ``spacing`` ((row, col) mm, if given),
    ``truth`` (where the true mask comes from)."""

    def __init__(self, name, file, key=None, load=None, load_label=None, case=None, image=None,
                 slice=None, dicom=None, spacing=None, truth=None):
        self.name, self.file, self.key = name, file, key
        self.load = load
        self.load_label = load_label or (lambda shape: None)
        self.case, self.image, self.slice, self.dicom = case, image, slice, dicom
        self.spacing, self.truth = spacing, truth

    @property
    def where(self):
        return "%s (key %s)" % (self.file, self.key) if self.key is not None else self.file


def _sniff(path):
    """'dicom' / 'image' from a file's first bytes, else from its extension, else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as exc:
        raise InferError("%s: cannot open (%s)" % (path, exc.strerror or exc)) from None
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff"):
        return "image"
    return FILE_KINDS.get(os.path.splitext(path)[1].lower())


def read_dicom_file(path):
    """A DICOM image as a 1 x H x W float32 array of its stored values."""
    from .data.sunnybrook import DicomError, read_dicom
    try:
        arr = read_dicom(path)
    except DicomError as exc:
        raise InferError(str(exc)) from None
    except Exception as exc:  # pydicom raises many types for unreadable files
        raise InferError("%s: cannot read as a DICOM image (%s: %s)"
                         % (path, type(exc).__name__, exc)) from None
    return arr[None]


def read_image(path):
    """A PNG/JPEG as C x H x W float32: gray 1 channel, colour 3 in BGR order (alpha dropped);
    8-bit values 0..255, 16-bit and float images their raw values."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode.startswith("I") or mode == "F":
                return np.asarray(img, dtype=np.float32)[None]
            if mode in ("1", "L", "LA"):
                return np.asarray(img.convert("L"), dtype=np.float32)[None]
            rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
    except OSError as exc:
        raise InferError("%s: cannot read as a PNG/JPEG image (%s)" % (path, exc)) from None
    return np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1))


def read_file(path):
    """A DICOM, PNG or JPEG file as a C x H x W float32 array; errors name the file."""
    kind = _sniff(path)
    if kind == "dicom":
        return read_dicom_file(path)
    if kind == "image":
        return read_image(path)
    raise InferError("%s: not a DICOM, PNG or JPEG file (neither its content nor its extension "
                     "says so)" % path)


def _is_lmdb(path):
    return os.path.isfile(os.path.join(path, "data.mdb"))


def _int_or_none(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _entry_names(entry):
    """(case, image, slice, dicom) of a Sunnybrook ``summary.json`` entry, read defensively:
    image is the DICOM's stem (``IM-SSSS-NNNN``) or the entry's "image"; slice the entry's
    "slice", else the image number NNNN."""
    from .data.sunnybrook import _DICOM_RE
    case = entry.get("case")
    case = str(case) if case not in (None, "") else None
    dicom = entry.get("dicom") if isinstance(entry.get("dicom"), str) else None
    base = os.path.basename(dicom) if dicom else ""
    m = _DICOM_RE.match(base)
    image = os.path.splitext(base)[0] if base else None
    if not image and entry.get("image") not in (None, ""):
        image = str(entry["image"])
    slice_ = _int_or_none(entry.get("slice"))
    if slice_ is None:
        slice_ = int(m.group(2)) if m else _int_or_none(entry.get("image"))
    return case, image, slice_, dicom


def dataset_entries(features):
    """{"path": summary.json, "entries": {key: entry}} for an LMDB of a protonet/DIGITS
    Sunnybrook dataset, else {}.

    ``summary.json`` (written by ``protonet data sunnybrook``) is looked for in
    the LMDB folder, beside it and above it; its "entries" list split, key,
    case, contour and DICOM of each example. Keys restart in each split, so
    the LMDB's split is the one whose "features" (or "labels") path is this
    folder, else the ``<split>_db`` folder it sits in; without a split the
    keys are used only when unique over all entries.
    """
    lmdb = os.path.realpath(features)
    for folder in (lmdb, os.path.dirname(lmdb), os.path.dirname(os.path.dirname(lmdb))):
        path = os.path.join(folder, "summary.json")
        if not os.path.isfile(path):
            continue
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        entries = data.get("entries") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            continue     # e.g. the tutorial's own summary.json, further up
        entries = [e for e in entries if isinstance(e, dict) and e.get("key") is not None]
        split = None
        splits = data.get("splits")
        for name, info in (splits.items() if isinstance(splits, dict) else ()):
            if not isinstance(info, dict):
                continue
            for role in ("features", "labels"):
                rel = info.get(role)
                if isinstance(rel, str) and os.path.realpath(os.path.join(folder, rel)) == lmdb:
                    split = name
        if split is None:
            parts = os.path.relpath(lmdb, folder).split(os.sep)
            found = [p[:-3] for p in parts if p.endswith("_db")]
            split = found[-1] if found else None
        if split is not None:
            chosen = [e for e in entries if str(e.get("split")) == split]
        else:
            chosen = entries
        keys = [str(e["key"]) for e in chosen]
        if len(set(keys)) != len(keys):
            return {}     # which split is meant is unknown: keys name the records
        return {"path": path, "entries": dict(zip(keys, chosen))}
    return {}


def _lmdb_items(features, labels):
    """Items for the records of the ``features`` LMDB, labels by key from ``labels``; named
    by case and image when the dataset's summary.json says (:func:`dataset_entries`)."""
    from .data.datum import datum_to_array
    from .data.db import LMDBReader
    reader = LMDBReader(features)
    label_reader = LMDBReader(labels) if labels else None
    found = dataset_entries(features)
    entries = found.get("entries", {})
    if entries and len(entries) != len(reader):
        # a summary of another conversion would name records wrongly: keys are safer
        print("protonet infer: warning: %s lists %d records of %s, which holds %d; records are "
              "named by key" % (found["path"], len(entries), features, len(reader)),
              file=sys.stderr)
        entries = {}
    records = reader.items()
    try:
        if label_reader is not None and len(label_reader) != len(reader):
            print("protonet infer: warning: %s holds %d records but %s holds %d; records are "
                  "matched by key" % (features, len(reader), labels, len(label_reader)),
                  file=sys.stderr)
        for raw_key, value in records:
            key = raw_key.decode("ascii", "replace")

            def load(value=value, key=key):
                return np.asarray(datum_to_array(value, what="%s record %s" % (features, key)),
                                  dtype=np.float32)

            def load_label(shape, raw_key=raw_key, key=key):
                record = label_reader.get(raw_key)
                if record is None:
                    raise InferError("%s has no record with key %s (the features' key)"
                                     % (labels, key))
                arr = datum_to_array(record, what="%s record %s" % (labels, key))
                if arr.shape[0] != 1:
                    raise InferError("%s record %s: a label has 1 channel, this one has %d"
                                     % (labels, key, arr.shape[0]))
                return arr[0] != 0

            case = image = slice_ = dicom = spacing = None
            entry = entries.get(key)
            if entry is not None:
                case, image, slice_, dicom = _entry_names(entry)
                given = entry.get("pixel_spacing")
                if isinstance(given, (list, tuple)) and len(given) == 2:
                    spacing = given
            name = "%s_%s" % (case, image) if case and image else key
            yield Item(name, features, key, load, load_label if label_reader else None,
                       case=case, image=image, slice=slice_, dicom=dicom, spacing=spacing,
                       truth="%s record %s" % (labels, key) if label_reader else None)
    finally:
        records.close()   # its read transaction ends before the environment closes
        reader.close()
        if label_reader is not None:
            label_reader.close()


class ContourIndex:
    """The expert contours under ``--contours`` (the Sunnybrook layout, read with
    :mod:`protonet.data.sunnybrook`), matched to DICOM inputs named ``IM-SSSS-NNNN.dcm`` in
    their case folder. A contour names the case and image number, not the series, so it goes
    with the DICOM only when that is the image the dataset converter picks
    (:func:`~protonet.data.sunnybrook.find_dicom`: the case's SAX series), never a
    localizer sharing the number."""

    def __init__(self, contours_dir):
        from .data.sunnybrook import find_contours
        if not os.path.isdir(contours_dir):
            raise InferError("--contours %s: no such folder" % contours_dir)
        found, warnings = find_contours(contours_dir)
        for w in warnings:
            print("protonet infer: warning: %s" % w, file=sys.stderr)
        if not found:
            raise InferError("--contours %s: no contour files IM-0001-NNNN-icontour-manual.txt "
                             "under it (expected <case>/contours-manual/IRCCI-expert/...)"
                             % contours_dir)
        self.contours = {(case, image_no): path for case, image_no, path in found}
        self.folders = {}
        self.matched = 0

    def _series(self, folder):
        """{SSSS: {NNNN: path}} of a case folder's DICOMs (as find_image_cases lists them)."""
        from .data.sunnybrook import _DICOM_RE
        if folder not in self.folders:
            series = {}
            for name in os.listdir(folder):
                m = _DICOM_RE.match(name)
                if m:
                    series.setdefault(m.group(1), {})[int(m.group(2))] = os.path.join(folder, name)
            self.folders[folder] = series
        return self.folders[folder]

    def contour_for(self, path, case, image_no):
        """The contour file of DICOM ``path`` (image ``image_no`` of ``case``), or None."""
        from .data.sunnybrook import find_dicom
        contour = self.contours.get((case, image_no))
        if contour is None:
            return None
        folder = os.path.dirname(os.path.abspath(path))
        chosen, _, _ = find_dicom({"dir": folder, "series": self._series(folder)}, case, image_no)
        if chosen is None or not os.path.samefile(chosen, path):
            return None
        self.matched += 1
        return contour


def _contour_loader(contour):
    def load_label(shape):
        from .data.sunnybrook import contour_label, read_contour
        return contour_label(read_contour(contour), shape) != 0
    return load_label


def _file_item(path, contours=None):
    """A file input; a DICOM named ``IM-SSSS-NNNN.dcm`` is named by its case folder and image
    number, and gets its expert contour from ``contours`` (a :class:`ContourIndex`)."""
    from .data.sunnybrook import _DICOM_RE, normalize_case
    base = os.path.basename(path)
    stem = os.path.splitext(base)[0]
    m = _DICOM_RE.match(base)
    folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
    if not (m and folder):
        return Item(stem, path, None, lambda: read_file(path))
    case = normalize_case(folder)
    image_no = int(m.group(2))
    contour = contours.contour_for(path, case, image_no) if contours is not None else None
    return Item("%s_%s" % (case, stem), path, None, lambda: read_file(path),
                _contour_loader(contour) if contour else None, case=case, image=stem,
                slice=image_no, dicom=path, truth=contour)


def plan_inputs(paths, labels=None):
    """[(kind, path, labels path)] for INPUT paths, checked before anything is read.

    ``kind`` is "file" or "lmdb"; folders expand to their files (sorted), an
    LMDB folder or a DIGITS split folder (``features``/``labels``) to one
    "lmdb" entry; ``labels`` (an LMDB) goes with the one LMDB input.
    """
    plan = []
    for path in paths:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise InferError("%s: no such file or folder" % path)
        if os.path.isdir(path):
            split_features = os.path.join(path, "features")
            if _is_lmdb(path):
                plan.append(("lmdb", path, None))
            elif _is_lmdb(split_features):
                split_labels = os.path.join(path, "labels")
                plan.append(("lmdb", split_features,
                             split_labels if _is_lmdb(split_labels) and not labels else None))
            else:
                files = sorted(f for f in os.listdir(path)
                               if os.path.splitext(f)[1].lower() in FILE_KINDS
                               and os.path.isfile(os.path.join(path, f)))
                if not files:
                    raise InferError("%s: a folder with no .dcm, .png or .jpg files, and not an "
                                     "LMDB (no data.mdb)" % path)
                plan.extend(("file", os.path.join(path, f), None) for f in files)
        else:
            plan.append(("file", path, None))
    if labels:
        if not os.path.isdir(labels) or not _is_lmdb(labels):
            raise InferError("--labels %s: not an LMDB folder (no data.mdb in it)" % labels)
        lmdbs = [i for i, p in enumerate(plan) if p[0] == "lmdb"]
        if len(lmdbs) != 1:
            raise InferError("--labels goes with exactly one LMDB input (the features), got %d"
                             % len(lmdbs))
        plan[lmdbs[0]] = ("lmdb", plan[lmdbs[0]][1], labels)
    from .data.db import LMDBReader
    for kind, path, label_path in plan:
        if kind != "lmdb":
            continue
        for db, what in ((path, "input"), (label_path, "--labels")):
            if db is None:
                continue
            with LMDBReader(db) as reader:        # a truncated or damaged one is named too
                if not len(reader):
                    raise InferError("%s %s: the LMDB is empty (0 records): nothing to %s"
                                     % (what, db, "segment" if what == "input" else "score"))
    return plan


def iter_inputs(plan, contours=None):
    """The :class:`Item` s of a :func:`plan_inputs` plan, in order, read lazily; DICOM files get
    their truth from ``contours`` (a :class:`ContourIndex`) when given."""
    for kind, path, label_path in plan:
        if kind == "lmdb":
            yield from _lmdb_items(path, label_path)
        else:
            yield _file_item(path, contours)


def dicom_spacing(path, shape):
    """(row, column) pixel spacing in mm of DICOM ``path`` when it holds an image of ``shape``
    (H, W); None when it is not a readable DICOM, says no spacing, or is another size."""
    if not path or not os.path.isfile(path):
        return None
    try:
        if _sniff(path) != "dicom":
            return None
        import pydicom
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        spacing = [float(v) for v in ds.PixelSpacing]
        if (int(ds.Rows), int(ds.Columns)) != tuple(shape) or len(spacing) != 2 \
                or not all(np.isfinite(spacing)) or min(spacing) <= 0:
            return None
    except Exception:   # a header without the tags, or one pydicom cannot parse: unknown
        return None
    return spacing


def match_channels(arr, channels, what):
    """C x H x W input with the net's ``channels``: gray copied to 3, colour averaged to 1."""
    if arr.shape[0] == 4 and channels in (1, 3):
        arr = arr[:3]                                   # BGRA: the alpha is not an input
    c = arr.shape[0]
    if c == channels:
        return arr
    if c == 1 and channels == 3:
        return np.repeat(arr, 3, axis=0)
    if c == 3 and channels == 1:
        return arr.mean(axis=0, keepdims=True, dtype=np.float32)
    raise InferError("%s has %d channel(s) but the net's input takes %d" % (what, c, channels))


# ------------------------------------------------------------------ the net
def _first_conv_channels(deploy, weights):
    """Input channels of the deploy net's first weighted layer, if the weights say (Convolution)."""
    from .io import blob_shape
    stored = {lp.name: lp for lp in weights.layer if len(lp.blobs)}
    for lp in deploy.layer:
        if lp.name in stored:
            if lp.type == "Convolution":
                shape = blob_shape(stored[lp.name].blobs[0])
                if len(shape) == 4:
                    return int(shape[1]) * max(1, lp.convolution_param.group)
            return None
    return None


def load_net(model, weights, first_input, out_dir):
    """(net, input blob, deploy path or None) for ``model`` with ``weights``.

    ``first_input`` (C x H x W) sizes a deploy net derived from a train/val
    prototxt, which is written to ``out_dir/deploy.prototxt``.
    """
    from . import python_layer
    from .digits import derive_deploy
    from .io import read_net, read_net_binary, write_text
    from .layer import TEST
    from .net import Net

    param = read_net(model)
    weights_param = read_net_binary(weights)
    types = {lp.type for lp in param.layer}
    deploy_path = None
    if "Input" in types:
        net = Net(model, phase=TEST, stages=["deploy"])
    elif types & set(DATA_LAYER_TYPES):
        derived = derive_deploy(param, (1,) + tuple(first_input.shape))
        channels = _first_conv_channels(derived, weights_param)
        if channels:
            derived.layer[0].input_param.shape[0].dim[1] = channels
        deploy_path = os.path.join(out_dir, "deploy.prototxt")
        write_text(deploy_path, derived)
        # Python layers of the derived net are looked up beside the original prototxt.
        python_layer.add_search_path(os.path.dirname(os.path.abspath(model)))
        net = Net(deploy_path, phase=TEST)
    else:
        raise InferError("%s: neither a deploy net (an Input layer) nor a train/val net (data "
                         "layers) to derive one from" % model)
    if len(net.inputs) != 1:
        raise InferError("%s: the net has %d inputs (%s); infer feeds exactly one"
                         % (model, len(net.inputs), ", ".join(net.inputs) or "none"))
    blob = net.inputs[0]
    if len(net.blobs[blob].shape) != 4:
        raise InferError("%s: input '%s' has shape %s; infer feeds N x C x H x W images"
                         % (model, blob, "x".join(map(str, net.blobs[blob].shape))))
    _copy_weights(net, weights_param, weights, deploy_path or model)
    return net, blob, deploy_path


def _copy_weights(net, weights_param, weights, model):
    wanted = [name for name, layer in zip(net.layer_names, net.layers) if layer.blobs]
    stored = {lp.name for lp in weights_param.layer if len(lp.blobs)}
    if wanted and not stored & set(wanted):
        raise InferError("%s holds weights for none of the layers of %s (it has %s; the net "
                         "wants %s): is it the caffemodel of this net?"
                         % (weights, model, ", ".join(sorted(stored)[:8]) or "none",
                            ", ".join(wanted[:8])))
    missing = [name for name in wanted if name not in stored]
    if missing:
        print("protonet infer: warning: %s has no weights for layer(s) %s; they keep their "
              "fillers' values" % (weights, ", ".join(missing)), file=sys.stderr)
    net.copy_from(weights_param, origin=weights)


def output_blob_name(net, requested=None):
    """The blob to read: ``requested``, else the net output produced last in layer order."""
    if requested:
        if requested not in net.blobs:
            raise InferError("--output-blob %s: no such blob (the net's outputs: %s)"
                             % (requested, ", ".join(net.outputs)))
        return requested
    for li in range(len(net.layers) - 1, -1, -1):
        for name in reversed(net.top_names[li]):
            if name in net.outputs:
                return name
    raise InferError("the net has no outputs")


def predict(net, input_blob, output, x):
    """The predicted mask (H x W bool, class > 0) for one C x H x W input."""
    net.forward(**{input_blob: x[None]})
    scores = np.asarray(backend.to_host(net.blobs[output].data))
    if scores.ndim != 4:
        raise InferError("output blob '%s' has shape %s, not a per-pixel map N x K x H x W; "
                         "choose one with --output-blob" % (output, "x".join(map(str, scores.shape))))
    if scores.shape[1] == 1:
        mask = scores[0, 0] > 0.5
    else:
        mask = scores[0].argmax(axis=0) > 0
    if mask.shape != x.shape[1:]:
        # a net that does not upsample to the input: nearest-neighbour, as labels are resized
        mask = viz.resize(mask, x.shape[1:], nearest=True) > 0
    return mask


# ------------------------------------------------------------------ the run
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _unique_name(name, used):
    base = _UNSAFE.sub("_", name).strip("._") or "input"
    out, n = base, 1
    while out in used:
        n += 1
        out = "%s_%d" % (base, n)
    used.add(out)
    return out


def _caption(record):
    """A tile's caption: case and image on their own lines when known, else the name."""
    short = lambda t: t if len(t) <= 20 else "..." + t[-17:]
    if record["case"] and record["image"]:
        text = "%s\n%s" % (short(record["case"]), short(record["image"]))
    else:
        text = short(record["name"])
    return text if record["dice"] is None else "%s\nDice %.3f" % (text, record["dice"])


def _write_csv(path, records, mean):
    blank = lambda v: "" if v is None else v
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        for r in records:
            w.writerow([r["name"], blank(r["case"]), blank(r["image"]), blank(r["slice"]),
                        r["file"], blank(r["key"]), r["height"], r["width"], r["pred_lv_pixels"],
                        "" if r["pred_lv_mm2"] is None else "%.3f" % r["pred_lv_mm2"],
                        blank(r["true_lv_pixels"]),
                        "" if r["dice"] is None else "%.6f" % r["dice"]])
        w.writerow(["MEAN"] + [""] * (len(CSV_FIELDS) - 2) + ["" if mean is None else "%.6f" % mean])


def _spacing(item, shape):
    """The item's pixel spacing (row, col) in mm: given with it, else its DICOM's; or None."""
    given = item.spacing
    if given is not None:
        try:
            given = [float(v) for v in given]
        except (TypeError, ValueError):
            given = None
        if given and len(given) == 2 and all(np.isfinite(given)) and min(given) > 0:
            return given
    return dicom_spacing(item.dicom, shape)


def _save_item(out_dir, name, item, arr, pred, true, thumb, report=None):
    """Write ``<name>_overlay.png`` and ``<name>_mask.png`` (and the page's layers to
    ``report``); return the summary record and, when ``thumb`` is given, the contact-sheet
    tile (drawn at tile size so contours stay sharp)."""
    gray = viz.window_image(arr[0] if arr.shape[0] == 1 else arr.mean(axis=0))
    viz.save_png(os.path.join(out_dir, name + "_overlay.png"),
                 viz.overlay(gray, pred, true, window=False))
    viz.save_png(os.path.join(out_dir, name + "_mask.png"), pred.astype(np.uint8) * 255)
    if report is not None:
        report.add(name, gray, pred, true)
    spacing = _spacing(item, arr.shape[1:])
    area = None if spacing is None else spacing[0] * spacing[1]
    pred_px = int(np.count_nonzero(pred))
    true_px = None if true is None else int(np.count_nonzero(true))
    record = {
        "name": name, "case": item.case, "image": item.image, "slice": item.slice,
        "file": item.file, "key": item.key,
        "height": int(arr.shape[1]), "width": int(arr.shape[2]),
        "pixel_spacing": spacing,
        "pred_lv_pixels": pred_px,
        "pred_lv_mm2": None if area is None else pred_px * area,
        "true_lv_pixels": true_px,
        "true_lv_mm2": None if area is None or true_px is None else true_px * area,
        "dice": None if true is None else viz.dice(pred, true),
        "truth": item.truth if true is not None else None,
        "overlay": name + "_overlay.png", "mask": name + "_mask.png"}
    tile = None
    if thumb:
        size = viz.fit(gray.shape, thumb)
        tile = viz.overlay(viz.resize(gray, size), viz.resize(pred, size, nearest=True),
                           None if true is None else viz.resize(true, size, nearest=True),
                           window=False)
    return record, tile


def infer(model, weights, inputs, out_dir, labels=None, output_blob=None, limit=None,
          sheet_cols=8, sheet_max=256, thumb=128, echo=print, contours=None, embed_mb=25):
    """Run ``model`` with ``weights`` on ``inputs``; write pictures, summaries and the browsable
    ``index.html`` (:mod:`protonet.report`) to ``out_dir``.

    ``labels`` is the label LMDB of an LMDB input, ``contours`` the expert
    contour folder of DICOM inputs (:class:`ContourIndex`); ``embed_mb``
    the most picture data index.html embeds (0: none, all referenced).
    Returns the summary dict (also written as ``summary.json``): ``images``
    (per-image records), ``mean_dice`` (None without truth), ``skipped``
    ({"input", "reason"}), the paths written. ``echo`` prints progress (None:
    silent). Raises :class:`InferError` (or the net's NetError/FormatError)
    when nothing can be done.
    """
    if limit is not None and limit < 1:
        raise InferError("--limit must be at least 1, got %d" % limit)
    if not os.path.isfile(os.fspath(weights)):
        raise InferError("--weights %s: no such file" % weights)
    if not os.path.isfile(os.fspath(model)):
        raise InferError("--model %s: no such file" % model)
    if embed_mb is not None and not 0 <= embed_mb < float("inf"):     # NaN fails this too
        raise InferError("--embed-mb must be a finite number, 0 or more, got %g" % embed_mb)
    from .layer import LayerError
    from .report import Report
    plan = plan_inputs(inputs, labels)
    contour_index = ContourIndex(os.fspath(contours)) if contours else None
    os.makedirs(out_dir, exist_ok=True)
    report = Report(out_dir, embed_bytes=int((25 if embed_mb is None else embed_mb) * (1 << 20)))
    say = echo or (lambda *a, **k: None)
    net = input_blob = output = deploy_path = None
    channels = None
    records, skipped, tiles, captions, used = [], [], [], [], set()

    def skip(item, exc):
        reason = str(exc)
        skipped.append({"input": item.where, "reason": reason})
        if item.file not in reason:
            reason = "%s: %s" % (item.where, reason)
        print("protonet infer: skipped %s" % reason, file=sys.stderr)

    items = iter_inputs(plan, contour_index)
    seen = 0
    try:
        for item in items:
            if limit is not None and seen >= limit:
                break
            seen += 1
            try:
                arr = item.load()
                if arr.ndim != 3:
                    raise InferError("%s: expected a C x H x W image, got shape %s"
                                     % (item.where, arr.shape))
            except (ValueError, OSError) as exc:   # InferError, DataError, pydicom's
                skip(item, exc)
                continue
            if net is None:   # built on the first readable input; failing here is fatal
                net, input_blob, deploy_path = load_net(model, weights, arr, out_dir)
                output = output_blob_name(net, output_blob)
                channels = net.blobs[input_blob].shape[1]
            try:
                x = match_channels(arr, channels, item.where)
                true = item.load_label(arr.shape[1:])
                if true is not None and true.shape != arr.shape[1:]:
                    raise InferError("%s: the label is %s but the image is %s" % (
                        item.where, "x".join(map(str, true.shape)),
                        "x".join(map(str, arr.shape[1:]))))
                pred = predict(net, input_blob, output, x)
            except (ValueError, OSError, LayerError) as exc:
                # InferError, ContourError, NetError (a size the net refuses), an unreadable file
                skip(item, exc)
                continue
            name = _unique_name(item.name, used)
            record, tile = _save_item(out_dir, name, item, arr, pred, true,
                                      thumb if not sheet_max or len(tiles) < sheet_max else None,
                                      report)
            records.append(record)
            if tile is not None:
                tiles.append(tile)
                captions.append(_caption(record))
            d = record["dice"]
            say("  %s: %d LV pixels%s" % (name, records[-1]["pred_lv_pixels"],
                                          "" if d is None else ", Dice %.4f" % d))
    finally:
        items.close()
    if not records:
        # a reason that already names its input is shown as it is
        raise InferError("no input could be run (%d skipped: %s)" % (
            len(skipped), "; ".join(s["reason"] if s["reason"].startswith(s["input"])
                                    else "%s: %s" % (s["input"], s["reason"])
                                    for s in skipped[:3])))
    if contour_index is not None and not contour_index.matched:
        print("protonet infer: warning: no input is a DICOM with a contour under --contours %s "
              "(contours go with <case>/IM-SSSS-NNNN.dcm of the case's SAX series)" % contours,
              file=sys.stderr)
    dices = [r["dice"] for r in records if r["dice"] is not None]
    mean = float(np.mean(dices)) if dices else None
    sheet_path = os.path.join(out_dir, "contact_sheet.png")
    pad = 4
    viz.save_png(sheet_path, viz.contact_sheet(tiles, captions, thumb=thumb, per_row=sheet_cols,
                                               pad=pad))
    summary = {
        "model": os.fspath(model), "weights": os.fspath(weights), "deploy": deploy_path,
        "output_blob": output, "count": len(records), "labelled": len(dices),
        "mean_dice": mean, "images": records, "skipped": skipped,
        "contact_sheet": sheet_path, "sheet_tiles": len(tiles), "out": os.fspath(out_dir),
        "report": os.path.join(out_dir, "index.html"),
    }
    # the sheet's grid as contact_sheet lays it out: a click on tile i opens image i
    report.write(summary, {"path": sheet_path, "thumb": thumb, "pad": pad, "tiles": len(tiles),
                           "per_row": max(1, min(int(sheet_cols), len(tiles)))})
    summary["report_embedded"] = report.embed
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    _write_csv(os.path.join(out_dir, "summary.csv"), records, mean)
    return summary


def format_summary(summary):
    """The lines ``protonet infer`` prints: where everything is, and the mean Dice."""
    out = summary["out"]
    shown = summary["sheet_tiles"]
    lines = ["protonet infer: %d image(s) -> %s" % (summary["count"], out),
             "  report:        %s (open it in a browser%s)" % (
                 summary["report"], "" if summary.get("report_embedded", True)
                 else "; its pictures are in %s" % os.path.join(out, "report")),
             "  overlays:      %s" % os.path.join(out, "<name>_overlay.png"),
             "  masks:         %s" % os.path.join(out, "<name>_mask.png"),
             "  contact sheet: %s%s" % (summary["contact_sheet"], "" if shown == summary["count"]
                                        else " (the first %d)" % shown),
             "  summary:       %s, %s" % (os.path.join(out, "summary.json"),
                                          os.path.join(out, "summary.csv"))]
    if summary["deploy"]:
        lines.append("  deploy net:    %s (derived from %s)" % (summary["deploy"], summary["model"]))
    if summary["mean_dice"] is not None:
        lines.append("  mean Dice:     %.4f over %d image(s) with truth"
                     % (summary["mean_dice"], summary["labelled"]))
    if summary["skipped"]:
        lines.append("  SKIPPED %d input(s), listed in summary.json" % len(summary["skipped"]))
    return "\n".join(lines)


# ------------------------------------------------------------------ command line
def add_arguments(parser):
    """Arguments of ``protonet infer``."""
    parser.description = ("Run a segmentation net on DICOM/PNG/JPEG images, folders or an LMDB;\n"
                          "write a browsable index.html, overlays, masks, a contact sheet and\n"
                          "a Dice summary.")
    parser.epilog = EXAMPLE
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="DICOM/PNG/JPEG files, folders of them, or an LMDB of Datum records")
    parser.add_argument("--model", required=True, metavar="PROTOTXT",
                        help="deploy prototxt, or a train/val prototxt to derive one from")
    parser.add_argument("--weights", required=True, metavar="CAFFEMODEL",
                        help="the trained weights (.caffemodel)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    parser.add_argument("--labels", metavar="LMDB",
                        help="label LMDB for the LMDB input (records matched by key): Dice")
    parser.add_argument("--contours", metavar="DIR",
                        help="Sunnybrook expert contours (<case>/contours-manual/IRCCI-expert/"
                             "IM-0001-NNNN-icontour-manual.txt) for DICOM inputs: Dice")
    parser.add_argument("--output-blob", metavar="NAME",
                        help="blob holding the class scores (default: the last net output)")
    parser.add_argument("--gpu", metavar="N", default=None,
                        help="run on GPU N (CuPy); -1 or absent: the CPU")
    parser.add_argument("--limit", type=argtypes.positive_int, metavar="N", help="only the first N inputs")
    parser.add_argument("--sheet-cols", type=argtypes.positive_int, default=8, metavar="N",
                        help="contact sheet tiles per row (default 8)")
    parser.add_argument("--sheet-max", type=argtypes.nonneg_int, default=256, metavar="N",
                        help="at most N tiles on the contact sheet, 0 for all (default 256)")
    parser.add_argument("--embed-mb", type=argtypes.nonneg_float, default=25, metavar="MB",
                        help="index.html embeds its pictures up to MB megabytes (default 25) "
                             "and then references files in OUT/report/; 0: never embed")
    parser.add_argument("--quiet", action="store_true", help="no line per image")
    return parser


def _use_gpu(flag):
    """Caffe's --gpu: None / -1 -> CPU; N (or the first of 'N,M' / 'all') -> GPU N."""
    if flag is None or str(flag).strip() in ("", "-1"):
        backend.set_mode_cpu()
        return
    text = str(flag).strip()
    try:
        device = 0 if text == "all" else int(text.split(",")[0])
    except ValueError:
        raise InferError("--gpu expects a device number, 'all' or -1; got %r" % flag) from None
    if device < 0:
        backend.set_mode_cpu()
        return
    backend.set_device(device)
    backend.set_mode_gpu()


def run(args):
    """Run ``protonet infer``; returns the exit status (0 ok, 1 some inputs skipped, 2 failed)."""
    from .data.datum import DataError
    from .digits import DatasetError
    from .io import FormatError
    from .layer import LayerError
    from .net import NetError
    mode, device = backend.mode(), backend.device()
    try:
        _use_gpu(args.gpu)
        with quiet_net_setup():
            summary = infer(args.model, args.weights, args.inputs, args.out, labels=args.labels,
                            output_blob=args.output_blob, limit=args.limit,
                            sheet_cols=args.sheet_cols, sheet_max=args.sheet_max,
                            echo=None if args.quiet else print, contours=args.contours,
                            embed_mb=args.embed_mb)
    except (InferError, DataError, DatasetError, FormatError, NetError, LayerError, RuntimeError,
            OSError) as exc:
        print("protonet infer: error: %s" % exc, file=sys.stderr)
        return 2
    finally:
        if mode == "cpu":
            backend.set_mode_cpu()
        if backend.device() != device:
            backend.set_device(device)
    print(format_summary(summary))
    return 1 if summary["skipped"] else 0
