"""Caffe's example nets as prototxt text, for tests/test_model_zoo.py.

Each generator returns the published net layer for layer (names, tops, param
specs, fillers, include rules) with one change: its data layer (Data, or
fcn's Python data layer) becomes an ``Input`` (or ``DummyData``) layer with
the same name and tops, so split blobs get the names Caffe gives them.
Batch size and, where a net allows it, the spatial size are arguments.

Sources (read from GitHub):
  BVLC/caffe examples/mnist/lenet_train_test.prototxt,
  examples/cifar10/cifar10_quick_train_test.prototxt, cifar10_full_train_test.prototxt,
  cifar10_full_sigmoid_train_test_bn.prototxt, models/bvlc_alexnet/train_val.prototxt,
  models/bvlc_alexnet/deploy.prototxt, models/bvlc_reference_caffenet/train_val.prototxt,
  models/bvlc_googlenet/deploy.prototxt, examples/siamese/mnist_siamese_train_test.prototxt,
  examples/mnist/mnist_autoencoder.prototxt;
  shelhamer/fcn.berkeleyvision.org voc-fcn8s/deploy.prototxt, voc-fcn8s-atonce/net.py.
"""


class E(str):
    """An enum value: written bare (``pool: MAX``), not quoted."""


def _value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, E):
        return str(v)
    if isinstance(v, str):
        return '"%s"' % v
    return repr(v)


def msg(fields, indent=1):
    """Text format for a dict: nested dicts are messages, lists repeated fields."""
    pad = "  " * indent
    out = []
    for key, value in fields.items():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, dict):
                out.append("%s%s {\n%s%s}" % (pad, key, msg(v, indent + 1), pad))
            else:
                out.append("%s%s: %s" % (pad, key, _value(v)))
    return "".join(line + "\n" for line in out)


def layer(name, type_, bottom=(), top=(), **fields):
    body = dict(name=name, type=type_)
    body["bottom"] = [bottom] if isinstance(bottom, str) else list(bottom)
    body["top"] = [top] if isinstance(top, str) else list(top)
    body.update(fields)
    return "layer {\n%s}\n" % msg(body)


def net(name, *layers, force_backward=False):
    head = 'name: "%s"\n' % name if name else ""
    if force_backward:
        head += "force_backward: true\n"
    return head + "".join(layers)


def shape(*dims):
    return dict(dim=list(dims))


def input_layer(name, tops, shapes):
    return layer(name, "Input", top=tops, input_param=dict(shape=[shape(*s) for s in shapes]))


# ----------------------------------------------------------------- building blocks
def filler(type_, **kw):
    return dict(type=type_, **kw)


def lr(*mults, decay=None):
    """param specs: lr(1, 2) -> [{lr_mult: 1}, {lr_mult: 2}]; decay=(1, 0) adds decay_mult."""
    specs = [dict(lr_mult=m) for m in mults]
    for spec, d in zip(specs, decay or ()):
        spec["decay_mult"] = d
    return specs


STD_PARAMS = lr(1, 2, decay=(1, 0))           # the ImageNet nets' weight / bias specs


def conv(name, bottom, num_output, kernel_size, top=None, params=None, wf=None, bf=None,
         **conv_fields):
    cp = dict(num_output=num_output)
    cp.update({k: v for k, v in conv_fields.items() if k in ("pad", "bias_term")})
    cp["kernel_size"] = kernel_size
    cp.update({k: v for k, v in conv_fields.items() if k not in ("pad", "bias_term")})
    if wf is not None:
        cp["weight_filler"] = wf
    if bf is not None:
        cp["bias_filler"] = bf
    fields = {}
    if params is not None:
        fields["param"] = params
    fields["convolution_param"] = cp
    return layer(name, "Convolution", bottom, top or name, **fields)


def ip(name, bottom, num_output, top=None, params=None, wf=None, bf=None):
    p = dict(num_output=num_output)
    if wf is not None:
        p["weight_filler"] = wf
    if bf is not None:
        p["bias_filler"] = bf
    fields = {}
    if params is not None:
        fields["param"] = params
    fields["inner_product_param"] = p
    return layer(name, "InnerProduct", bottom, top or name, **fields)


