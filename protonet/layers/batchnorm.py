"""BatchNorm and MVN: normalisation by mean and standard deviation."""
from ..layer import Layer, TEST, register


@register("BatchNorm")
class BatchNormLayer(Layer):
    """Normalise each channel (axis 1) to zero mean and unit variance.

    Reads ``batch_norm_param``: ``use_global_stats`` (unset: true in TEST,
    false in TRAIN), ``moving_average_fraction`` (maf, default 0.999),
    ``eps`` (default 1e-5). Shapes: (N, C, ...) -> same (a 1-axis bottom is
    one channel). In-place use is supported.

    Params: three statistics blobs [mean_sum (C), var_sum (C),
    scale_factor (1)], zero at setup. They are not learned: as Caffe does,
    setup appends a ParamSpec with ``lr_mult: 0`` for each blob the prototxt
    gives none, and rejects a non-zero ``lr_mult``; backward never touches
    their diffs.

    With batch statistics (m = N * spatial values per channel):
    mean, var = the batch's (biased) mean and variance per channel;
    y = (x - mean) / sqrt(var + eps); and the running sums are updated as
    scale_factor = maf * scale_factor + 1, mean_sum = maf * mean_sum + mean,
    var_sum = maf * var_sum + m / (m - 1) * var (unbiased; factor 1 if m = 1).
    dx = (dy - mean(dy) - y * mean(dy * y)) / sqrt(var + eps), means per channel.
    With global statistics: mean = mean_sum / s, var = var_sum / s with
    s = scale_factor (both 0 when s = 0); y as above, dx = dy / sqrt(var + eps).
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.batch_norm_param
        self.maf = self.dtype.type(p.moving_average_fraction)
        self.use_global_stats = p.use_global_stats if p.HasField("use_global_stats") \
            else self.phase == TEST
        self.eps = self.dtype.type(p.eps)
        self.channels = 1 if bottom[0].num_axes == 1 else bottom[0].shape[1]
        if not self.blobs:
            c = self.channels
            self.blobs = [self.new_blob((c,)), self.new_blob((c,)), self.new_blob((1,))]
            for b in self.blobs:
                b.data.fill(0)
        specs = self.layer_param.param
        for i in range(len(self.blobs)):
            if i == len(specs):
                specs.add().lr_mult = 0
            elif specs[i].lr_mult != 0:
                raise self.error("param %d has lr_mult %g: the statistics blobs of BatchNorm "
                                 "cannot be learned (use lr_mult 0 or no param spec)"
                                 % (i, specs[i].lr_mult))
        self.x_norm = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) > 1 and shape[1] != self.channels:
            raise self.error("bottom %s has %d channels, the layer was set up for %d"
                             % (shape, shape[1], self.channels))
        top[0].reshape(shape)
        n = shape[0] if shape else 1
        spatial = bottom[0].count // (n * self.channels) if n * self.channels else 0
        self.dims = (n, self.channels, spatial)
        if self.x_norm is None or self.x_norm.shape != self.dims:
            # y kept apart from the top: an in-place layer after this one may overwrite it.
            self.x_norm = self.xp.empty(self.dims, self.dtype)

    def _channel_sum(self, a3, scale=None):
        """Per-channel sum of an (N, C, S) array: over S for each (n, c), then over N, as Caffe."""
        s = a3.sum(axis=2)
        if scale is not None:
            s *= scale
        return s.sum(axis=0)

    def forward(self, bottom, top):
        xp = self.xp
        n, c, s = self.dims
        x = bottom[0].data.reshape(self.dims)
        y = top[0].data.reshape(self.dims)
        inv_m = self.dtype.type(1.0 / (n * s)) if n * s else self.dtype.type(0)
        if self.use_global_stats:
            f = self.blobs[2].data
            safe = xp.where(f == 0, self.dtype.type(1), f)
            factor = xp.where(f == 0, self.dtype.type(0), self.dtype.type(1) / safe)
            mean = self.blobs[0].data * factor
            var = self.blobs[1].data * factor
        else:
            mean = self._channel_sum(x, inv_m)
        xp.subtract(x, mean.reshape(1, c, 1), out=y)
        if not self.use_global_stats:
            var = self._channel_sum(xp.multiply(y, y, out=self.x_norm), inv_m)
            stats = [b.data for b in self.blobs]
            stats[2] *= self.maf
            stats[2] += 1
            stats[0] *= self.maf
            stats[0] += mean
            m = n * s
            correction = self.dtype.type(m) / self.dtype.type(m - 1) if m > 1 else self.dtype.type(1)
            stats[1] *= self.maf
            stats[1] += correction * var
        self.std = xp.sqrt(var + self.eps).reshape(1, c, 1)
        y /= self.std
        self.x_norm[...] = y

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff.reshape(self.dims)
        if top[0] is bottom[0]:
            dy = dy.copy()
        dx = bottom[0].diff.reshape(self.dims)
        if self.use_global_stats:
            self.xp.divide(dy, self.std, out=dx)
            return
        n, c, s = self.dims
        y = self.x_norm
        # dx serves as scratch for dy * y before it receives the gradient.
        sum_dy_y = self._channel_sum(self.xp.multiply(y, dy, out=dx)).reshape(1, c, 1)
        sum_dy = self._channel_sum(dy).reshape(1, c, 1)
        self.xp.multiply(y, sum_dy_y, out=dx)
        dx += sum_dy
        dx *= self.dtype.type(-1.0 / (n * s))
        dx += dy
        dx /= self.std


@register("MVN")
class MVNLayer(Layer):
    """Mean-variance normalisation per item and channel (or per item).

    Reads ``mvn_param``: ``normalize_variance`` (default true),
    ``across_channels`` (default false), ``eps`` (default 1e-9).
    Shapes: (N, C, H, W) (at most 4 axes) -> same. The groups normalised
    together are each (n, c) (each n when across channels), of D values.
    y = x - mean; with normalize_variance y = (x - mean) / (std + eps), std
    the biased standard deviation (eps is added to the std, not the variance).
    dx = (dy - mean(dy) - y * mean(dy * y)) / (std + eps) (Caffe's formula:
    exact for eps = 0), or dx = dy - mean(dy) without variance normalisation.
    As in Caffe the backward reads the top's data, so an in-place layer
    after this one changes the gradient.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.mvn_param
        self.normalize_variance = p.normalize_variance
        self.across_channels = p.across_channels
        self.eps = self.dtype.type(p.eps)

    def reshape(self, bottom, top):
        b = bottom[0]
        if b.num_axes > 4:
            raise self.error("bottom %s has more than 4 axes" % (b.shape,))
        groups = b.num if self.across_channels else b.num * b.channels
        self.dims = (groups, b.count // groups if groups else 0)
        top[0].reshape(b.shape)

    def forward(self, bottom, top):
        xp = self.xp
        d = self.dims[1]
        inv_d = self.dtype.type(1.0 / d) if d else self.dtype.type(0)
        x = bottom[0].data.reshape(self.dims)
        y = top[0].data.reshape(self.dims)
        mean = x.sum(axis=1, keepdims=True)
        mean *= inv_d
        xp.subtract(x, mean, out=y)
        if self.normalize_variance:
            var = (y * y).sum(axis=1, keepdims=True)
            var *= inv_d
            self.std = xp.sqrt(var)
            self.std += self.eps
            y /= self.std

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        d = self.dims[1]
        neg_inv_d = self.dtype.type(-1.0 / d) if d else self.dtype.type(0)
        dy = top[0].diff.reshape(self.dims)
        if top[0] is bottom[0]:
            dy = dy.copy()
        dx = bottom[0].diff.reshape(self.dims)
        if not self.normalize_variance:
            mean_dy = dy.sum(axis=1, keepdims=True)
            mean_dy *= -neg_inv_d  # = 1/D, rounded as Caffe rounds it
            self.xp.subtract(dy, mean_dy, out=dx)
            return
        y = top[0].data.reshape(self.dims)
        sum_dy_y = self.xp.multiply(y, dy, out=dx).sum(axis=1, keepdims=True)
        self.xp.multiply(y, sum_dy_y, out=dx)
        dx += dy.sum(axis=1, keepdims=True)
        dx *= neg_inv_d
        dx += dy
        dx /= self.std
