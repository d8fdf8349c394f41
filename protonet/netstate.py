"""NetState include/exclude rules, exactly as Caffe applies them."""
from .proto import caffe_pb2


class NetStateError(ValueError):
    pass


def state_meets_rule(state, rule):
    """True when ``state`` (NetState) satisfies every condition of ``rule`` (NetStateRule)."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    # every listed stage must be present; no listed not_stage may be.
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def layer_included(layer, state):
    if len(layer.include) and len(layer.exclude):
        raise NetStateError(
            "layer '%s': specify either include rules or exclude rules, not both" % layer.name)
    # No include rule means included unless an exclude rule matches; with include
    # rules, any one matching includes it.
    included = len(layer.include) == 0
    for rule in layer.exclude:
        if state_meets_rule(state, rule):
            included = False
    for rule in layer.include:
        if state_meets_rule(state, rule):
            included = True
    return included


def filter_net(param):
    """A copy of NetParameter ``param`` keeping the layers its ``state`` selects."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    for layer in param.layer:
        if layer_included(layer, param.state):
            out.layer.add().CopyFrom(layer)
    return out
