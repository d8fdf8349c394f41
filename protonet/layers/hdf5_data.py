"""HDF5Data: rows of datasets in .h5 files listed in a text file (needs h5py)."""
import numpy as np

from .. import backend, rng as _rng
from ..comm import data_share
from ..layer import TEST, Layer, register


def _h5py():
    try:
        import h5py
    except ImportError as exc:
        raise ImportError("HDF5Data needs h5py: `pip install h5py` (%s)" % exc) from None
    return h5py


def _shuffle(order):
    # Caffe shuffles with std::random_shuffle, i.e. C's rand(), not its seeded generator
    _rng.c_rand().random_shuffle(order)


@register("HDF5Data", "HDF5_DATA")
class HDF5DataLayer(Layer):
    """One row per batch item from each top's dataset, file after file.

    Reads hdf5_data_param source (a text file naming .h5 files, separated by
    whitespace, paths as given), batch_size, shuffle (file order each pass
    and row order within each file). Each top reads the dataset named after
    it; the datasets of a file must have the same number of rows. Top j has
    shape (batch_size,) + dataset_j.shape[1:]. As Caffe, a whole file is
    loaded into memory and no transform_param is allowed. With N solvers, a
    TRAIN-phase layer of rank r takes the rows whose running offset (counted
    over files and passes) is r mod N, as Caffe's Skip(). Shuffles are
    Caffe's: std::random_shuffle driven by C's rand(), which Caffe never
    seeds, so the orders are the same in every run whatever random_seed
    (as in Caffe); they draw nothing from protonet.rng's main stream.
    """

    exact_num_bottom = 0
    min_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.hdf5_data_param
        if self.layer_param.HasField("transform_param"):
            raise self.error("HDF5Data does not transform data; remove transform_param")
        if p.batch_size <= 0:
            raise self.error("hdf5_data_param.batch_size must be positive, got %d" % p.batch_size)
        try:
            self._h5 = _h5py()
        except ImportError as exc:
            raise self.error(str(exc)) from None
        try:
            with open(p.source) as f:
                self.files = f.read().split()
        except OSError as exc:
            raise self.error("cannot read the HDF5 list file %s (%s)"
                             % (p.source, exc.strerror or exc)) from None
        if not self.files:
            raise self.error("must have at least 1 HDF5 filename listed in %s" % p.source)
        self.names = list(self.layer_param.top)
        self.shuffle = bool(p.shuffle)
        self.file_order = np.arange(len(self.files))
        if self.shuffle:
            _shuffle(self.file_order)
        self.current_file = 0
        self.rank, self.count = data_share(self.phase == TEST)
        self.offset = 0
        self.row_shapes = None
        self._load(self.files[self.file_order[0]])
        self.row_shapes = [a.shape[1:] for a in self.arrays]
        for t, a in zip(top, self.arrays):
            t.reshape((p.batch_size,) + a.shape[1:])

    def _load(self, path):
        try:
            with self._h5.File(path, "r") as f:
                arrays = []
                for name in self.names:
                    if name not in f:
                        raise self.error("%s has no dataset '%s' (a top's name); it holds: %s"
                                         % (path, name, ", ".join(sorted(f.keys()))))
                    a = np.asarray(f[name][()], dtype=self.dtype)
                    if a.ndim < 1:
                        raise self.error("%s: dataset '%s' is a scalar; need rows" % (path, name))
                    arrays.append(a)
        except OSError as exc:
            raise self.error("cannot read HDF5 file %s (%s)" % (path, exc)) from None
        rows = arrays[0].shape[0]
        for name, a in zip(self.names, arrays):
            if a.shape[0] != rows:
                raise self.error("%s: dataset '%s' has %d rows but '%s' has %d"
                                 % (path, name, a.shape[0], self.names[0], rows))
        if self.row_shapes is not None:
            for name, a, shape in zip(self.names, arrays, self.row_shapes):
                if a.shape[1:] != shape:
                    raise self.error("%s: dataset '%s' rows are %s but the first file's are %s"
                                     % (path, name, a.shape[1:], shape))
        if rows == 0:
            raise self.error("%s: the datasets have no rows" % path)
        self.arrays = arrays
        self.perm = np.arange(rows)
        if self.shuffle:
            _shuffle(self.perm)
        self.row = 0

    def _next_file(self):
        if len(self.files) > 1:
            self.current_file += 1
            if self.current_file == len(self.files):
                self.current_file = 0
                if self.shuffle:
                    _shuffle(self.file_order)
            self._load(self.files[self.file_order[self.current_file]])
        # Caffe's Next() shuffles the rows once more here, also right after loading a file
        self.row = 0
        if self.shuffle:
            _shuffle(self.perm)

    def allow_force_backward(self, bottom_index):
        return False

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        batch = self.layer_param.hdf5_data_param.batch_size
        xp = self.xp
        for t, shape in zip(top, self.row_shapes):
            t.reshape((batch,) + shape)
        filled = 0
        while filled < batch:
            left = len(self.perm) - self.row
            if self.count == 1:
                take = min(batch - filled, left)
                idx = self.perm[self.row:self.row + take]
                used = take
            else:
                # this rank's rows among the rest of the file
                mine = np.flatnonzero((self.offset + np.arange(left)) % self.count == self.rank)
                mine = mine[:batch - filled]
                take = len(mine)
                idx = self.perm[self.row + mine]
                used = int(mine[-1]) + 1 if take == batch - filled else left
            for t, a in zip(top, self.arrays):
                rows = a[idx]
                t.data[filled:filled + take] = rows if xp is np else xp.asarray(rows)
            filled += take
            self.row += used
            self.offset += used
            if self.row == len(self.perm):
                self._next_file()

    def backward(self, top, propagate_down, bottom):
        pass


