"""``caffe.Detector``: a :class:`caffe.Net` that classifies windows of images (R-CNN style).

Caffe 1.0's ``python/caffe/detector.py``: each window (ymin, xmin, ymax,
xmax) is cropped, optionally with ``context_pad`` pixels of surrounding
context as in R-CNN feature extraction (Girshick et al., arXiv:1311.2524),
warped to the net's input size and classified. Selective Search proposals
need the external ``selective_search_ijcv_with_python`` package (and
MATLAB), as in Caffe.
"""
import math
import os

import numpy as np

from . import io as caffe_io
from .classifier import input_transformer
from .pycaffe import Net
from protonet import TEST

SELECTIVE_SEARCH_URL = "https://github.com/sergeyk/selective_search_ijcv_with_python"


def _round_half_away(x):
    # Caffe ran on Python 2, whose round() takes halves away from zero.
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


class Detector(Net):
    """Windowed detection over given windows or Selective Search proposals.

    ``Detector(model_file, pretrained_file, mean=None, input_scale=None,
    raw_scale=None, channel_swap=None, context_pad=None)``: a TEST-phase net;
    the preprocessing arguments configure ``self.transformer`` as in
    :class:`caffe.Classifier`. ``context_pad``: pixels of the net input's
    border that show context around the window.
    """

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None, context_pad=None):
        Net.__init__(self, model_file, TEST, weights=pretrained_file)
        input_transformer(self, "Detector", model_file, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows):
        """Classify windows of images.

        ``images_windows``: iterable of (image filename, [window, ...]), a
        window being (ymin, xmin, ymax, xmax) in pixels (end exclusive).
        Returns one {'window', 'prediction', 'filename'} dict per window, in order.
        """
        images_windows = [(fname, list(windows)) for fname, windows in images_windows]
        window_inputs = []
        for image_fname, windows in images_windows:
            image = caffe_io.load_image(image_fname).astype(np.float32)
            for window in windows:
                window_inputs.append(self.crop(image, window))
        if not window_inputs:
            raise ValueError("detect_windows was given no windows")

        in_ = self.inputs[0]
        caffe_in = np.zeros((len(window_inputs), window_inputs[0].shape[2])
                            + tuple(self.blobs[in_].data.shape[2:]), dtype=np.float32)
        for ix, window_in in enumerate(window_inputs):
            caffe_in[ix] = self.transformer.preprocess(in_, window_in)
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]

        detections = []
        ix = 0
        for image_fname, windows in images_windows:
            for window in windows:
                detections.append({"window": window, "prediction": predictions[ix],
                                   "filename": image_fname})
                ix += 1
        return detections

    def detect_selective_search(self, image_fnames):
        """Classify the Selective Search proposals of each image (see :meth:`detect_windows`).

        Needs the ``selective_search_ijcv_with_python`` module (and MATLAB) on the path.
        """
        try:
            import selective_search_ijcv_with_python as selective_search
        except ImportError as exc:
            raise ImportError(
                "Detector.detect_selective_search needs the selective_search_ijcv_with_python "
                "module (%s, which runs MATLAB), as in Caffe; it could not be imported (%s). "
                "Compute windows another way and call detect_windows." % (SELECTIVE_SEARCH_URL, exc),
                name=exc.name) from exc
        # absolute paths, since MATLAB runs in another working directory
        image_fnames = [os.path.abspath(f) for f in image_fnames]
        windows_list = selective_search.get_windows(image_fnames, cmd="selective_search_rcnn")
        return self.detect_windows(zip(image_fnames, windows_list))

    def crop(self, im, window):
        """The window (ymin, xmin, ymax, xmax) of the H x W x K image ``im``, for the net.

        Without ``context_pad``, the plain slice. With it, R-CNN's crop: the
        box is grown so that after warping to the net's (square) input,
        ``context_pad`` pixels of border show the surroundings; the part
        beyond the image is filled with the mean (in image space).
        """
        window = [int(v) for v in window]
        crop = im[window[0]:window[2], window[1]:window[3]]
        if not self.context_pad:
            if crop.size == 0:
                raise ValueError("window %s is empty in a %dx%d image"
                                 % (window, im.shape[0], im.shape[1]))
            return crop

        box = np.array(window, dtype=np.float64)
        crop_size = self.blobs[self.inputs[0]].width      # Caffe assumes a square input
        scale = crop_size / (1. * crop_size - self.context_pad * 2)
        half_h = (box[2] - box[0] + 1) / 2.
        half_w = (box[3] - box[1] + 1) / 2.
        center = (box[0] + half_h, box[1] + half_w)
        scaled_dims = scale * np.array((-half_h, -half_w, half_h, half_w))
        box = np.round(np.tile(center, 2) + scaled_dims)
        full_h = box[2] - box[0] + 1
        full_w = box[3] - box[1] + 1
        scale_h = crop_size / full_h
        scale_w = crop_size / full_w
        pad_y = _round_half_away(max(0, -box[0]) * scale_h)     # the part above/left of the image
        pad_x = _round_half_away(max(0, -box[1]) * scale_w)

        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0., [im_h, im_w, im_h, im_w])
        clip_h = box[2] - box[0] + 1
        clip_w = box[3] - box[1] + 1
        if not (clip_h > 0 and clip_w > 0):
            raise ValueError("window %s lies outside the %dx%d image" % (window, im_h, im_w))
        crop_h = _round_half_away(clip_h * scale_h)
        crop_w = _round_half_away(clip_w * scale_w)
        if pad_y + crop_h > crop_size:
            crop_h = crop_size - pad_y
        if pad_x + crop_w > crop_size:
            crop_w = crop_size - pad_x

        box = box.astype(int)
        context_crop = im[box[0]:box[2], box[1]:box[3]]
        if context_crop.size == 0:
            raise ValueError("window %s lies outside the %dx%d image" % (window, im_h, im_w))
        context_crop = caffe_io.resize_image(context_crop, (crop_h, crop_w))
        crop = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        crop[pad_y:(pad_y + crop_h), pad_x:(pad_x + crop_w)] = context_crop
        return crop

    def configure_crop(self, context_pad):
        """Set ``crop_dims`` (the net input as H x W x K) and ``context_pad``.

        With context, also ``crop_mean``: the transformer's mean taken back to
        image space (transpose, channel order and raw scale undone), which
        fills the context beyond the image; zeros without a mean.
        """
        in_ = self.inputs[0]
        tpose = self.transformer.transpose[in_]
        inv_tpose = [tpose[t] for t in tpose]
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[inv_tpose]
        self.context_pad = context_pad
        if self.context_pad:
            if self.crop_dims[0] != self.crop_dims[1]:
                raise ValueError("context_pad needs a square net input; '%s' is %dx%d"
                                 % (in_, self.crop_dims[0], self.crop_dims[1]))
            if not 0 <= 2 * self.context_pad < self.crop_dims[0]:
                raise ValueError("context_pad %r leaves no window inside the %d-pixel input"
                                 % (context_pad, self.crop_dims[0]))
            channel_order = self.transformer.channel_swap.get(in_)
            raw_scale = self.transformer.raw_scale.get(in_)
            mean = self.transformer.mean.get(in_)
            if mean is not None:
                crop_mean = np.array(mean, dtype=np.float32)
                if crop_mean.ndim == 2:                   # an H x W mean serves every channel
                    crop_mean = crop_mean[np.newaxis]
                crop_mean = crop_mean.transpose(inv_tpose)
                if channel_order is not None:
                    order = list(channel_order)
                    crop_mean = crop_mean[:, :, [order.index(i) for i in range(crop_mean.shape[2])]]
                if raw_scale is not None:
                    crop_mean /= raw_scale
                self.crop_mean = crop_mean
            else:
                self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
