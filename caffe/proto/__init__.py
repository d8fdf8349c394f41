"""``caffe.proto``: Caffe's protobuf messages, as pycaffe exposes them.

``caffe.proto.caffe_pb2`` *is* ``protonet.proto.caffe_pb2`` (one module object),
so messages built through either name are the same classes and interoperate.
"""
from . import caffe_pb2  # noqa: F401