@register("HDF5Output", "HDF5_OUTPUT")
class HDF5OutputLayer(Layer):
    """Writes bottom 0 as dataset "data" and bottom 1 as "label" of hdf5_output_param.file_name.

    As Caffe: the file is created (emptied) at setup; a forward writes both
    blobs with their legacy 4-d shape (num, channels, height, width) as
    float32. Caffe can write them once per net (a second forward fails to
    make the datasets again); here a second forward is that error too, in
    words, rather than a silent overwrite of the first batch.
    """

    exact_num_bottom = 2
    exact_num_top = 0

    def setup(self, bottom, top):
        self.file_name = self.layer_param.hdf5_output_param.file_name
        if not self.file_name:
            raise self.error("hdf5_output_param.file_name is required")
        try:
            self._h5 = _h5py()
        except ImportError as exc:
            raise self.error(str(exc).replace("HDF5Data", "HDF5Output")) from None
        try:
            self._h5.File(self.file_name, "w").close()
        except OSError as exc:
            raise self.error("Failed to open HDF5 file %s (%s)" % (self.file_name, exc)) from None
        self.written = False

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        data, label = bottom
        if data.num != label.num:
            raise self.error("data blob and label blob must have the same batch size (%d vs %d)"
                             % (data.num, label.num))
        if self.written:
            raise self.error("%s already holds this net's data and label: Caffe's HDF5Output "
                             "writes one batch per net (run one iteration, or give the batch "
                             "all the rows)" % self.file_name)
        from ..log import get_logger
        log = get_logger()
        log.info("Saving HDF5 file %s", self.file_name)
        with self._h5.File(self.file_name, "a") as f:
            for name, blob in (("data", data), ("label", label)):
                values = np.asarray(backend.to_host(blob.data), dtype=np.float32)
                legacy = (blob.num, blob.channels, blob.height, blob.width)
                f.create_dataset(name, data=values.reshape(legacy))
        self.written = True
        log.info("Successfully saved %d rows", data.num)

    def backward(self, top, propagate_down, bottom):
        pass          # a sink: nothing flows back, even under force_backward (as in Caffe)
