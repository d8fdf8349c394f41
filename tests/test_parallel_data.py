"""Data layers take their share of the records with several solvers (Caffe's Skip()).

In one process: ``set_solver_count`` / ``set_solver_rank`` as pycaffe's
``caffe.set_solver_count`` would, then each rank's batches are read and the
union of the ranks' batches is checked against one solver's batch of N times
the size.
"""
import h5py
import numpy as np
import pytest

import protonet
from protonet import comm
from protonet.data import array_to_datum, write_lmdb
from protonet.layer import TEST, TRAIN


@pytest.fixture
def solvers():
    """Set (rank, count) for the nets built inside; back to one solver afterwards."""
    def use(rank, count):
        comm.set_solver_count(count)
        comm.set_solver_rank(rank)
    yield use
    comm.set_solver_count(1)
    comm.set_solver_rank(0)


def make_net(tmp_path, layer, phase=TRAIN):
    path = tmp_path / "net.prototxt"
    path.write_text('name: "n" ' + layer)
    return protonet.Net(str(path), phase)


def labels_read(net, passes, top="label"):
    out = []
    for _ in range(passes):
        net.forward()
        out.append(np.asarray(net.blobs[top].data).astype(int).tolist())
    return out


def lmdb_layer(tmp_path, n):
    db = tmp_path / "db"
    write_lmdb(str(db), [array_to_datum(np.full((1, 2, 2), i, np.uint8), i) for i in range(n)])
    return ('layer { name: "d" type: "Data" top: "data" top: "label" '
            'data_param { source: "%s" batch_size: %%d backend: LMDB } }' % db)


def interleave(per_rank):
    """Batch k of one solver at N times the batch size, from the ranks' batch k."""
    return [sum(zip(*[batches[k] for batches in per_rank]), ()) for k in range(len(per_rank[0]))]


@pytest.mark.parametrize("n_records", [12, 7])
def test_data_layer_ranks_read_interleaved_records(tmp_path, solvers, n_records):
    layer = lmdb_layer(tmp_path, n_records)
    solvers(0, 1)
    single = labels_read(make_net(tmp_path, layer % 6), 4)
    per_rank = []
    for rank in range(2):
        solvers(rank, 2)
        per_rank.append(labels_read(make_net(tmp_path, layer % 3), 4))
    assert per_rank[0][0] == [0, 2, 4] and per_rank[1][0] == [1, 3, 5]
    # across the wrap to the first record too (7 records: the offset keeps counting)
    assert [list(b) for b in interleave(per_rank)] == single


def test_data_layer_test_phase_reads_everything(tmp_path, solvers):
    layer = lmdb_layer(tmp_path, 8)
    solvers(1, 2)
    assert labels_read(make_net(tmp_path, layer % 4, TEST), 1) == [[0, 1, 2, 3]]


def test_rank_beyond_count_is_an_error(tmp_path, solvers):
    layer = lmdb_layer(tmp_path, 8)
    solvers(2, 2)
    with pytest.raises(Exception, match="solver rank 2 is not below the solver count 2"):
        make_net(tmp_path, layer % 4)


def test_image_data_ranks_split_the_list(tmp_path, solvers):
    from PIL import Image
    lines = []
    for i in range(5):
        name = "im%d.png" % i
        Image.fromarray(np.full((2, 2), i * 10, np.uint8)).save(tmp_path / name)
        lines.append("%s %d" % (name, i))
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    layer = ('layer { name: "d" type: "ImageData" top: "data" top: "label" image_data_param '
             '{ source: "%s" root_folder: "%s/" batch_size: %%d is_color: false } }'
             % (tmp_path / "list.txt", tmp_path))
    solvers(0, 1)
    single = labels_read(make_net(tmp_path, layer % 4), 3)
    per_rank = []
    for rank in range(2):
        solvers(rank, 2)
        per_rank.append(labels_read(make_net(tmp_path, layer % 2), 3))
    assert per_rank[1] == [[1, 3], [0, 2], [4, 1]]
    assert [list(b) for b in interleave(per_rank)] == single


def test_hdf5_data_ranks_split_rows_across_files(tmp_path, solvers):
    names = []
    for f, rows in enumerate((3, 4)):
        start = 0 if f == 0 else 3
        with h5py.File(tmp_path / ("f%d.h5" % f), "w") as h:
            h["label"] = np.arange(start, start + rows, dtype=np.float32)
        names.append(str(tmp_path / ("f%d.h5" % f)))
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")
    layer = ('layer { name: "d" type: "HDF5Data" top: "label" hdf5_data_param '
             '{ source: "%s" batch_size: %%d } }' % (tmp_path / "list.txt"))
    solvers(0, 1)
    single = labels_read(make_net(tmp_path, layer % 4), 5)
    per_rank = []
    for rank in range(2):
        solvers(rank, 2)
        per_rank.append(labels_read(make_net(tmp_path, layer % 2), 5))
    assert per_rank[0][:2] == [[0, 2], [4, 6]]
    assert [list(b) for b in interleave(per_rank)] == single