def pool(name, bottom, kind, kernel_size, stride, pad=None, top=None):
    p = dict(pool=E(kind), kernel_size=kernel_size, stride=stride)
    if pad is not None:
        p["pad"] = pad
    return layer(name, "Pooling", bottom, top or name, pooling_param=p)


def relu(name, blob):
    return layer(name, "ReLU", blob, blob)


def lrn(name, bottom, local_size, alpha, beta, within=False):
    p = dict(local_size=local_size, alpha=alpha, beta=beta)
    if within:
        p["norm_region"] = E("WITHIN_CHANNEL")
    return layer(name, "LRN", bottom, name, lrn_param=p)


def dropout(name, blob, ratio):
    return layer(name, "Dropout", blob, blob, dropout_param=dict(dropout_ratio=ratio))


def accuracy(name, bottom, label="label", top_k=None):
    fields = dict(include=dict(phase=E("TEST")))
    if top_k is not None:
        fields = dict(accuracy_param=dict(top_k=top_k), **fields)
    return layer(name, "Accuracy", [bottom, label], name, **fields)


def softmax_loss(bottom, label="label", name="loss", **fields):
    return layer(name, "SoftmaxWithLoss", [bottom, label], name, **fields)


# ------------------------------------------------------------------------ MNIST
def lenet(batch=64):
    """examples/mnist/lenet_train_test.prototxt (TRAIN batch 64, TEST batch 100)."""
    xavier, const = filler("xavier"), filler("constant")
    return net(
        "LeNet",
        input_layer("mnist", ["data", "label"], [(batch, 1, 28, 28), (batch,)]),
        conv("conv1", "data", 20, 5, params=lr(1, 2), stride=1, wf=xavier, bf=const),
        pool("pool1", "conv1", "MAX", 2, 2),
        conv("conv2", "pool1", 50, 5, params=lr(1, 2), stride=1, wf=xavier, bf=const),
        pool("pool2", "conv2", "MAX", 2, 2),
        ip("ip1", "pool2", 500, params=lr(1, 2), wf=xavier, bf=const),
        relu("relu1", "ip1"),
        ip("ip2", "ip1", 10, params=lr(1, 2), wf=xavier, bf=const),
        accuracy("accuracy", "ip2"),
        softmax_loss("ip2"))


def mnist_siamese(batch=64, share=True):
    """examples/siamese/mnist_siamese_train_test.prototxt: two LeNet towers sharing
    params by name over a Slice of the channel-stacked pair, ContrastiveLoss margin 1.
    ``share=False`` drops the param names (each tower then owns its params)."""
    xavier, const = filler("xavier"), filler("constant")

    def tower(sfx):
        def named(base):
            if not share:
                return lr(1, 2)
            return [dict(name=base + "_w", lr_mult=1), dict(name=base + "_b", lr_mult=2)]
        return [
            conv("conv1" + sfx, "data" + sfx, 20, 5, params=named("conv1"), stride=1,
                 wf=xavier, bf=const),
            pool("pool1" + sfx, "conv1" + sfx, "MAX", 2, 2),
            conv("conv2" + sfx, "pool1" + sfx, 50, 5, params=named("conv2"), stride=1,
                 wf=xavier, bf=const),
            pool("pool2" + sfx, "conv2" + sfx, "MAX", 2, 2),
            ip("ip1" + sfx, "pool2" + sfx, 500, params=named("ip1"), wf=xavier, bf=const),
            relu("relu1" + sfx, "ip1" + sfx),
            ip("ip2" + sfx, "ip1" + sfx, 10, params=named("ip2"), wf=xavier, bf=const),
            ip("feat" + sfx, "ip2" + sfx, 2, params=named("feat"), wf=xavier, bf=const),
        ]
    return net(
        "mnist_siamese_train_test",
        input_layer("pair_data", ["pair_data", "sim"], [(batch, 2, 28, 28), (batch,)]),
        layer("slice_pair", "Slice", "pair_data", ["data", "data_p"],
              slice_param=dict(slice_dim=1, slice_point=1)),
        *tower(""), *tower("_p"),
        layer("loss", "ContrastiveLoss", ["feat", "feat_p", "sim"], "loss",
              contrastive_loss_param=dict(margin=1.0)))


