"""DIGITS' conventions: dataset folders, sourceless Data layers, stages, epoch-based solvers.

A DIGITS dataset folder holds ``train_db/features``, ``train_db/labels``,
``val_db/features``, ``val_db/labels`` (LMDB) and optionally ``mean.binaryproto``.
DIGITS networks leave ``data_param.source`` empty; DIGITS fills it in: tops
``data``/``label`` bind to features/labels of the phase's split. Stages:
train = TRAIN + "train", val = TEST + "val", deploy = TEST + "deploy".
"""
import math
import numbers
import os
import re

from .proto import caffe_pb2


class DatasetError(ValueError):
    pass


SPLITS = {caffe_pb2.TRAIN: "train_db", caffe_pb2.TEST: "val_db"}
KINDS = {"data": "features", "label": "labels"}


def db_entries(path):
    """Number of records in an LMDB folder."""
    from .data.db import LMDBReader
    if not os.path.isdir(path):
        raise DatasetError("%s: no such LMDB folder" % path)
    # through the shared reader: python-lmdb refuses a second open of one environment
    reader = LMDBReader(path)
    try:
        return len(reader)
    finally:
        reader.close()


def _layer_phase(layer):
    for rule in layer.include:
        if rule.HasField("phase"):
            return rule.phase
    return None


def bind_dataset(net_param, dataset_dir, batch_size=None, mean_file=None):
    """A copy of ``net_param`` whose sourceless Data layers read ``dataset_dir``.

    A Data layer with one top binds by its top name (``data`` -> features,
    ``label`` -> labels); a two-top layer (data, label) binds to features and
    takes labels from the Datum (classification datasets).
    """
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    bound = {}                  # phase -> {"features": path, "labels": path}
    for layer in out.layer:
        if layer.type != "Data" or layer.data_param.source:
            continue
        phase = _layer_phase(layer)
        if phase is None:
            raise DatasetError("Data layer '%s' has no include { phase } rule, so it cannot be bound "
                               "to a split of %s" % (layer.name, dataset_dir))
        kind = KINDS.get(layer.top[0]) if layer.top else None
        if kind is None:
            raise DatasetError("Data layer '%s': top '%s' is neither 'data' nor 'label', the names "
                               "DIGITS binds" % (layer.name, layer.top[0] if layer.top else ""))
        source = os.path.join(dataset_dir, SPLITS[phase], kind)
        if not os.path.isdir(source):
            raise DatasetError("Data layer '%s' (%s phase) needs %s, which does not exist"
                               % (layer.name, "TRAIN" if phase == caffe_pb2.TRAIN else "TEST", source))
        layer.data_param.source = os.path.abspath(source)
        layer.data_param.backend = caffe_pb2.DataParameter.LMDB
        if batch_size:
            layer.data_param.batch_size = int(batch_size)
        elif not layer.data_param.HasField("batch_size"):
            layer.data_param.batch_size = 1
        if mean_file and kind == "features":
            layer.transform_param.mean_file = os.path.abspath(mean_file)
        bound.setdefault(phase, {})[kind] = source
    for phase, sources in bound.items():
        if len(sources) == 2:
            check_pair(sources["features"], sources["labels"])
    return out


def check_net_pairs(layer_params):
    """check_pair for the Data layers of one built net that read a DIGITS split's
    ``features`` and ``labels`` (a train_val.prototxt the quick start wrote, run again)."""
    folders = {}
    for lp in layer_params:
        if lp.type == "Data" and lp.data_param.backend == caffe_pb2.DataParameter.LMDB:
            source = os.path.normpath(lp.data_param.source)
            head, tail = os.path.split(source)
            if tail in ("features", "labels"):
                folders.setdefault(head, {})[tail] = source
    for sources in folders.values():
        if len(sources) == 2 and all(os.path.isdir(p) for p in sources.values()):
            check_pair(sources["features"], sources["labels"])


def check_pair(features, labels):
    """Features and labels are read side by side, record i with record i: databases of
    different sizes would pair an image with another image's label from the first gap on."""
    nf, nl = db_entries(features), db_entries(labels)
    if nf != nl:
        raise DatasetError("%s holds %d records but %s holds %d: a DIGITS dataset's features "
                           "and labels pair up one to one, so these would train on images with "
                           "other images' labels. Rebuild the dataset" % (features, nf, labels, nl))


def has_val(dataset_dir):
    return os.path.isdir(os.path.join(dataset_dir, "val_db", "features"))


