"""ImageData: images named in a list file (``path label`` a line), read on a background thread."""
import numpy as np

from .. import rng as _rng
from ..data.datum import DataError, image_to_chw, read_image_file
from ..data.transform import DataTransformer, resize_bilinear
from ..comm import data_share
from ..layer import TEST, register
from .data import PrefetchingDataLayer, assemble_batch, seed_data_layer_rngs


def read_image_list(path):
    """[(filename, label)] from a list file; the label follows the last space (as Caffe)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        raise DataError("image list %s cannot be read (%s)" % (path, exc.strerror or exc)) from None
    lines = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        name, sep, label = line.rpartition(" ")
        try:
            lines.append((name, int(label)))
        except ValueError:
            raise DataError("%s:%d: expected 'path label' (an integer label after the last "
                            "space), got %r" % (path, lineno, line)) from None
        if not sep or not name:
            raise DataError("%s:%d: expected 'path label', got %r" % (path, lineno, line))
    if not lines:
        raise DataError("image list %s is empty" % path)
    return lines


class _ImageBatches:
    """Reads ``batch_size`` listed images per call (runs on the prefetch thread)."""

    def __init__(self, lines, root, size, color, shuffle_rng, transformer, batch_size, rng,
                 share=(0, 1)):
        self.lines, self.root, self.size, self.color = lines, root, size, color
        self.shuffle_rng = shuffle_rng
        self.transformer, self.batch_size, self.rng = transformer, batch_size, rng
        self.pos = 0
        # as the Data layer: with N solvers rank r keeps the lines whose running offset is r mod N
        self.rank, self.count = share
        self.offset = 0

    def advance(self):
        self.pos += 1
        self.offset += 1
        if self.pos >= len(self.lines):
            self.pos = 0
            if self.shuffle_rng is not None:
                self.shuffle_rng.shuffle(self.lines)

    def read(self, i):
        name = self.lines[i][0]
        # Caffe prefixes root_folder as a plain string (it adds no separator).
        path = self.root + name
        img = read_image_file(path, color=self.color)
        if self.size:
            img = resize_bilinear(img, *self.size)
        return image_to_chw(img), "image %s" % path

    def __call__(self):
        items, names, labels = [], [], []
        for _ in range(self.batch_size):
            while self.offset % self.count != self.rank:
                self.advance()
            arr, name = self.read(self.pos)
            items.append(arr)
            names.append(name)
            labels.append(self.lines[self.pos][1])
            self.advance()
        data = assemble_batch(items, names, self.transformer, self.rng, self.transformer.dtype)
        return data, np.asarray(labels, dtype=self.transformer.dtype)


@register("ImageData", "IMAGE_DATA")
class ImageDataLayer(PrefetchingDataLayer):
    """Images named in a list file, with their integer labels.

    Reads image_data_param source (list file: ``path label`` per line),
    root_folder (prefixed to each path as is), new_height/new_width (resize,
    bilinear like OpenCV's INTER_LINEAR; both or neither), is_color (3-channel
    BGR, else 1 gray channel), shuffle (at start and every epoch), batch_size,
    rand_skip; transform_param applies. Tops: data N x C x h x w, label (N,).
    Shuffles, the skip and the transformer's draws are Caffe's for one seed:
    caffe::shuffle with prefetch_rng_ (again at every wrap of the list, inside
    a batch if the wrap falls there).
    """

    exact_num_top = 2

    def setup(self, bottom, top):
        p = self.layer_param.image_data_param
        if p.batch_size <= 0:
            raise self.error("image_data_param.batch_size must be positive, got %d" % p.batch_size)
        if (p.new_height > 0) != (p.new_width > 0) or p.new_height < 0 or p.new_width < 0:
            raise self.error("new_height and new_width must be set together (got %d and %d)"
                             % (p.new_height, p.new_width))
        if not p.source:
            raise self.error("image_data_param.source (the list file) is empty")
        try:
            transformer = DataTransformer(self.layer_param.transform_param, self.phase,
                                          self.dtype, what="transform_param")
            lines = read_image_list(p.source)
            state = {"shuffle_rng": None, "skip": 0}

            def in_setup():
                # ImageDataLayer::DataLayerSetUp's draws: prefetch_rng_'s seed (then the
                # list is shuffled at once), then rand_skip's offset
                if p.shuffle:
                    state["shuffle_rng"] = _rng.Mt19937(_rng.rng_rand())
                    state["shuffle_rng"].shuffle(lines)
                if p.rand_skip:
                    state["skip"] = _rng.rng_rand() % p.rand_skip

            transform_rng = seed_data_layer_rngs(transformer, in_setup)
            size = (p.new_height, p.new_width) if p.new_height > 0 else None
            batches = _ImageBatches(lines, p.root_folder, size, bool(p.is_color),
                                    state["shuffle_rng"], transformer, p.batch_size, transform_rng,
                                    data_share(self.phase == TEST))
            if state["skip"] >= len(lines):
                raise DataError("rand_skip drew %d but the list %s has only %d images"
                                % (state["skip"], p.source, len(lines)))
            batches.pos = state["skip"]
            first, name = batches.read(batches.pos)
            shape = transformer.infer_shape(first.shape)
        except DataError as exc:
            raise self.error(str(exc)) from None
        top[0].reshape((p.batch_size,) + shape)
        top[1].reshape((p.batch_size,))
        self.transformer = transformer
        self.start_prefetch(batches, 4)
