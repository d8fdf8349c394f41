"""Key-value databases holding Datum records: LMDB (python-lmdb) and LEVELDB (plyvel).

Readers open LMDBs read-only and without a lock file (``lock=False``), so a
database on a read-only mount, or shipped without ``lock.mdb``, opens as
Caffe would read it. Records come in key order (the database's own byte
order, as Caffe's cursor gives them); ``Cursor.next`` wraps to the first
record after the last, as Caffe's Data layer restarts its cursor.
"""
import contextlib
import os
import struct
import threading

from ..proto import caffe_pb2
from .datum import DataError

LMDB = caffe_pb2.DataParameter.LMDB
LEVELDB = caffe_pb2.DataParameter.LEVELDB


def _lmdb():
    try:
        import lmdb
    except ImportError as exc:
        raise DataError("reading LMDB databases needs python-lmdb: `pip install lmdb` (%s)"
                        % exc) from None
    return lmdb


def _backend(backend):
    value = backend
    if isinstance(backend, str):
        value = {"lmdb": LMDB, "leveldb": LEVELDB}.get(backend.lower())
    if value not in (LMDB, LEVELDB):
        raise DataError("unknown DB backend %r (use LMDB or LEVELDB)" % (backend,))
    return value


def _show_key(key):
    try:
        return key.decode("ascii")
    except UnicodeDecodeError:
        return repr(key)


def _check_folder(path, kind):
    if not os.path.exists(path):
        raise DataError("%s '%s' does not exist (looked for %s; relative sources are read from "
                        "the working directory)" % (kind, path, os.path.abspath(path)))
    if not os.path.isdir(path):
        raise DataError("%s '%s' is not a folder (a database is a directory)" % (kind, path))


# LMDB's data.mdb starts with two meta pages; each is a 16-byte page header, then
# the meta: magic, version, address, mapsize, two 48-byte DB records (the first's
# pad field holds the page size), the last page number used and the txn id. LMDB
# mmaps the file and trusts these numbers, so a file cut short (a copy that did
# not finish) kills the process with SIGBUS on the first read past its end.
_META_MAGIC = 0xBEEFC0DE
_META = struct.Struct("<II8xQI44x48xQQ")     # magic, version, mapsize, psize, last_pg, txnid


def check_lmdb_file(path, kind="LMDB"):
    """Refuse (DataError) a data.mdb shorter than its own header says, before lmdb maps it."""
    data_file = os.path.join(path, "data.mdb") if os.path.isdir(path) else path
    try:
        size = os.path.getsize(data_file)
        with open(data_file, "rb") as f:
            head = f.read(16 + _META.size)
            metas = []
            if len(head) == 16 + _META.size:
                first = _META.unpack_from(head, 16)
                metas.append(first)
                if first[0] == _META_MAGIC and 0 < first[3] <= 1 << 20:
                    f.seek(first[3])
                    second = f.read(16 + _META.size)
                    if len(second) == 16 + _META.size:
                        metas.append(_META.unpack_from(second, 16))
    except OSError as exc:
        raise DataError("%s '%s': cannot read %s (%s)" % (kind, path, data_file,
                                                         exc.strerror or exc)) from None
    valid = [m for m in metas if m[0] == _META_MAGIC]
    if not valid:
        if size == 0:
            raise DataError("%s '%s': %s is empty (0 bytes): the database was not written, or "
                            "its copy did not finish" % (kind, path, data_file))
        raise DataError("%s '%s': %s is not an LMDB data file (no LMDB header; %d bytes)"
                        % (kind, path, data_file, size))
    if len(valid) < 2 and len(metas) < 2:
        raise DataError("%s '%s': %s is truncated: %d bytes, shorter than LMDB's two header "
                        "pages" % (kind, path, data_file, size))
    # LMDB uses the meta page with the newer transaction
    magic, version, mapsize, psize, last_pg, txnid = max(valid, key=lambda m: m[5])
    need = (last_pg + 1) * psize
    if size < need:
        raise DataError("%s '%s': %s is truncated: %d bytes, but its header says the "
                        "database fills %d (%d pages of %d bytes); the copy did not finish "
                        "or the disk filled up. Copy or rebuild the database"
                        % (kind, path, data_file, size, need, last_pg + 1, psize))