def mnist_autoencoder(batch=100):
    """examples/mnist/mnist_autoencoder.prototxt. Both loss layers are named "loss"
    in the published file (Caffe does not require unique layer names)."""
    sparse = filler("gaussian", std=1, sparse=15)
    zero = filler("constant", value=0)
    params = lr(1, 1, decay=(1, 0))
    sizes = [("encode1", 1000), ("encode2", 500), ("encode3", 250), ("encode4", 30),
             ("decode4", 250), ("decode3", 500), ("decode2", 1000), ("decode1", 784)]
    layers = [input_layer("data", ["data"], [(batch, 1, 28, 28)]),
              layer("flatdata", "Flatten", "data", "flatdata")]
    bottom = "data"
    for name, n in sizes:
        layers.append(ip(name, bottom, n, params=params, wf=sparse, bf=zero))
        bottom = name
        if name not in ("encode4", "decode1"):
            layers.append(layer(name + "neuron", "Sigmoid", name, name + "neuron"))
            bottom = name + "neuron"
    layers += [
        layer("loss", "SigmoidCrossEntropyLoss", ["decode1", "flatdata"], "cross_entropy_loss",
              loss_weight=1),
        layer("decode1neuron", "Sigmoid", "decode1", "decode1neuron"),
        layer("loss", "EuclideanLoss", ["decode1neuron", "flatdata"], "l2_error", loss_weight=0),
    ]
    return net("MNISTAutoencoder", *layers)


# ---------------------------------------------------------------------- CIFAR-10
def _cifar_data(batch, dummy):
    if not dummy:
        return input_layer("cifar", ["data", "label"], [(batch, 3, 32, 32), (batch,)])
    # Labels drawn uniform in [0, 10): loss and accuracy truncate them to int, as Caffe does.
    return layer("cifar", "DummyData", top=["data", "label"], dummy_data_param=dict(
        data_filler=[filler("gaussian", std=1.0), filler("uniform", min=0, max=9.999)],
        shape=[shape(batch, 3, 32, 32), shape(batch)]))


def cifar10_quick(batch=100, dummy=False):
    """examples/cifar10/cifar10_quick_train_test.prototxt."""
    const = filler("constant")
    return net(
        "CIFAR10_quick",
        _cifar_data(batch, dummy),
        conv("conv1", "data", 32, 5, params=lr(1, 2), pad=2, stride=1,
             wf=filler("gaussian", std=0.0001), bf=const),
        pool("pool1", "conv1", "MAX", 3, 2),
        relu("relu1", "pool1"),
        conv("conv2", "pool1", 32, 5, params=lr(1, 2), pad=2, stride=1,
             wf=filler("gaussian", std=0.01), bf=const),
        relu("relu2", "conv2"),
        pool("pool2", "conv2", "AVE", 3, 2),
        conv("conv3", "pool2", 64, 5, params=lr(1, 2), pad=2, stride=1,
             wf=filler("gaussian", std=0.01), bf=const),
        relu("relu3", "conv3"),
        pool("pool3", "conv3", "AVE", 3, 2),
        ip("ip1", "pool3", 64, params=lr(1, 2), wf=filler("gaussian", std=0.1), bf=const),
        ip("ip2", "ip1", 10, params=lr(1, 2), wf=filler("gaussian", std=0.1), bf=const),
        accuracy("accuracy", "ip2"),
        softmax_loss("ip2"))


