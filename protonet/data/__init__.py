"""Data: Datum records, LMDB/LEVELDB databases, Caffe's data transformer.

``datum_to_array``/``array_to_datum`` mirror pycaffe's ``caffe.io``;
``open_db`` reads a database in key order; ``write_lmdb``/``LMDBWriter``
write one; ``DataTransformer`` applies a ``transform_param`` to a batch.
"""
from .datum import (DataError, array_to_datum, datum_to_array, decode_image, encode_image,
                    image_to_chw, parse_datum, read_image_file)
from .db import LEVELDB, LMDB, LMDBReader, LMDBWriter, LevelDBReader, open_db, write_lmdb
from .transform import DataTransformer, resize_bilinear

__all__ = ["DataError", "array_to_datum", "datum_to_array", "decode_image", "encode_image",
           "image_to_chw", "parse_datum", "read_image_file", "LEVELDB", "LMDB", "LMDBReader",
           "LMDBWriter", "LevelDBReader", "open_db", "write_lmdb", "DataTransformer",
           "resize_bilinear"]
