"""NetState include/exclude rules, exactly as Caffe applies them."""
from .log import get_logger
from .proto import caffe_pb2

log = get_logger("net")


class NetStateError(ValueError):
    pass


def state_meets_rule(state, rule, layer_name=None):
    """True when ``state`` (NetState) satisfies every condition of ``rule`` (NetStateRule).

    With ``layer_name``, the first unmet condition is logged in Caffe's words.
    """
    def unmet(message):
        if layer_name is not None:
            log.info("%s specified by a rule in layer %s", message, layer_name)
        return False
    if rule.HasField("phase") and rule.phase != state.phase:
        return unmet("The NetState phase (%d) differed from the phase (%d)" % (state.phase, rule.phase))
    # Caffe says "above" for both level bounds; its log is kept word for word
    if rule.HasField("min_level") and state.level < rule.min_level:
        return unmet("The NetState level (%d) is above the min_level (%d)" % (state.level, rule.min_level))
    if rule.HasField("max_level") and state.level > rule.max_level:
        return unmet("The NetState level (%d) is above the max_level (%d)" % (state.level, rule.max_level))
    stages = set(state.stage)
    # every listed stage must be present; no listed not_stage may be.
    for stage in rule.stage:
        if stage not in stages:
            return unmet("The NetState did not contain stage '%s'" % stage)
    for stage in rule.not_stage:
        if stage in stages:
            return unmet("The NetState contained a not_stage '%s'" % stage)
    return True


def layer_included(layer, state):
    if len(layer.include) and len(layer.exclude):
        raise NetStateError(
            "layer '%s': specify either include rules or exclude rules, not both" % layer.name)
    # No include rule means included unless an exclude rule matches; with include
    # rules, any one matching includes it. Rules stop being read once decided, as in Caffe.
    included = len(layer.include) == 0
    for rule in layer.exclude:
        if not included:
            break
        if state_meets_rule(state, rule, layer.name):
            included = False
    for rule in layer.include:
        if included:
            break
        if state_meets_rule(state, rule, layer.name):
            included = True
    return included


def filter_net(param, kept=None):
    """A copy of NetParameter ``param`` keeping the layers its ``state`` selects.

    ``kept``: a list that receives the indices of the layers kept.
    """
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    for i, layer in enumerate(param.layer):
        if layer_included(layer, param.state):
            out.layer.add().CopyFrom(layer)
            if kept is not None:
                kept.append(i)
    return out