def cifar10_full(batch=100):
    """examples/cifar10/cifar10_full_train_test.prototxt (WITHIN_CHANNEL LRN)."""
    const = filler("constant")
    return net(
        "CIFAR10_full",
        _cifar_data(batch, False),
        conv("conv1", "data", 32, 5, params=lr(1, 2), pad=2, stride=1,
             wf=filler("gaussian", std=0.0001), bf=const),
        pool("pool1", "conv1", "MAX", 3, 2),
        relu("relu1", "pool1"),
        lrn("norm1", "pool1", 3, 5e-05, 0.75, within=True),
        conv("conv2", "norm1", 32, 5, params=lr(1, 2), pad=2, stride=1,
             wf=filler("gaussian", std=0.01), bf=const),
        relu("relu2", "conv2"),
        pool("pool2", "conv2", "AVE", 3, 2),
        lrn("norm2", "pool2", 3, 5e-05, 0.75, within=True),
        conv("conv3", "norm2", 64, 5, pad=2, stride=1,
             wf=filler("gaussian", std=0.01), bf=const),
        relu("relu3", "conv3"),
        pool("pool3", "conv3", "AVE", 3, 2),
        ip("ip1", "pool3", 10, params=lr(1, 2, decay=(250, 0)),
           wf=filler("gaussian", std=0.01), bf=const),
        accuracy("accuracy", "ip1"),
        softmax_loss("ip1"))


def cifar10_full_sigmoid_bn(batch=100):
    """examples/cifar10/cifar10_full_sigmoid_train_test_bn.prototxt: bias-free convs,
    BatchNorm (three lr_mult 0 stat blobs; batch stats at TRAIN, global at TEST), Sigmoid."""
    def bn(name, bottom):
        return layer(name, "BatchNorm", bottom, name, param=lr(0, 0, 0))
    return net(
        "CIFAR10_full",
        _cifar_data(batch, False),
        conv("conv1", "data", 32, 5, params=lr(1), pad=2, stride=1, bias_term=False,
             wf=filler("gaussian", std=0.0001)),
        pool("pool1", "conv1", "MAX", 3, 2),
        bn("bn1", "pool1"),
        layer("Sigmoid1", "Sigmoid", "bn1", "Sigmoid1"),
        conv("conv2", "Sigmoid1", 32, 5, params=lr(1), pad=2, stride=1, bias_term=False,
             wf=filler("gaussian", std=0.01)),
        bn("bn2", "conv2"),
        layer("Sigmoid2", "Sigmoid", "bn2", "Sigmoid2"),
        pool("pool2", "Sigmoid2", "AVE", 3, 2),
        conv("conv3", "pool2", 64, 5, params=lr(1), pad=2, stride=1, bias_term=False,
             wf=filler("gaussian", std=0.01)),
        bn("bn3", "conv3"),
        layer("Sigmoid3", "Sigmoid", "bn3", "Sigmoid3"),
        pool("pool3", "Sigmoid3", "AVE", 3, 2),
        ip("ip1", "pool3", 10, params=lr(1, 1, decay=(1, 0)),
           wf=filler("gaussian", std=0.01), bf=filler("constant")),
        accuracy("accuracy", "ip1"),
        softmax_loss("ip1"))


