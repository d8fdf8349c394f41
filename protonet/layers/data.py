"""Data: batches of Datum records read from an LMDB (or LEVELDB) in key order.

Also the pieces the other prefetching data layers share: the background
reader (``Prefetcher``) and the batch assembly (``assemble_batch``).
"""
import queue
import threading
import weakref

import numpy as np

from .. import rng as _rng
from ..data.datum import DataError, datum_to_array, parse_datum
from ..data.db import open_db
from ..data.transform import DataTransformer
from ..comm import data_share
from ..layer import TEST, Layer, register
from ..log import get_logger

log = get_logger()


class Prefetcher:
    """Calls ``load()`` on a daemon thread, keeping up to ``depth`` results queued.

    As Caffe's prefetching data layers do, so the engine does not wait on
    disk. An exception in ``load`` ends the thread and is re-raised by every
    later ``get()``; ``stop()`` ends the thread (it never blocks exit).
    ``load.close()``, if present, runs on the thread when it ends.
    """

    def __init__(self, load, depth=4, name="data"):
        self._load = load
        self._queue = queue.Queue(maxsize=max(1, int(depth)))
        self._stopping = threading.Event()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="protonet-prefetch-%s" % name,
                                        daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while not self._stopping.is_set():
                if not self._put((True, self._load())):
                    break
        except BaseException as exc:  # handed to the consumer, never swallowed
            self._put((False, exc))
        finally:
            close = getattr(self._load, "close", None)
            if close is not None:
                close()

    def _put(self, item):
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self):
        if self._error is not None:
            raise self._error
        while True:
            try:
                ok, value = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._thread.is_alive():
                    continue
                try:
                    ok, value = self._queue.get_nowait()
                except queue.Empty:
                    raise RuntimeError("the prefetch thread has stopped; no more batches") from None
            if not ok:
                self._error = value
                raise value
            return value

    def stop(self, timeout=5.0):
        """Ask the thread to end; wait up to ``timeout`` seconds (0: do not wait)."""
        self._stopping.set()
        if timeout and self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)


def init_transform_rng(transformer):
    """DataTransformer::InitRand: a generator seeded from one main-stream draw, if needed."""
    if transformer.needs_rand:
        return _rng.Mt19937(_rng.rng_rand())
    return None


def seed_data_layer_rngs(transformer, in_setup=None):
    """The main-stream draws of a Caffe prefetching data layer's set-up, in Caffe's order.

    BaseDataLayer::LayerSetUp seeds a transformer generator (replaced below),
    then the layer's own set-up runs (``in_setup``, e.g. ImageData's shuffle
    seed), then BasePrefetchingDataLayer::LayerSetUp seeds the transformer
    generator that is used and StartInternalThread draws the prefetch
    thread's seed. Returns the transformer's generator (None without mirror
    or a TRAIN crop). The batches are transformed in order on the prefetch
    thread with that generator, so they do not depend on thread timing.
    """
    init_transform_rng(transformer)
    if in_setup is not None:
        in_setup()
    transform_rng = init_transform_rng(transformer)
    _rng.rng_rand()        # the prefetch thread's seed; nothing on that thread draws from it
    return transform_rng


def assemble_batch(items, names, transformer, rng, dtype):
    """Stack C x H x W ``items`` and transform them into one N x C x h x w batch.

    As in Caffe, the first item fixes the batch's shape: the others need the
    same channels and, without crop_size, the same height and width (with
    crop_size each item is cropped on its own). ``names[i]`` says where item
    i came from, for errors.
    """
    first = items[0].shape
    if all(a.shape == first for a in items):
        return transformer.transform(np.stack(items), rng)
    for name, a in zip(names, items):
        if a.shape[0] != first[0] or (not transformer.crop_size and a.shape != first):
            raise DataError("%s has shape %s but the batch's first record (%s) has shape %s; "
                            "the records of one batch must have one shape"
                            % (name, "x".join(map(str, a.shape)), names[0],
                               "x".join(map(str, first))))
    out = np.empty((len(items),) + transformer.infer_shape(first), dtype=transformer.dtype)
    for i, (name, a) in enumerate(zip(names, items)):
        transformer.check(a.shape, what=name)
        transformer.transform(a[None], rng, out=out[i:i + 1])
    return out


