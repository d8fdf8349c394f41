"""``caffe.Classifier``: a :class:`caffe.Net` that classifies H x W x K images.

Caffe 1.0's ``python/caffe/classifier.py``: images are resized to
``image_dims``, cropped to the net's input size (the centre, or ten crops
whose predictions are averaged), preprocessed by a :class:`caffe.io.Transformer`
and run through the net in batches.
"""
import numpy as np

from . import io as caffe_io
from .pycaffe import Net
from protonet import TEST


def input_transformer(net, kind, model_file, mean, input_scale, raw_scale, channel_swap):
    """Set ``net.transformer`` up for the net's first input (H x W x K images -> K x H x W).

    Shared by Classifier and Detector; returns that input's shape.
    """
    if not net.inputs:
        raise ValueError("%s needs a net with an input blob; %s has none" % (kind, model_file))
    in_ = net.inputs[0]
    shape = net.blobs[in_].data.shape
    if len(shape) != 4:
        raise ValueError("%s needs a 4-d (N x K x H x W) input; '%s' of %s is %s"
                         % (kind, in_, model_file, "x".join(map(str, shape))))
    net.transformer = caffe_io.Transformer({in_: shape})
    net.transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        net.transformer.set_mean(in_, mean)
    if input_scale is not None:
        net.transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        net.transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        net.transformer.set_channel_swap(in_, channel_swap)
    return shape


class Classifier(Net):
    """Image classification by scaling, centre cropping or oversampling.

    ``Classifier(model_file, pretrained_file, image_dims=None, mean=None,
    input_scale=None, raw_scale=None, channel_swap=None)``: a TEST-phase net.
    ``image_dims`` (height, width) is the size images are scaled to before
    cropping; by default the net's input size (the whole image is the crop).
    ``mean``, ``input_scale``, ``raw_scale`` and ``channel_swap`` configure
    ``self.transformer`` for the first input (its transpose is H x W x K ->
    K x H x W).
    """

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None,
                 input_scale=None, raw_scale=None, channel_swap=None):
        Net.__init__(self, model_file, TEST, weights=pretrained_file)
        shape = input_transformer(self, "Classifier", model_file, mean, input_scale, raw_scale,
                                  channel_swap)
        self.crop_dims = np.array(shape[2:])
        if image_dims is None or not len(image_dims):
            image_dims = self.crop_dims
        if len(image_dims) != 2 or any(int(d) < c for d, c in zip(image_dims, self.crop_dims)):
            raise ValueError("image_dims %s must be (height, width), at least the net's input "
                             "size %s" % (tuple(image_dims), tuple(self.crop_dims)))
        self.image_dims = image_dims

    def predict(self, inputs, oversample=True):
        """Class probabilities (N x C) of N images (H x W x K arrays).

        ``oversample``: average over the four corner crops, the centre crop
        and their mirrors (default); otherwise the centre crop alone.
        """
        if not len(inputs):
            raise ValueError("predict needs at least one image")
        channels = np.shape(inputs[0])[-1]
        if any(np.ndim(im) != 3 or np.shape(im)[-1] != channels for im in inputs):
            raise ValueError("predict needs H x W x K images with one K; got shapes %s"
                             % [np.shape(im) for im in inputs])
        dims = [int(d) for d in self.image_dims]
        scaled = np.zeros((len(inputs), dims[0], dims[1], channels), dtype=np.float32)
        for ix, im in enumerate(inputs):
            scaled[ix] = caffe_io.resize_image(im, dims)

        if oversample:
            crops = caffe_io.oversample(scaled, self.crop_dims)
        else:
            center = np.array(dims) / 2.0
            box = (np.tile(center, 2) + np.concatenate([-self.crop_dims / 2.0,
                                                        self.crop_dims / 2.0])).astype(int)
            crops = scaled[:, box[0]:box[2], box[1]:box[3], :]

        in_ = self.inputs[0]
        caffe_in = np.zeros(np.array(crops.shape)[[0, 3, 1, 2]], dtype=np.float32)
        for ix, crop in enumerate(crops):
            caffe_in[ix] = self.transformer.preprocess(in_, crop)
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]

        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(1)
        return predictions