# python-lmdb refuses to open one environment twice in a process, yet two
# Data layers (a train and a test net, or a net not yet collected) may read
# the same database: readers share one read-only environment per folder.
_ENVS = {}
_ENVS_LOCK = threading.Lock()


def _acquire_env(path):
    lmdb = _lmdb()
    real = os.path.realpath(path)
    with _ENVS_LOCK:
        entry = _ENVS.get(real)
        if entry is None:
            check_lmdb_file(path)
            try:
                env = lmdb.open(path, readonly=True, lock=False, readahead=False,
                                max_readers=512)
            except lmdb.Error as exc:
                raise DataError("LMDB '%s' cannot be opened: %s" % (path, exc)) from None
            entry = _ENVS[real] = [env, 0]
        entry[1] += 1
        return real, entry[0]


def _release_env(real):
    with _ENVS_LOCK:
        entry = _ENVS.get(real)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _ENVS[real]
            entry[0].close()


class Cursor:
    """Walks the records in key order; ``next()`` wraps around to the first one."""

    def __init__(self, db, restart):
        self.db = db
        self._restart = restart
        self._iter = None
        self.key = self.value = None
        self.seek_first()

    def seek_first(self):
        self._iter = self._restart()
        if not self._advance():
            raise DataError("%s '%s' is empty: it holds no records" % (self.db.kind, self.db.path))

    def _advance(self):
        try:
            with self.db.reading():
                self.key, self.value = next(self._iter)
        except StopIteration:
            return False
        return True

    def next(self):
        """Move to the next record; returns True when it wrapped to the first one."""
        if self._advance():
            return False
        self.seek_first()
        return True

    @property
    def key_str(self):
        return _show_key(self.key)


class LMDBReader:
    """A read-only LMDB: ``len()``, ``cursor()``, ``items()``, ``get(key)``."""

    kind = "LMDB"

    def __init__(self, path):
        self.path = os.fspath(path)
        _check_folder(self.path, self.kind)
        if not os.path.exists(os.path.join(self.path, "data.mdb")):
            raise DataError("LMDB '%s' has no data.mdb: not an LMDB database" % self.path)
        self._real, self.env = _acquire_env(self.path)
        self._txn = None

    @contextlib.contextmanager
    def reading(self):
        """lmdb's own errors (a damaged page: MDB_CORRUPTED, MDB_PAGE_NOTFOUND) as DataError
        naming the database, not a bare lmdb traceback."""
        lmdb = _lmdb()
        try:
            yield
        except lmdb.Error as exc:
            raise DataError("LMDB '%s' is damaged and cannot be read: %s (rebuild or copy the "
                            "database again)" % (self.path, exc)) from None

    def __len__(self):
        with self.reading():
            return int(self.env.stat()["entries"])

    def _records(self):
        # One long read transaction; a read-only, lock-free env never blocks a writer.
        with self.reading():
            if self._txn is None:
                self._txn = self.env.begin(buffers=False)
            cur = self._txn.cursor()
            return iter(cur)

    def cursor(self):
        return Cursor(self, self._records)

    def items(self):
        """(key, value) bytes pairs in key order, once."""
        with self.reading(), self.env.begin(buffers=False) as txn:
            for kv in txn.cursor():
                yield kv

    def get(self, key):
        with self.reading(), self.env.begin(buffers=False) as txn:
            return txn.get(key if isinstance(key, bytes) else str(key).encode())

    def close(self):
        if self.env is None:
            return
        if self._txn is not None:
            self._txn.abort()
            self._txn = None
        self.env = None
        _release_env(self._real)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LevelDBReader:
    """A LEVELDB database read through plyvel (same interface as LMDBReader)."""

    kind = "LEVELDB"

    def __init__(self, path):
        self.path = os.fspath(path)
        _check_folder(self.path, self.kind)
        if os.path.exists(os.path.join(self.path, "data.mdb")):
            raise DataError("'%s' is an LMDB database (it holds data.mdb) but the backend is "
                            "LEVELDB (Caffe's default): set `backend: LMDB` in data_param"
                            % self.path)
        try:
            import plyvel
        except ImportError:
            raise DataError("LEVELDB '%s' needs plyvel to be read: `pip install plyvel` "
                            "(or convert the database to LMDB and set backend: LMDB)"
                            % self.path) from None
        try:
            self.db = plyvel.DB(self.path, create_if_missing=False)
        except Exception as exc:
            raise DataError("LEVELDB '%s' cannot be opened: %s" % (self.path, exc)) from None

    @contextlib.contextmanager
    def reading(self):
        import plyvel
        try:
            yield
        except getattr(plyvel, "Error", ()) as exc:
            raise DataError("LEVELDB '%s' is damaged and cannot be read: %s" % (self.path, exc)) \
                from None

    def __len__(self):
        with self.reading():
            return sum(1 for _ in self.db.iterator(include_value=False))

    def cursor(self):
        return Cursor(self, self.db.iterator)

    def items(self):
        return iter(self.db.iterator())

    def get(self, key):
        return self.db.get(key if isinstance(key, bytes) else str(key).encode())

    def close(self):
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_db(source, backend=LMDB):
    """A reader for ``source`` with ``backend`` (DataParameter.LMDB / LEVELDB or their names)."""
    if _backend(backend) == LEVELDB:
        return LevelDBReader(source)
    return LMDBReader(source)