# ------------------------------------------------------------------- ImageNet
def _alexnet_body(caffenet, with_fillers, groups=True):
    """conv1 .. fc8 of AlexNet (LRN before pooling) or CaffeNet (pooling before LRN)."""
    g = dict(group=2) if groups else {}
    if with_fillers:
        b = (0.4, 1, 0.4, 0.4, 0.1) if caffenet else (0.1, 0.1, 0.1, 0.1, 0)
        w = lambda std: filler("gaussian", std=std)               # noqa: E731
        c = lambda v: filler("constant", value=v)                 # noqa: E731
        f = dict(conv1=(w(0.01), c(0)), conv2=(w(0.01), c(b[0])), conv3=(w(0.01), c(0)),
                 conv4=(w(0.01), c(b[1])), conv5=(w(0.01), c(b[2])),
                 fc6=(w(0.005), c(b[3])), fc7=(w(0.005), c(b[3])), fc8=(w(0.01), c(b[4])))
    else:
        f = {k: (None, None) for k in ("conv1", "conv2", "conv3", "conv4", "conv5",
                                       "fc6", "fc7", "fc8")}

    def cv(name, bottom, n, k, **kw):
        return conv(name, bottom, n, k, params=STD_PARAMS, wf=f[name][0], bf=f[name][1], **kw)

    def fc(name, bottom, n):
        return ip(name, bottom, n, params=STD_PARAMS, wf=f[name][0], bf=f[name][1])

    if caffenet:
        block1 = [pool("pool1", "conv1", "MAX", 3, 2), lrn("norm1", "pool1", 5, 0.0001, 0.75)]
        block2 = [pool("pool2", "conv2", "MAX", 3, 2), lrn("norm2", "pool2", 5, 0.0001, 0.75)]
        in2, in3 = "norm1", "norm2"
    else:
        block1 = [lrn("norm1", "conv1", 5, 0.0001, 0.75), pool("pool1", "norm1", "MAX", 3, 2)]
        block2 = [lrn("norm2", "conv2", 5, 0.0001, 0.75), pool("pool2", "norm2", "MAX", 3, 2)]
        in2, in3 = "pool1", "pool2"
    return [
        cv("conv1", "data", 96, 11, stride=4), relu("relu1", "conv1"), *block1,
        cv("conv2", in2, 256, 5, pad=2, **g), relu("relu2", "conv2"), *block2,
        cv("conv3", in3, 384, 3, pad=1), relu("relu3", "conv3"),
        cv("conv4", "conv3", 384, 3, pad=1, **g), relu("relu4", "conv4"),
        cv("conv5", "conv4", 256, 3, pad=1, **g), relu("relu5", "conv5"),
        pool("pool5", "conv5", "MAX", 3, 2),
        fc("fc6", "pool5", 4096), relu("relu6", "fc6"), dropout("drop6", "fc6", 0.5),
        fc("fc7", "fc6", 4096), relu("relu7", "fc7"), dropout("drop7", "fc7", 0.5),
        fc("fc8", "fc7", 1000),
    ]


def alexnet_train_val(batch=2, top5=False):
    """models/bvlc_alexnet/train_val.prototxt (crop 227). ``top5`` adds an
    Accuracy top_k 5 layer (as GoogLeNet's train_val has) next to the top-1 one."""
    extra = [accuracy("accuracy_top5", "fc8", top_k=5)] if top5 else []
    return net("AlexNet",
               input_layer("data", ["data", "label"], [(batch, 3, 227, 227), (batch,)]),
               *_alexnet_body(False, True),
               accuracy("accuracy", "fc8"), *extra,
               softmax_loss("fc8"))


def alexnet_deploy(batch=10):
    """models/bvlc_alexnet/deploy.prototxt (no fillers; Softmax "prob")."""
    return net("AlexNet",
               input_layer("data", ["data"], [(batch, 3, 227, 227)]),
               *_alexnet_body(False, False),
               layer("prob", "Softmax", "fc8", "prob"))


def caffenet_train_val(batch=2):
    """models/bvlc_reference_caffenet/train_val.prototxt (pool before norm)."""
    return net("CaffeNet",
               input_layer("data", ["data", "label"], [(batch, 3, 227, 227), (batch,)]),
               *_alexnet_body(True, True),
               accuracy("accuracy", "fc8"),
               softmax_loss("fc8"))


# (name, 1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj) from the published deploy.prototxt
INCEPTIONS = [
    ("inception_3a", 64, 96, 128, 16, 32, 32),
    ("inception_3b", 128, 128, 192, 32, 96, 64),
    ("inception_4a", 192, 96, 208, 16, 48, 64),
    ("inception_4b", 160, 112, 224, 24, 64, 64),
    ("inception_4c", 128, 128, 256, 24, 64, 64),
    ("inception_4d", 112, 144, 288, 32, 64, 64),
    ("inception_4e", 256, 160, 320, 32, 128, 128),
    ("inception_5a", 256, 160, 320, 32, 128, 128),
    ("inception_5b", 384, 192, 384, 48, 128, 128),
]


