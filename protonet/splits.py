"""Automatic Split layers: a blob read by several layers gets one copy per reader,
so each reader's gradient lands in its own diff and the Split sums them.

Names follow Caffe: layer ``<blob>_<producer>_<top index>_split`` with tops
``<that>_<k>``. A top that carries a non-zero loss_weight counts as one extra
reader (its split output 0 carries the weight).
"""
from .proto import caffe_pb2


def split_layer_name(layer_name, blob_name, top_index):
    return "%s_%s_%d_split" % (blob_name, layer_name, top_index)


def split_blob_name(layer_name, blob_name, top_index, k):
    return "%s_%d" % (split_layer_name(layer_name, blob_name, top_index), k)


class SplitError(ValueError):
    pass


def insert_splits(param, locate=lambda name: ""):
    last_top = {}            # blob name -> (layer index, top index) of its latest producer
    source_of = {}           # (layer, bottom index) -> producing (layer, top)
    readers = {}             # (layer, top) -> number of readers
    loss_weight = {}         # (layer, top) -> loss weight
    for i, layer in enumerate(param.layer):
        for j, name in enumerate(layer.bottom):
            if name not in last_top:
                raise SplitError("Unknown bottom blob '%s' (layer '%s', bottom %d)%s"
                                 % (name, layer.name, j, locate(layer.name)))
            src = last_top[name]
            source_of[(i, j)] = src
            readers[src] = readers.get(src, 0) + 1
        for j, name in enumerate(layer.top):
            last_top[name] = (i, j)
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            src = last_top[layer.top[j]]
            loss_weight[src] = layer.loss_weight[j]
            if layer.loss_weight[j]:
                readers[src] = readers.get(src, 0) + 1

    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    next_split = {}
    for i, orig in enumerate(param.layer):
        layer = out.layer.add()
        layer.CopyFrom(orig)
        for j in range(len(layer.bottom)):
            src = source_of[(i, j)]
            if readers.get(src, 0) > 1:
                k = next_split.get(src, 0)
                next_split[src] = k + 1
                layer.bottom[j] = split_blob_name(param.layer[src[0]].name, layer.bottom[j], src[1], k)
        for j, top_name in enumerate(orig.top):
            n = readers.get((i, j), 0)
            if n <= 1:
                continue
            w = loss_weight.get((i, j), 0.0)
            split = out.layer.add()
            split.name = split_layer_name(orig.name, top_name, j)
            split.type = "Split"
            split.bottom.append(top_name)
            for k in range(n):
                split.top.append(split_blob_name(orig.name, top_name, j, k))
                if w:
                    split.loss_weight.append(w if k == 0 else 0.0)
            if w:
                del layer.loss_weight[:]
                next_split[(i, j)] = next_split.get((i, j), 0) + 1
    return out
