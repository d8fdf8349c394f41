"""Input and DummyData: layers without bottoms that only provide tops."""
from ..fillers import fill
from ..layer import Layer, register
from ..proto import caffe_pb2


def _per_top(layer, count, ntop, what):
    """Index of the setting that applies to each top: one for all, or one per top."""
    if count not in (1, ntop):
        raise layer.error("%s must be given once or once per top (%d), got %d"
                          % (what, ntop, count))
    return [0 if count == 1 else i for i in range(ntop)]


@register("Input")
class InputLayer(Layer):
    """The net's inputs: tops whose values are written from outside.

    Reads ``input_param.shape`` (repeated BlobShape): none (the tops keep the
    shape they have), one for every top, or one per top. Forward and backward
    do nothing.
    """

    exact_num_bottom = 0
    min_top = 1

    def setup(self, bottom, top):
        shapes = self.layer_param.input_param.shape
        if len(shapes) == 0:
            return
        for t, i in zip(top, _per_top(self, len(shapes), len(top), "input_param.shape")):
            t.reshape(tuple(shapes[i].dim))

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


@register("DummyData", "DUMMY_DATA")
class DummyDataLayer(Layer):
    """Tops filled by fillers.

    Reads ``dummy_data_param``: ``data_filler`` (none = constant 0, one for
    every top, or one per top) and either ``shape`` (once or once per top) or
    the legacy ``num``/``channels``/``height``/``width`` (each once or once
    per top; a 4-axis shape). As in Caffe, tops with a constant filler are
    filled once at setup and left alone; the others are refilled on every
    forward. No backward.
    """

    exact_num_bottom = 0
    min_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.dummy_data_param
        ntop = len(top)
        if len(p.data_filler) not in (0, 1, ntop):
            raise self.error("data_filler must be given 0, 1 or %d (number of tops) times, got %d"
                             % (ntop, len(p.data_filler)))
        if len(p.data_filler) == 0:
            self.fillers = [caffe_pb2.FillerParameter(type="constant", value=0)]
        else:
            self.fillers = list(p.data_filler)
        self.filler_of_top = [0 if len(self.fillers) == 1 else i for i in range(ntop)]

        legacy = [p.num, p.channels, p.height, p.width]
        if any(len(f) for f in legacy):
            if len(p.shape):
                raise self.error("give either shape or the legacy num/channels/height/width, not both")
            names = ("num", "channels", "height", "width")
            picks = [_per_top(self, len(f), ntop, name) for f, name in zip(legacy, names)]
            shapes = [tuple(int(legacy[k][picks[k][i]]) for k in range(4)) for i in range(ntop)]
        else:
            if len(p.shape) == 0:
                raise self.error("needs dummy_data_param.shape (once or once per top)")
            shapes = [tuple(p.shape[i].dim) for i in _per_top(self, len(p.shape), ntop, "shape")]
        for t, s in zip(top, shapes):
            t.reshape(s)
        # Constant tops never change: fill them now, and only the random ones each forward.
        self.refill = [f.type != "constant" for f in self.fillers]
        for t, k in zip(top, self.filler_of_top):
            if not self.refill[k]:
                fill(t, self.fillers[k])

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        for t, k in zip(top, self.filler_of_top):
            if self.refill[k]:
                fill(t, self.fillers[k])
