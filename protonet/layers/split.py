"""Split: one blob handed to several consumers (the Net inserts these itself)."""
from ..layer import Layer, register


@register("Split", "SPLIT")
class SplitLayer(Layer):
    """Copies of the bottom for several consumers.

    No settings. Every top has the bottom's shape and *shares* its data (no
    copy). Backward: bottom diff = sum of the top diffs, added in top order.
    """

    exact_num_bottom = 1
    min_top = 1

    def reshape(self, bottom, top):
        for i, t in enumerate(top):
            if t is bottom[0]:
                raise self.error("does not allow in-place computation (top %d is the bottom)" % i)
            t.reshape(bottom[0].shape)
            t.share_data(bottom[0])

    def forward(self, bottom, top):
        # Shared again here: the bottom's buffer may have been replaced since reshape.
        for t in top:
            t.share_data(bottom[0])

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        if len(top) == 1:
            dx[...] = top[0].diff
            return
        self.xp.add(top[0].diff, top[1].diff, out=dx)
        for t in top[2:]:
            dx += t.diff