def derive_deploy(net_param, input_shape):
    """DIGITS' deploy net: TEST + "deploy" filtering, data layers replaced by one input."""
    from .netstate import filter_net
    p = caffe_pb2.NetParameter()
    p.CopyFrom(net_param)
    p.state.phase = caffe_pb2.TEST
    del p.state.stage[:]
    p.state.stage.append("deploy")
    # Data layers are phase-specific; keep the rest of the filtering by stage only.
    kept = [l for l in p.layer if l.type not in ("Data", "ImageData", "HDF5Data", "MemoryData")]
    del p.layer[:]
    p.layer.extend(kept)
    filtered = filter_net(p)
    deploy = caffe_pb2.NetParameter()
    deploy.name = net_param.name
    inp = deploy.layer.add(name="data", type="Input")
    inp.top.append("data")
    inp.input_param.shape.add().dim.extend(int(d) for d in input_shape)
    for src in filtered.layer:
        if "label" in src.bottom:
            raise DatasetError("layer '%s' reads 'label' but is not excluded from the deploy stage; "
                               "add exclude { stage: \"deploy\" } to it" % src.name)
        layer = deploy.layer.add()
        layer.CopyFrom(src)
        del layer.include[:]
        del layer.exclude[:]
    return deploy


# DIGITS' model form: each policy's own defaults (step sizes in % of the run)
LR_POLICY_DEFAULTS = {"step": dict(stepsize_pct=33.0, gamma=0.1), "exp": dict(gamma=0.95),
                      "inv": dict(gamma=0.1, power=0.5), "poly": dict(power=3.0)}


def build_solver(train_val_path, dataset_dir, epochs, base_lr, solver_type="SGD", batch_size=1,
                 val_batch_size=None, snapshot_epochs=1.0, val_epochs=1.0, lr_policy="fixed",
                 gamma=None, stepsize_pct=None, power=None, random_seed=None,
                 snapshot_prefix="snapshot", rms_decay=0.99):
    """The SolverParameter DIGITS' caffe_train.py would write for this dataset and schedule.

    Epochs become iterations from the number of training records; snapshot and
    validation intervals are given in epochs; a policy's step size is a
    percentage of the run and its gamma is scaled to the run's length, with the
    form's defaults for what is not given; momentum 0.9 (not for AdaGrad and
    RMSProp, which refuse it) and weight_decay base_lr / 100, as DIGITS sets them.
    """
    for name, value, low in (("epochs", epochs, 0), ("base_lr", base_lr, 0),
                             ("snapshot_epochs", snapshot_epochs, None),
                             ("val_epochs", val_epochs, None)):
        if not isinstance(value, numbers.Real) or not math.isfinite(value) \
                or (value <= low if low is not None else value < 0):
            raise DatasetError("%s must be a finite number %s, not %r"
                               % (name, "above 0" if low is not None else "0 or more", value))
    if int(batch_size) < 1:
        raise DatasetError("batch_size must be at least 1, not %r" % (batch_size,))
    train_n = db_entries(os.path.join(dataset_dir, "train_db", "features"))
    if train_n == 0:
        raise DatasetError("%s: the training database is empty" % dataset_dir)
    per_epoch = int(math.ceil(train_n / float(batch_size)))
    s = caffe_pb2.SolverParameter()
    s.net = train_val_path
    s.type = solver_type
    s.base_lr = base_lr
    s.max_iter = max(1, int(round(per_epoch * epochs)))
    snap = snapshot_epochs * per_epoch
    s.snapshot = 1 if 0 < snap <= 1 else (int(snap) if snap < s.max_iter else 0)
    s.snapshot_prefix = snapshot_prefix
    s.train_state.stage.append("train")
    if has_val(dataset_dir) and val_epochs:
        val_n = db_entries(os.path.join(dataset_dir, "val_db", "features"))
        vb = val_batch_size or batch_size
        s.test_iter.append(max(1, int(math.ceil(val_n / float(vb)))))
        interval = val_epochs * per_epoch
        s.test_interval = 1 if 0 < interval <= 1 else (int(interval) if interval < s.max_iter
                                                        else s.max_iter)
        s.test_state.add().stage.append("val")
    s.lr_policy = lr_policy
    if lr_policy != "fixed" and lr_policy not in LR_POLICY_DEFAULTS:
        raise DatasetError("lr policy '%s' is not one DIGITS offers here (fixed, step, exp, inv, "
                           "poly)" % lr_policy)
    given = {k: v for k, v in dict(gamma=gamma, stepsize_pct=stepsize_pct, power=power).items()
             if v is not None}
    opts = dict(LR_POLICY_DEFAULTS.get(lr_policy, {}), **given)
    scale = s.max_iter / 100.0
    if lr_policy == "step":
        s.stepsize = max(1, int(math.ceil(opts["stepsize_pct"] * scale)))
        s.gamma = opts["gamma"]
    elif lr_policy == "exp":
        s.gamma = math.pow(opts["gamma"], 1.0 / scale)
    elif lr_policy == "inv":
        s.gamma = opts["gamma"] / scale
        s.power = opts["power"]
    elif lr_policy == "poly":
        s.power = opts["power"]
    if solver_type not in ("AdaGrad", "RMSProp"):
        s.momentum = 0.9
    if solver_type == "RMSProp":
        s.rms_decay = rms_decay
    s.weight_decay = base_lr / 100.0
    s.display = max(1, min(int(math.floor(s.max_iter / (epochs * 8.0))) or 1,
                           int(math.ceil(5000.0 / batch_size))))
    if random_seed is not None:
        s.random_seed = int(random_seed)
    s.solver_mode = caffe_pb2.SolverParameter.CPU
    return s


