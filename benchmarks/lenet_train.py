"""Benchmark: a whole `protonet train` run against `caffe train`, Caffe's LeNet example (issue #16).

Times what a user waits for: Caffe's examples/mnist LeNet (Data layers reading LMDBs, scale
1/256, TRAIN batch 64, TEST batch 100) under its lenet_solver settings (SGD, base_lr 0.01,
momentum 0.9, weight_decay 5e-4, the "inv" policy, gamma 1e-4, power 0.75, display 100,
test_interval 500, test_iter 100), for --iterations (1000) iterations, with the test passes,
the log and the final snapshot. Each run is a fresh process; wall time and peak RSS (wait4) of
that process. With --caffe PATH, `caffe train` runs the very same files in alternating rounds.

The data: no download here, so digits are drawn with Pillow's default font (sizes 14-22,
shifted, rotated up to 15 degrees, with noise) into MNIST-shaped LMDBs of Caffe Datum records
(1 x 28 x 28 uint8): 10,000 for training and 1,000 for testing, made once into --data.

  python benchmarks/lenet_train.py --caffe ~/caffe/build/tools/caffe --rounds 3
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the environment as the user started this script: importing protonet (for the LMDBs) may set
# OPENBLAS_THREAD_TIMEOUT here, which is protonet's own tuning and not Caffe's
START_ENV = dict(os.environ)
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))


def draw_digits(count, seed):
    """``count`` (28 x 28 uint8 image, label) pairs of rendered digits."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont
    rng = np.random.default_rng(seed)
    fonts = {}
    out = []
    for _ in range(count):
        label = int(rng.integers(10))
        size = int(rng.integers(14, 23))
        if size not in fonts:
            try:
                fonts[size] = ImageFont.load_default(size=size)
            except TypeError:      # Pillow < 10.1: one bitmap size
                fonts[size] = ImageFont.load_default()
        img = Image.new("L", (28, 28), 0)
        draw = ImageDraw.Draw(img)
        dx, dy = rng.integers(-3, 4, size=2)
        draw.text((14 + int(dx), 14 + int(dy)), str(label), fill=255, font=fonts[size], anchor="mm")
        img = img.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 12, (28, 28))
        out.append((np.clip(arr, 0, 255).astype(np.uint8), label))
    return out


def make_data(folder):
    """The train and test LMDBs in ``folder`` (made once)."""
    from protonet.data.datum import array_to_datum
    from protonet.data.db import write_lmdb
    folder = Path(folder)
    for split, count, seed in (("train", 10000, 1), ("test", 1000, 2)):
        path = folder / ("digits_%s_lmdb" % split)
        if (path / "data.mdb").exists():
            continue
        path.mkdir(parents=True, exist_ok=True)
        write_lmdb(str(path), (array_to_datum(img[None], label) for img, label in draw_digits(count, seed)))
    return folder / "digits_train_lmdb", folder / "digits_test_lmdb"


def write_files(folder, train_db, test_db, iterations):
    """lenet_train_test.prototxt (Data layers) and lenet_solver.prototxt in ``folder``."""
    import zoo_nets
    from google.protobuf import text_format
    from protonet.io import parse_net
    from protonet.proto import caffe_pb2
    net = parse_net(zoo_nets.lenet(64), "<lenet>")
    body = [layer for layer in net.layer if layer.type != "Input"]
    del net.layer[:]
    for phase, source, batch in ((caffe_pb2.TRAIN, train_db, 64), (caffe_pb2.TEST, test_db, 100)):
        layer = net.layer.add(name="mnist", type="Data", top=["data", "label"])
        layer.include.add(phase=phase)
        layer.transform_param.scale = 0.00390625
        layer.data_param.source = str(source)
        layer.data_param.batch_size = batch
        layer.data_param.backend = caffe_pb2.DataParameter.LMDB
    net.layer.extend(body)
    folder = Path(folder)
    (folder / "lenet_train_test.prototxt").write_text(text_format.MessageToString(net))
    (folder / "lenet_solver.prototxt").write_text(
        'net: "%s"\ntest_iter: 100\ntest_interval: 500\nbase_lr: 0.01\nmomentum: 0.9\n'
        'weight_decay: 0.0005\nlr_policy: "inv"\ngamma: 0.0001\npower: 0.75\ndisplay: 100\n'
        'max_iter: %d\nsnapshot: 0\nsnapshot_prefix: "%s"\nsolver_mode: CPU\n'
        % (folder / "lenet_train_test.prototxt", iterations, folder / "snap" / "lenet"))
    (folder / "snap").mkdir(exist_ok=True)
    return folder / "lenet_solver.prototxt"


def run(cmd, env=None):
    """(wall seconds, peak RSS MB, output) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError("%s failed:\n%s" % (" ".join(cmd), out[-3000:]))
    return wall, usage.ru_maxrss / 1024.0, out


def last_test(out):
    """The last test accuracy and loss the log printed (both tools print Caffe's lines)."""
    acc = re.findall(r"Test net output #\d+: accuracy = ([\d.eE+-]+)", out)
    loss = re.findall(r"Test net output #\d+: loss = ([\d.eE+-]+)", out)
    return (float(acc[-1]) if acc else None, float(loss[-1]) if loss else None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--caffe", metavar="PATH", help="a Caffe binary: also time `caffe train`")
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "protonet_lenet_bench"),
                    help="where the digit LMDBs are made (once) and the run's files go")
    a = ap.parse_args(argv)
    folder = Path(a.data)
    folder.mkdir(parents=True, exist_ok=True)
    train_db, test_db = make_data(folder)
    solver = write_files(folder, train_db, test_db, a.iterations)
    tools = [("protonet", [sys.executable, "-m", "protonet", "train", "--solver", str(solver)])]
    if a.caffe:
        tools.append(("caffe", [a.caffe, "train", "-solver", str(solver)]))
    walls = {name: [] for name, _ in tools}
    for r in range(a.rounds):
        for name, cmd in tools:
            # every run starts from an empty snapshot folder (no curve history, no old snapshots)
            shutil.rmtree(folder / "snap", ignore_errors=True)
            (folder / "snap").mkdir()
            wall, rss, out = run(cmd, START_ENV)
            acc, loss = last_test(out)
            walls[name].append(wall)
            print(json.dumps({"tool": name, "round": r, "iterations": a.iterations, "wall_s": round(wall, 2),
                              "peak_rss_mb": round(rss, 1), "test_accuracy": acc, "test_loss": loss}),
                  flush=True)
    med = {name: sorted(v)[len(v) // 2] for name, v in walls.items()}
    summary = {"median_wall_s": {k: round(v, 2) for k, v in med.items()}}
    if "caffe" in med:
        summary["ratio"] = round(med["protonet"] / med["caffe"], 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
