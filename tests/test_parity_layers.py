"""Every layers/ case of tests/caffe_reference/parity, run through the Net against real Caffe's numbers."""
import pytest

from parity import cases, run_layer_case


@pytest.mark.parametrize("name", cases("layers"))
def test_layer_case(name):
    run_layer_case(name)
