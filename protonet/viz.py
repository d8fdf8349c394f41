"""Pictures of segmentations: windowed images, tinted masks, contours, contact sheets.

Pillow, NumPy and scipy.ndimage, whole-array operations (no loops over pixels).
Arrays are in image layout: H x W (gray) or H x W x C; colours are RGB
tuples and the pictures returned are RGB ``uint8`` (what PNG viewers show;
Caffe's BGR order matters only for what is fed to a net).
"""
import numpy as np

PRED_FILL = (255, 0, 0)       # the predicted mask, tinted semi-transparent red
PRED_CONTOUR = (255, 64, 64)  # its boundary, opaque
TRUE_CONTOUR = (0, 255, 0)    # the label's boundary, green


def _pil():
    from PIL import Image
    return Image


def dice(pred, true):
    """Dice coefficient 2|A∩B| / (|A| + |B|) of two masks (nonzero = in); 1.0 when both are empty."""
    p = np.asarray(pred) != 0
    t = np.asarray(true) != 0
    if p.shape != t.shape:
        raise ValueError("dice: masks differ in shape: %s vs %s" % (p.shape, t.shape))
    total = np.count_nonzero(p) + np.count_nonzero(t)
    if total == 0:
        return 1.0
    return 2.0 * np.count_nonzero(p & t) / total


def window_image(image, low=1.0, high=99.0):
    """An image windowed for display: percentiles ``low``..``high`` -> 0..255 gray ``uint8``.

    A robust window: a few hot pixels (16-bit MR, DICOM) do not leave the rest
    black. H x W x C input is averaged over its channels first. A constant
    image comes out black.
    """
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 3:
        a = a.mean(axis=2)
    if a.ndim != 2:
        raise ValueError("window_image needs an H x W or H x W x C array, got shape %s"
                         % (a.shape,))
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = np.percentile(a, [low, high])
    if not hi > lo:
        hi = lo + 1.0
    return np.rint(np.clip((a - lo) * (255.0 / (hi - lo)), 0, 255)).astype(np.uint8)


def mask_boundary(mask, thickness=1):
    """The mask's boundary: ``mask & ~eroded``, a band ``thickness`` pixels wide inside the mask.

    Pixels on the image border count as boundary (outside is background).
    """
    from scipy import ndimage      # here: its import (0.2 s) would slow the CLI's start
    m = np.asarray(mask) != 0
    if m.ndim != 2:
        raise ValueError("mask_boundary needs an H x W mask, got shape %s" % (m.shape,))
    # the default structure is the 4-neighbour cross; border_value=0: outside is background
    inner = ndimage.binary_erosion(m, iterations=max(1, int(thickness)), border_value=0)
    return m & ~inner


def overlay(image, pred_mask, true_mask=None, alpha=0.35, thickness=1, window=True,
            fill=PRED_FILL, pred_color=PRED_CONTOUR, true_color=TRUE_CONTOUR):
    """An H x W x 3 RGB ``uint8`` picture of a segmentation.

    ``image`` (H x W or H x W x C) is windowed for display (``window=False``:
    it is already ``uint8`` 0..255); the predicted mask is tinted with
    ``fill`` at opacity ``alpha``; the predicted contour is drawn in
    ``pred_color`` and, when ``true_mask`` is given, the true contour on top
    in ``true_color``.
    """
    gray = window_image(image) if window else np.asarray(image)
    if gray.ndim == 3:
        gray = gray.mean(axis=2)
    pred = np.asarray(pred_mask) != 0
    if pred.shape != gray.shape:
        raise ValueError("overlay: the mask is %s but the image is %s"
                         % ("x".join(map(str, pred.shape)), "x".join(map(str, gray.shape))))
    rgb = np.repeat(np.asarray(gray, np.float32)[:, :, None], 3, axis=2)
    rgb[pred] = (1.0 - alpha) * rgb[pred] + alpha * np.asarray(fill, np.float32)
    rgb[mask_boundary(pred, thickness)] = pred_color
    if true_mask is not None:
        true = np.asarray(true_mask) != 0
        if true.shape != gray.shape:
            raise ValueError("overlay: the true mask is %s but the image is %s"
                             % ("x".join(map(str, true.shape)), "x".join(map(str, gray.shape))))
        rgb[mask_boundary(true, thickness)] = true_color
    return np.rint(np.clip(rgb, 0, 255)).astype(np.uint8)


def fit(shape, box):
    """(height, width) of ``shape`` scaled to fit in a ``box`` x ``box`` square, aspect kept."""
    h, w = int(shape[0]), int(shape[1])
    scale = float(box) / max(h, w)
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def resize(array, size, nearest=False):
    """A ``uint8`` H x W (x 3) array resized to ``size`` = (height, width) with Pillow.

    ``nearest`` for masks (labels must not blend), else Lanczos for pictures.
    """
    Image = _pil()
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    h, w = size
    if a.shape[:2] == (h, w):
        return a
    img = Image.fromarray(np.ascontiguousarray(a))
    img = img.resize((w, h), Image.NEAREST if nearest else Image.LANCZOS)
    return np.asarray(img)


def save_png(path, array):
    """Write an H x W (gray) or H x W x 3 (RGB) ``uint8`` array as a PNG."""
    a = np.asarray(array)
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise ValueError("save_png needs uint8 H x W or H x W x 3, got %s %s" % (a.dtype, a.shape))
    _pil().fromarray(np.ascontiguousarray(a)).save(path, "PNG")


def contact_sheet(images, captions=None, thumb=128, per_row=8, pad=4, background=(24, 24, 24)):
    """A grid of pictures (H x W x 3 or H x W ``uint8``) as one RGB ``uint8`` array.

    Each picture is scaled to fit a ``thumb`` x ``thumb`` tile (aspect kept,
    centred); up to ``per_row`` tiles a row, ``pad`` pixels apart. A caption
    (may hold newlines) is written in the tile's top-left corner on a dark
    box, in Pillow's default font.
    """
    Image = _pil()
    from PIL import ImageDraw, ImageFont
    images = list(images)
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    captions = list(captions) if captions is not None else [None] * len(images)
    if len(captions) != len(images):
        raise ValueError("contact_sheet: %d captions for %d images" % (len(captions), len(images)))
    per_row = max(1, min(int(per_row), len(images)))
    rows = -(-len(images) // per_row)
    step = thumb + pad
    sheet = Image.new("RGB", (pad + per_row * step, pad + rows * step), tuple(background))
    font = ImageFont.load_default()
    for i, (picture, caption) in enumerate(zip(images, captions)):
        a = np.asarray(picture)
        if a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)
        a = resize(a, fit(a.shape, thumb))
        # Each tile is drawn on its own, so a long caption is clipped at the tile's edge.
        tile = Image.new("RGB", (thumb, thumb), tuple(background))
        tile.paste(Image.fromarray(np.ascontiguousarray(a)),
                   ((thumb - a.shape[1]) // 2, (thumb - a.shape[0]) // 2))
        if caption:
            draw = ImageDraw.Draw(tile)
            left, top, right, bottom = draw.multiline_textbbox((2, 1), caption, font=font)
            draw.rectangle((0, 0, right + 2, bottom + 1), fill=(0, 0, 0))
            draw.multiline_text((2, 1), caption, fill=(255, 255, 255), font=font)
        sheet.paste(tile, (pad + (i % per_row) * step, pad + (i // per_row) * step))
    return np.asarray(sheet)