class _DatumBatches:
    """Reads ``batch_size`` records per call from a DB cursor (runs on the prefetch thread)."""

    def __init__(self, db, cursor, transformer, batch_size, with_label, rng, share=(0, 1)):
        self.db, self.cursor = db, cursor
        # Caffe's Skip(): with N solvers, rank r keeps the records whose running
        # offset (counted across wraps) is r mod N
        self.rank, self.count = share
        self.offset = 0
        self.transformer = transformer
        self.batch_size = batch_size
        self.with_label = with_label
        self.rng = rng

    def where(self):
        return "%s '%s', key '%s'" % (self.db.kind, self.db.path, self.cursor.key_str)

    def read(self):
        """The record under the cursor as (array, label); does not move the cursor."""
        what = self.where()
        datum = parse_datum(self.cursor.value, what)
        t = self.transformer
        return datum_to_array(datum, t.force_color, t.force_gray, what=what), datum.label

    def __call__(self):
        items, labels, names = [], [], []
        for _ in range(self.batch_size):
            while self.offset % self.count != self.rank:
                self.cursor.next()
                self.offset += 1
            names.append(self.where())
            arr, label = self.read()
            items.append(arr)
            labels.append(label)
            self.cursor.next()           # wraps to the first record after the last
            self.offset += 1
        data = assemble_batch(items, names, self.transformer, self.rng, self.transformer.dtype)
        label = np.asarray(labels, dtype=self.transformer.dtype) if self.with_label else None
        return data, label

    def close(self):
        self.db.close()


class PrefetchingDataLayer(Layer):
    """Base of the data layers that read on a background thread (Data, ImageData).

    Subclasses' setup calls ``start_prefetch(load, depth)``; forward copies
    the next (data, label) batch into the tops, reshaping them to the batch
    as Caffe does. No bottoms and no backward.
    """

    exact_num_bottom = 0
    _prefetcher = None

    def start_prefetch(self, load, depth=4):
        self.stop_prefetch()
        self._prefetcher = Prefetcher(load, depth, self.name)
        # Stop the thread when the layer goes away (it holds no reference to the
        # layer). Without waiting: garbage collection may run this on any thread.
        self._finalizer = weakref.finalize(self, self._prefetcher.stop, 0)

    def stop_prefetch(self):
        """Stop the reader thread and wait for it (it closes its database)."""
        if self._prefetcher is not None:
            self._finalizer.detach()
            self._prefetcher.stop()
            self._prefetcher = None

    close = stop_prefetch

    def allow_force_backward(self, bottom_index):
        return False

    def reshape(self, bottom, top):
        pass  # the tops take each batch's shape in forward

    def forward(self, bottom, top):
        if self._prefetcher is None:
            raise self.error("the layer was not set up (or was closed)")
        try:
            data, label = self._prefetcher.get()
        except DataError as exc:
            raise self.error(str(exc)) from exc
        except Exception as exc:
            raise self.error("reading the next batch failed: %s: %s"
                             % (type(exc).__name__, exc)) from exc
        self._put(top[0], data)
        if len(top) > 1:
            self._put(top[1], label)

    def backward(self, top, propagate_down, bottom):
        pass

    def _put(self, blob, values):
        blob.reshape(values.shape)
        blob.data[...] = values if self.xp is np else self.xp.asarray(values)


@register("Data", "DATA")
class DataLayer(PrefetchingDataLayer):
    """Records from a database, transformed per ``transform_param``.

    Reads data_param.source (a DB folder, relative to the working
    directory), batch_size, backend (LMDB; LEVELDB needs plyvel), prefetch
    (batches read ahead). rand_skip is ignored, as in Caffe 1.0 (deprecated
    there; ImageData still honours its own). Tops: data N x C x h x w and, optionally, label (N,).
    Records are read in key order, wrapping to the first after the last.
    A batch takes its shape from its first record. With N solvers (data
    parallelism) a TRAIN-phase layer of rank r reads records r, r+N, r+2N...
    """

    min_top = 1
    max_top = 2

    def setup(self, bottom, top):
        dp = self.layer_param.data_param
        if not dp.source:
            raise self.error("data_param.source is empty: set it to the database to read "
                             "(or give a dataset with --dataset, which fills it in)")
        if dp.batch_size <= 0:
            raise self.error("data_param.batch_size must be positive, got %d" % dp.batch_size)
        db = None
        try:
            transformer = DataTransformer(self.layer_param.transform_param, self.phase,
                                          self.dtype, what="transform_param")
            db = open_db(dp.source, dp.backend)
            cursor = db.cursor()
            if dp.rand_skip:
                log.info("layer '%s': data_param.rand_skip is deprecated and ignored, as in "
                         "Caffe 1.0: reading starts at the first record", self.name)
            transform_rng = seed_data_layer_rngs(transformer)
            batches = _DatumBatches(db, cursor, transformer, dp.batch_size, len(top) > 1,
                                    transform_rng, data_share(self.phase == TEST))
            first, _ = batches.read()
            shape = transformer.infer_shape(first.shape)
        except DataError as exc:
            if db is not None:
                db.close()
            raise self.error(str(exc)) from None
        top[0].reshape((dp.batch_size,) + shape)
        if len(top) > 1:
            top[1].reshape((dp.batch_size,))
        self.transformer = transformer
        self.source = dp.source
        self.start_prefetch(batches, dp.prefetch)