def _inception(bottom, name, n1, n3r, n3, n5r, n5, npp):
    bias = filler("constant", value=0.2)

    def cr(suffix, b, n, k, std, pad=None):
        top = "%s/%s" % (name, suffix)
        kw = dict(pad=pad) if pad is not None else {}
        return [conv(top, b, n, k, params=STD_PARAMS, wf=filler("xavier", std=std), bf=bias, **kw),
                relu("%s/relu_%s" % (name, suffix), top)]
    return [
        *cr("1x1", bottom, n1, 1, 0.03),
        *cr("3x3_reduce", bottom, n3r, 1, 0.09),
        *cr("3x3", name + "/3x3_reduce", n3, 3, 0.03, pad=1),
        *cr("5x5_reduce", bottom, n5r, 1, 0.2),
        *cr("5x5", name + "/5x5_reduce", n5, 5, 0.03, pad=2),
        pool(name + "/pool", bottom, "MAX", 3, 1, pad=1),
        *cr("pool_proj", name + "/pool", npp, 1, 0.1),
        layer(name + "/output", "Concat",
              [name + s for s in ("/1x1", "/3x3", "/5x5", "/pool_proj")], name + "/output"),
    ]


def googlenet_deploy(batch=10, force_backward=False):
    """models/bvlc_googlenet/deploy.prototxt (old-style ``input``/``input_shape`` header)."""
    bias = filler("constant", value=0.2)
    layers = [
        conv("conv1/7x7_s2", "data", 64, 7, params=STD_PARAMS, pad=3, stride=2,
             wf=filler("xavier", std=0.1), bf=bias),
        relu("conv1/relu_7x7", "conv1/7x7_s2"),
        pool("pool1/3x3_s2", "conv1/7x7_s2", "MAX", 3, 2),
        lrn("pool1/norm1", "pool1/3x3_s2", 5, 0.0001, 0.75),
        conv("conv2/3x3_reduce", "pool1/norm1", 64, 1, params=STD_PARAMS,
             wf=filler("xavier", std=0.1), bf=bias),
        relu("conv2/relu_3x3_reduce", "conv2/3x3_reduce"),
        conv("conv2/3x3", "conv2/3x3_reduce", 192, 3, params=STD_PARAMS, pad=1,
             wf=filler("xavier", std=0.03), bf=bias),
        relu("conv2/relu_3x3", "conv2/3x3"),
        lrn("conv2/norm2", "conv2/3x3", 5, 0.0001, 0.75),
        pool("pool2/3x3_s2", "conv2/norm2", "MAX", 3, 2),
    ]
    bottom = "pool2/3x3_s2"
    for spec in INCEPTIONS:
        layers += _inception(bottom, *spec)
        bottom = spec[0] + "/output"
        if spec[0] == "inception_3b":
            layers.append(pool("pool3/3x3_s2", bottom, "MAX", 3, 2))
            bottom = "pool3/3x3_s2"
        elif spec[0] == "inception_4e":
            layers.append(pool("pool4/3x3_s2", bottom, "MAX", 3, 2))
            bottom = "pool4/3x3_s2"
    layers += [
        pool("pool5/7x7_s1", bottom, "AVE", 7, 1),
        dropout("pool5/drop_7x7_s1", "pool5/7x7_s1", 0.4),
        ip("loss3/classifier", "pool5/7x7_s1", 1000, params=STD_PARAMS,
           wf=filler("xavier"), bf=filler("constant", value=0)),
        layer("prob", "Softmax", "loss3/classifier", "prob"),
    ]
    head = 'input: "data"\ninput_shape {\n  dim: %d\n  dim: 3\n  dim: 224\n  dim: 224\n}\n' % batch
    text = net("GoogleNet", *layers, force_backward=force_backward)
    first = text.index("layer {")
    return text[:first] + head + text[first:]