class LMDBWriter:
    """Writes records into a new or existing LMDB; the map grows as needed.

    Use as a context manager; ``put(key, value)`` takes str/bytes keys and
    bytes or Datum values. Writes are committed every ``commit_every`` puts
    and on close.
    """

    def __init__(self, path, map_size=1 << 24, commit_every=1000):
        self.path = os.fspath(path)
        os.makedirs(self.path, exist_ok=True)
        if os.path.realpath(self.path) in _ENVS:
            raise DataError("LMDB '%s' is open for reading in this process (a Data layer or "
                            "reader); close it before writing" % self.path)
        self._lmdb = _lmdb()
        if os.path.exists(os.path.join(self.path, "data.mdb")):
            check_lmdb_file(self.path)       # adding to a torn database would crash too
        try:
            self.env = self._lmdb.open(self.path, map_size=map_size, subdir=True)
        except self._lmdb.Error as exc:
            raise DataError("LMDB '%s' cannot be opened for writing: %s" % (self.path, exc)) from None
        self.commit_every = commit_every
        self._pending = []
        self.count = 0

    def put(self, key, value):
        if not isinstance(key, bytes):
            key = str(key).encode("ascii")
        if not isinstance(value, (bytes, bytearray)):
            value = value.SerializeToString()
        self._pending.append((key, bytes(value)))
        self.count += 1
        if len(self._pending) >= self.commit_every:
            self.commit()

    def commit(self):
        while self._pending:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value in self._pending:
                        txn.put(key, value)
                self._pending = []
            except self._lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def close(self):
        self.commit()
        self.env.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *rest):
        if exc_type is None:
            self.close()
        else:
            self._pending = []
            self.env.close()


def write_lmdb(path, records, key_format="%09d"):
    """Write ``records`` (Datum, bytes, or (key, value) pairs) into the LMDB at ``path``.

    Plain records get keys ``key_format % index`` (Caffe's convert tools and
    the parity data use '%09d'). Returns the number written.
    """
    with LMDBWriter(path) as writer:
        for i, rec in enumerate(records):
            if isinstance(rec, tuple):
                writer.put(*rec)
            else:
                writer.put(key_format % i, rec)
        return writer.count