# Fields that follow from the dataset and the epochs; a template solver gives the rest.
DATASET_FIELDS = {"net", "net_param", "train_net", "test_net", "train_net_param", "test_net_param",
                  "train_state", "test_state", "test_iter", "test_interval", "max_iter", "snapshot",
                  "snapshot_prefix", "solver_type"}


_RUN_FILE = re.compile(r"^(train_val\.prototxt|solver\.prototxt|snapshot_curve\.(png|json)|"
                       r"snapshot_iter_\d+\.(caffemodel|solverstate)(\.h5)?|"
                       r"events\.out\.tfevents\..*\.protonet-snapshot\.\d+)$")


def run_files(out_dir):
    """The files an earlier run left in ``out_dir`` (nets, solver, snapshots, curve and its
    history, TensorBoard events)."""
    if not os.path.isdir(out_dir):
        return []
    return [os.path.join(out_dir, n) for n in sorted(os.listdir(out_dir)) if _RUN_FILE.match(n)]


def prepare_run(network, dataset_dir, out_dir, epochs, base_lr=None, solver_type=None,
                lr_policy=None, batch_size=None, snapshot_epochs=1.0, val_epochs=1.0,
                mean_file=None, random_seed=None, template=None, force=False, check_out=True):
    """Write ``out_dir``/train_val.prototxt (bound to the dataset) and solver.prototxt.

    An ``out_dir`` holding an earlier run is refused (DatasetError), unless
    ``force``: then its snapshots, curve and prototxts are deleted first, so
    that no stale snapshot of the old run sits beside the new ones.
    ``check_out=False`` does neither (each rank of a multi-process run
    writes the same files; the parent that spawned them checked).

    ``template`` (a SolverParameter, e.g. examples/sunnybrook/solver_*.prototxt)
    supplies the hyperparameters (type, base_lr, lr_policy, momentum, ...); the
    iteration counts and intervals still come from the dataset and ``epochs``.
    ``base_lr``, ``solver_type`` and ``lr_policy`` given here win over the
    template (None: the template's, else DIGITS' default: 0.01, SGD, fixed).
    Returns the solver path; the run can be repeated with ``--solver`` alone.
    """
    from google.protobuf import text_format
    from .io import read_net, write_text
    stale = run_files(out_dir) if check_out else []
    if stale and not force:
        raise DatasetError("%s already holds a run (%s%s); pass --force to delete its snapshots "
                           "and start again, or choose another --out"
                           % (out_dir, ", ".join(os.path.basename(p) for p in stale[:3]),
                              ", ..." if len(stale) > 3 else ""))
    net = read_net(network)
    bound = bind_dataset(net, dataset_dir, batch_size=batch_size, mean_file=mean_file)
    train_batch = batch_size or next(
        (l.data_param.batch_size for l in bound.layer if l.type == "Data"
         and _layer_phase(l) == caffe_pb2.TRAIN), 1)
    for path in stale:                  # only after the network and dataset were read
        os.remove(path)
    os.makedirs(out_dir, exist_ok=True)
    train_val = os.path.abspath(os.path.join(out_dir, "train_val.prototxt"))
    with open(train_val, "w") as f:
        f.write(text_format.MessageToString(bound))
    template_type = None
    if template is not None:
        template_type = template.type if template.HasField("type") else None
        if template.HasField("solver_type") and template_type is None:
            from .upgrade import upgrade_solver
            t = caffe_pb2.SolverParameter()
            t.solver_type = template.solver_type
            upgrade_solver(t)
            template_type = t.type

    def pick(explicit, field, default):
        if explicit is not None:
            return explicit
        if template is not None and template.HasField(field):
            return getattr(template, field)
        return default
    solver = build_solver(train_val, dataset_dir, epochs, pick(base_lr, "base_lr", 0.01),
                          solver_type=solver_type or template_type or "SGD",
                          batch_size=train_batch, snapshot_epochs=snapshot_epochs,
                          val_epochs=val_epochs, lr_policy=pick(lr_policy, "lr_policy", "fixed"),
                          random_seed=random_seed,
                          snapshot_prefix=os.path.abspath(os.path.join(out_dir, "snapshot")))
    if template is not None:
        # what the command line said stands; so do the policy's own fields for its policy
        keep = set(DATASET_FIELDS) | {"type", "solver_type"}
        if base_lr is not None:
            keep |= {"base_lr"}
        if lr_policy is not None:
            keep |= {"lr_policy", "gamma", "stepsize", "stepvalue", "power"}
        for field, value in template.ListFields():
            if field.name in keep:
                continue
            solver.ClearField(field.name)
            if field.type == field.TYPE_MESSAGE and not hasattr(value, "extend"):
                getattr(solver, field.name).CopyFrom(value)
            elif hasattr(value, "extend"):
                getattr(solver, field.name).extend(value)
            else:
                setattr(solver, field.name, value)
    path = os.path.join(out_dir, "solver.prototxt")
    write_text(path, solver)
    return path