# ------------------------------------------------------------------------ FCN-8s
def voc_fcn8s(height=500, width=500, train=False, scale_skips=False, weight_std=None):
    """voc-fcn8s: VGG16 with pad 100, fc6/fc7 as convolutions, three bilinear-sized
    Deconvolutions, Crops at offsets 5, 9, 31 and SUM fusions.

    ``train=False``: voc-fcn8s/deploy.prototxt (no fillers, no Dropout).
    ``train=True``: the train.prototxt that voc-fcn8s*/net.py writes (Dropout,
    SoftmaxWithLoss normalize false, ignore_label 255), with an Input "data"
    layer for the Python data layer. ``scale_skips`` adds voc-fcn8s-atonce's
    Scale layers (constant 0.01 on pool4, 0.0001 on pool3, lr_mult 0).
    ``weight_std`` gives every Convolution gaussian weight fillers (the
    published nets have none: they are meant to be loaded with weights).
    """
    wf = filler("gaussian", std=weight_std) if weight_std else None
    std = STD_PARAMS

    def cr(name, bottom, n, k=3, pad=1):
        idx = name[4:]
        return [conv(name, bottom, n, k, params=std, pad=pad, stride=1, wf=wf),
                relu("relu" + idx, name)]

    def score(name, bottom):
        return conv(name, bottom, 21, 1, params=std, pad=0, wf=wf)

    def up(name, bottom, k, s):
        return layer(name, "Deconvolution", bottom, name, param=lr(0),
                     convolution_param=dict(num_output=21, bias_term=False, kernel_size=k,
                                            stride=s))

    def crop(name, bottom, ref, offset):
        return layer(name, "Crop", [bottom, ref], name,
                     crop_param=dict(axis=2, offset=offset))

    def scale(name, bottom, value):
        return layer(name, "Scale", bottom, name, param=lr(0),
                     scale_param=dict(filler=filler("constant", value=value)))

    if train:
        head = input_layer("data", ["data", "label"],
                           [(1, 3, height, width), (1, 1, height, width)])
    else:
        head = input_layer("input", ["data"], [(1, 3, height, width)])
    fc6 = conv("fc6", "pool5", 4096, 7, params=std, pad=0, stride=1, wf=wf)
    layers = [head,
              *cr("conv1_1", "data", 64, pad=100), *cr("conv1_2", "conv1_1", 64),
              pool("pool1", "conv1_2", "MAX", 2, 2),
              *cr("conv2_1", "pool1", 128), *cr("conv2_2", "conv2_1", 128),
              pool("pool2", "conv2_2", "MAX", 2, 2),
              *cr("conv3_1", "pool2", 256), *cr("conv3_2", "conv3_1", 256),
              *cr("conv3_3", "conv3_2", 256),
              pool("pool3", "conv3_3", "MAX", 2, 2),
              *cr("conv4_1", "pool3", 512), *cr("conv4_2", "conv4_1", 512),
              *cr("conv4_3", "conv4_2", 512),
              pool("pool4", "conv4_3", "MAX", 2, 2),
              *cr("conv5_1", "pool4", 512), *cr("conv5_2", "conv5_1", 512),
              *cr("conv5_3", "conv5_2", 512),
              pool("pool5", "conv5_3", "MAX", 2, 2),
              fc6, relu("relu6", "fc6")]
    if train:
        layers.append(dropout("drop6", "fc6", 0.5))
    layers += [conv("fc7", "fc6", 4096, 1, params=std, pad=0, stride=1, wf=wf),
               relu("relu7", "fc7")]
    if train:
        layers.append(dropout("drop7", "fc7", 0.5))
    p4, p3 = "pool4", "pool3"
    layers += [score("score_fr", "fc7"), up("upscore2", "score_fr", 4, 2)]
    if scale_skips:
        layers.append(scale("scale_pool4", "pool4", 0.01))
        p4 = "scale_pool4"
    layers += [score("score_pool4", p4),
               crop("score_pool4c", "score_pool4", "upscore2", 5),
               layer("fuse_pool4", "Eltwise", ["upscore2", "score_pool4c"], "fuse_pool4",
                     eltwise_param=dict(operation=E("SUM"))),
               up("upscore_pool4", "fuse_pool4", 4, 2)]
    if scale_skips:
        layers.append(scale("scale_pool3", "pool3", 0.0001))
        p3 = "scale_pool3"
    layers += [score("score_pool3", p3),
               crop("score_pool3c", "score_pool3", "upscore_pool4", 9),
               layer("fuse_pool3", "Eltwise", ["upscore_pool4", "score_pool3c"], "fuse_pool3",
                     eltwise_param=dict(operation=E("SUM"))),
               up("upscore8", "fuse_pool3", 16, 8),
               crop("score", "upscore8", "data", 31)]
    if train:
        layers.append(softmax_loss("score", loss_param=dict(normalize=False, ignore_label=255)))
    return net("", *layers)
