"""Alias of :mod:`protonet.proto.caffe_pb2` under pycaffe's name.

A second generated copy would define a second set of message classes
(``isinstance`` and ``CopyFrom`` would fail across them), so this module
replaces itself in ``sys.modules`` with protonet's own.
"""
import sys

from protonet.proto import caffe_pb2 as _caffe_pb2

sys.modules[__name__] = _caffe_pb2
