"""protonet.rng: Caffe's generator (boost::mt19937) and boost's distributions, value for value.

References: the real-Caffe seeded cases' first outputs, and boost 1.74's own
draws (tests/boost_reference: boostref.cpp run against Debian's boost 1.74
headers), chosen to take the normal's rare branches (wedge, tail).
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import protonet
from protonet import rng
from protonet.fillers import fill_array
from protonet.proto import caffe_pb2
from google.protobuf import text_format

from parity import cases, load_case

BOOST = dict(np.load(Path(__file__).resolve().parent / "boost_reference" / "draws.npz"))


def boost_run(name):
    meta = BOOST[name + "/meta"]
    return BOOST[name], int(meta[0]), int(meta[1]), int(meta[2]), tuple(meta[3:])


def test_mt19937_matches_caffes_first_outputs():
    seen = set()
    for name in cases("seeded"):
        meta = load_case("seeded", name)[1]
        if meta["random_seed"] in seen:
            continue
        seen.add(meta["random_seed"])
        g = rng.Mt19937(meta["random_seed"])
        assert g.raw(4).tolist() == meta["mt19937_first_outputs"]
        assert g.draws == 4
    assert 3000000000 in seen and 0 in seen      # a seed >= 2**31, and 0


def test_seed_is_reduced_to_32_bits_as_cpp_does():
    a = rng.Mt19937(2 ** 32 + 5).raw(3)
    np.testing.assert_array_equal(a, rng.Mt19937(5).raw(3))
    np.testing.assert_array_equal(rng.Mt19937(-1).raw(3), rng.Mt19937(2 ** 32 - 1).raw(3))
    protonet.set_random_seed(2 ** 32 + 5)
    assert rng.get_seed() == 5
    with pytest.raises(TypeError, match="random seed must be an integer"):
        protonet.set_random_seed(1.5)


def test_draws_in_blocks_are_the_stream_in_order():
    g, h = rng.Mt19937(11), rng.Mt19937(11)
    parts = np.concatenate([g.raw(1), g.raw(0), g.raw(700), [g.rand()], g.raw(5)])
    np.testing.assert_array_equal(parts, h.raw(707))
    assert g.draws == 707
    # a value a distribution drew ahead and did not use is the next one again
    g.uniform(10, 0, 1)
    assert g.draws == 717
    np.testing.assert_array_equal(g.raw(3), h.raw(13)[-3:])


@pytest.mark.parametrize("name", ["gauss_f32", "gauss_f64", "gauss_f32_mean_std"])
def test_gaussian_is_boosts_ziggurat(name):
    ref, seed, count, draws, (mean, std) = boost_run(name)
    T = ref.dtype.type
    g = rng.Mt19937(seed)
    got = g.gaussian(count, T(np.float32(mean)), T(np.float32(std)), T)
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got.view(np.uint8), ref.view(np.uint8))
    assert g.draws == draws


def test_gaussian_in_pieces_continues_the_stream():
    # block edges fall anywhere: the values and the draw count do not change
    ref, seed, count, draws, _ = boost_run("gauss_f32")
    g = rng.Mt19937(seed)
    sizes = [1, 2, 3, 5, 8, 13, 100, 868, 3000]
    got = np.concatenate([g.gaussian(n, 0, 1, np.float32) for n in sizes])
    np.testing.assert_array_equal(got, ref)
    assert g.draws == draws
    ref64, seed, count, draws, _ = boost_run("gauss_f64")
    g = rng.Mt19937(seed)
    got = np.concatenate([g.gaussian(n, 0, 1, np.float64) for n in [1, 1, 7, 991, 1000]])
    np.testing.assert_array_equal(got, ref64)
    assert g.draws == draws


def test_the_boost_runs_take_the_tail_and_the_wedge(monkeypatch):
    # the rare branches are exercised (else the runs above would prove little)
    tails = []
    tail = rng._normal_tail
    monkeypatch.setattr(rng, "_normal_tail", lambda *a: tails.append(1) or tail(*a))
    wedges = 0
    for name in ("gauss_f32", "gauss_f64"):
        ref, seed, count, draws, _ = boost_run(name)
        np.testing.assert_array_equal(rng.Mt19937(seed).gaussian(count, 0, 1, ref.dtype), ref)
        _, _, _, accept, _, hard = rng._normal_attempts(rng.Mt19937(seed).raw(draws),
                                                         ref.dtype.type)
        wedges += int((~accept & ~hard).sum())
    assert len(tails) >= 8 and wedges > 100


@pytest.mark.parametrize("name", ["uniform_f32", "uniform_f64"])
def test_uniform_is_boosts_uniform_real(name):
    ref, seed, count, draws, (a, b) = boost_run(name)
    g = rng.Mt19937(seed)
    got = g.uniform(count, a, b, ref.dtype)
    np.testing.assert_array_equal(got.view(np.uint8), ref.view(np.uint8))
    assert g.draws == draws == count


def test_uniform_draws_again_when_rounding_reaches_the_top():
    # on [0, max = nextafter(1)): u = 2**32 - 1 gives float(u) / 2**32 = 1.0, so
    # r = max: boost draws again
    g = rng.Mt19937(0)
    g._pending = np.array([0xFFFFFFFF, 0, 2 ** 31, 0xFFFFFFFF, 2 ** 30], np.uint32)
    got = g.uniform(3, 0, 1, np.float32)
    top = np.nextafter(np.float32(1), np.float32(2))
    np.testing.assert_array_equal(got, [0, np.float32(0.5) * top, np.float32(0.25) * top])
    assert g.draws == 5


@pytest.mark.parametrize("name", ["bernoulli_f32", "bernoulli_f64"])
def test_bernoulli_is_boosts(name):
    ref, seed, count, draws, (p,) = boost_run(name)
    g = rng.Mt19937(seed)
    got = g.bernoulli(count, p, ref.dtype)
    np.testing.assert_array_equal(got, ref.astype(bool))
    assert g.draws == draws


def test_bernoulli_compares_in_its_type_and_draws_nothing_at_zero():
    g = rng.Mt19937(0)
    # T(u) <= p * T(2**32 - 1): in float32 both sides round to 2**32 at p = 1
    g._pending = np.array([0xFFFFFFFF, 0x7FFFFFFF], np.uint32)
    assert g.bernoulli(2, 1.0, np.float32).tolist() == [True, True]
    g._pending = np.array([2 ** 31 - 1, 2 ** 31], np.uint32)   # p * (2**32 - 1) = 2**31 - 0.5
    assert g.bernoulli(2, 0.5, np.float64).tolist() == [True, False]
    before = g.draws
    assert not g.bernoulli(5, 0.0).any() and g.draws == before


def test_shuffle_is_caffes_fisher_yates():
    ref, seed, count, draws, _ = boost_run("shuffle")
    g = rng.Mt19937(seed)
    got = g.shuffle(list(range(count)))
    assert got == ref.tolist()
    assert g.draws == draws


def test_uniform_int_bucket_rejection():
    g = rng.Mt19937(1)
    # range 0..2: buckets of 1431655765; 0xFFFFFFFF falls past the last bucket
    g._pending = np.array([0xFFFFFFFF, 5, 0xFFFFFFFE], np.uint32)
    assert g.uniform_int(0, 2) == 0 and g.draws == 2
    assert g.uniform_int(0, 2) == 2 and g.draws == 3
    assert g.uniform_int(4, 4) == 4 and g.draws == 3          # one value: no draw
    g._pending = np.array([0xFFFFFFFF, 5, 0xFFFFFFFE], np.uint32)
    np.testing.assert_array_equal(g._uniform_ints([2, 2]), [0, 2])


def test_rand_mod_is_the_transformers_draw():
    g, h = rng.Mt19937(3), rng.Mt19937(3)
    raw = h.raw(6).astype(np.int64)
    np.testing.assert_array_equal(g.rand_mod(7, size=(2, 3)), (raw % 7).reshape(2, 3))
    with pytest.raises(ValueError, match="n > 0"):
        g.rand_mod(0)


def test_c_rand_is_glibcs_and_random_shuffle_is_libstdcxxs():
    # values of a C++ program that never calls srand (glibc, libstdc++):
    # random_shuffle over 0..9, then over 0..6, then two rand() calls
    c = rng.CRand()
    assert c.random_shuffle(list(range(10))) == [4, 3, 7, 8, 0, 5, 2, 1, 6, 9]
    assert c.random_shuffle(list(range(7))) == [4, 5, 2, 3, 0, 1, 6]
    assert c._rand(2) == [1967513926, 1365180540]
    assert rng.CRand()._rand(3) == [1804289383, 846930886, 1681692777]   # rand()'s well-known start


def _filler(text):
    return text_format.Parse(text, caffe_pb2.FillerParameter())


def test_fillers_draw_from_the_main_stream_as_caffe():
    protonet.set_random_seed(5)
    w = fill_array(_filler('type: "xavier"'), (4, 6))
    g = rng.Mt19937(5)
    scale = np.sqrt(np.float32(3) / np.float32(6))
    np.testing.assert_array_equal(w.ravel(), g.uniform(24, -scale, scale, np.float32))
    b = fill_array(_filler('type: "gaussian" std: 0.5 sparse: 2'), (4, 6))
    values = g.gaussian(24, 0, 0.5, np.float32) * g.bernoulli(24, np.float32(2) / np.float32(4),
                                                              np.float32)
    np.testing.assert_array_equal(b.ravel().view(np.uint32), values.view(np.uint32))
    assert rng.get_rng().draws == g.draws
    fill_array(_filler('type: "constant" value: 3'), (4, 6))
    fill_array(_filler('type: "bilinear"'), (1, 1, 4, 4))
    assert rng.get_rng().draws == g.draws                    # constant and bilinear draw nothing


UNSEEDED = """
import numpy as np, protonet
from protonet.fillers import fill_array
from protonet.proto import caffe_pb2
p = caffe_pb2.FillerParameter(type="gaussian")
print(repr(fill_array(p, (4,)).tolist()), protonet.rng.get_seed())
"""


def test_an_unseeded_run_is_random():
    root = str(Path(__file__).resolve().parents[1])
    runs = [subprocess.run([sys.executable, "-c", UNSEEDED], capture_output=True, text=True,
                           check=True, cwd=root, env=dict(os.environ, PYTHONPATH=root)).stdout
            for _ in range(2)]
    assert runs[0].endswith(" None\n") and runs[0] != runs[1]
    protonet.set_random_seed(3)
    protonet.set_random_seed(None)                # back to an entropy seed
    assert rng.get_seed() is None
    assert rng.get_rng().raw(4).tolist() != rng.Mt19937(3).raw(4).tolist()
