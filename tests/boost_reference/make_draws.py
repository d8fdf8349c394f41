"""Write draws.npz from ./boostref (see boostref.cpp): boost 1.74's values for tests/test_rng.py."""
import subprocess

import numpy as np

RUNS = {
    # name: (kind, seed, count, args); seeds chosen so the normal's tail (layer 0
    # beyond x[1], two exponential ziggurats) is taken several times
    "gauss_f32": ("gauss_f", 42, 4000, (0.0, 1.0)),
    "gauss_f64": ("gauss_d", 58, 2000, (0.0, 1.0)),
    "gauss_f32_mean_std": ("gauss_f", 1701, 2000, (0.1, 0.5)),
    "uniform_f32": ("unif_f", 3000000000, 1000, (-0.3, 0.7)),
    "uniform_f64": ("unif_d", 3000000000, 1000, (-0.3, 0.7)),
    "bernoulli_f32": ("bern_f", 7, 1000, (0.3125,)),
    "bernoulli_f64": ("bern_d", 7, 1000, (0.6,)),
    "shuffle": ("shuffle", 9, 1000, ()),
}


def run(kind, seed, count, args):
    p = subprocess.run(["./boostref", kind, str(seed), str(count)] + [repr(a) for a in args],
                       capture_output=True, text=True, check=True)
    words = p.stdout.split()
    values = [float.fromhex(w) for w in words] if kind.startswith(("gauss", "unif")) \
        else [int(w) for w in words]
    dtype = {"f": np.float32, "d": np.float64}.get(kind[-1], np.int64)
    return np.array(values, dtype=dtype), int(p.stderr.split()[1])


out = {}
for name, (kind, seed, count, args) in RUNS.items():
    values, draws = run(kind, seed, count, args)
    out[name] = values
    out[name + "/meta"] = np.array([seed, count, draws] + list(args), dtype=np.float64)
np.savez_compressed("draws.npz", **out)
