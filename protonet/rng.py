"""The engine's random source (fillers, Dropout, random crops, shuffles).

Caffe's own generator (boost mt19937 + its distributions) is not reproduced
bit for bit; what carries over is the distributions and that one seed makes
a run repeatable.
"""
import numpy as np

_state = {"rng": np.random.default_rng(), "seed": None}


def set_random_seed(seed):
    _state["seed"] = int(seed)
    _state["rng"] = np.random.default_rng(int(seed))


def get_rng():
    return _state["rng"]
