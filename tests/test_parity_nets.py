"""Whole-net cases of tests/caffe_reference/parity: layer sets after NetState filtering, every blob's
data and diff, parameter diffs."""
import pytest

from parity import cases, run_net_case


@pytest.mark.parametrize("name", cases("nets"))
def test_net_case(name):
    run_net_case(name)
