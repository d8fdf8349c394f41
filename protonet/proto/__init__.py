"""Caffe's protobuf messages.

``caffe_pb2`` is generated from ``proto/caffe.proto`` (wire-compatible with
Caffe 1.0) by ``python -m protonet.proto.generate``; never edit it by hand.
"""
