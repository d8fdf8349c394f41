"""``protonet tutorial``: the Sunnybrook LV-segmentation tutorial as one command.

synthesize (or read the real challenge data) -> DIGITS-layout LMDB -> train
an FCN with Dice validation every epoch -> snapshots, training curve ->
overlays, contact sheet, a Dice summary and a browsable index.html of the
validation set (``protonet infer``'s outputs, named by case and image).
"""
import json
import os
import shutil
import sys
import time
from pathlib import Path

from . import argtypes, backend
from .log import get_logger, plural, quiet_net_setup

log = get_logger()

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "sunnybrook"
NETS = {"fcn8s": "fcn8s.prototxt", "fcn_alexnet": "fcn_alexnet.prototxt"}


class TutorialError(RuntimeError):
    pass


def _network(name):
    path = Path(name)
    if path.suffix == ".prototxt" and path.exists():
        return str(path)
    if name not in NETS:
        raise TutorialError("--net must be one of %s or a .prototxt file, got %r"
                            % (", ".join(NETS), name))
    path = EXAMPLES / NETS[name]
    if not path.exists():
        raise TutorialError("%s is missing: the tutorial's nets live in the source checkout's "
                            "examples/sunnybrook/ (install with `pip install -e .`)" % path)
    return str(path)


# what a run writes under --out; a rerun refuses to mix with them unless forced
OUTPUTS = ("synth", "dataset", "train", "inference", "summary.json")


def run_tutorial(out, images=None, contours=None, net="fcn8s", epochs=5, base_lr=1e-3,
                 solver_type="Adam", cases=30, images_per_case=8, channels="gray", seed=1,
                 weights=None, echo=print, force=False):
    """Run every step; returns the summary dict also written to ``out``/summary.json.

    An ``out`` holding an earlier run is refused (TutorialError) unless
    ``force``, which deletes that run's outputs (snapshots included) first.
    """
    from .data.synth import synth_sunnybrook
    from .data.sunnybrook import convert
    from .digits import prepare_run
    from .infer import infer
    from .rng import set_random_seed
    from .solver import copy_weights, get_solver
    from .tensorboard import available as tensorboard_available

    start = time.time()
    out = os.path.abspath(out)
    network = _network(net)
    if (images is None) != (contours is None):
        raise TutorialError("give both --images and --contours (the real challenge data), or neither")
    for path in weights.split(",") if weights else []:
        if not os.path.exists(path):
            raise TutorialError("--weights: %s: no such file (working directory %s)"
                                % (path, os.getcwd()))
    stale = [name for name in OUTPUTS if os.path.exists(os.path.join(out, name))]
    if stale and not force:
        raise TutorialError("%s already holds a tutorial run (%s); pass --force to delete it and "
                            "start again, or choose another --out" % (out, ", ".join(stale)))
    for name in stale:
        path = os.path.join(out, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    os.makedirs(out, exist_ok=True)
    if images is None:
        echo("[1/4] synthesizing a Sunnybrook-like dataset (%s x %s)"
             % (plural(cases, "case"), plural(images_per_case, "image")))
        synth = synth_sunnybrook(os.path.join(out, "synth"), cases=cases, seed=seed,
                                 images_per_case=images_per_case, overwrite=True)
        images, contours = synth["images"], synth["contours"]
    else:
        echo("[1/4] using the challenge data in %s and %s" % (images, contours))
    echo("[2/4] converting DICOM + contours to LMDB")
    dataset = os.path.join(out, "dataset")
    data_summary = convert(images, contours, dataset, channels=channels, seed=seed,
                           progress=False, overwrite=True)
    if not data_summary["written"]:
        raise TutorialError("no image could be converted; see %s/summary.json" % dataset)
    n_val = data_summary["splits"]["val"]["entries"]
    echo("      %s for training, %s for validation (split by case: %s); contours: %s"
         % (plural(data_summary["splits"]["train"]["entries"], "image"), plural(n_val, "image"),
            plural(len(data_summary["val_cases"] or []), "val case"),
            os.path.join(dataset, "preview", "contact_sheet.png")))

    echo("[3/4] training %s for %s (%s, base_lr %g); validation Dice every epoch"
         % (os.path.basename(network), plural(float(epochs), "epoch"), solver_type, base_lr))
    run_dir = os.path.join(out, "train")
    solver_path = prepare_run(network, dataset, run_dir, epochs=epochs, base_lr=base_lr,
                              solver_type=solver_type, random_seed=seed, force=True)
    set_random_seed(seed)
    solver = get_solver(solver_path)
    solver.draw_curve_beside_snapshots()
    solver.write_events_beside_snapshots()
    if weights:
        for path in weights.split(","):
            copy_weights(solver.net, path)
    t0 = time.time()
    solver.solve()
    train_seconds = time.time() - t0
    final = "%s_iter_%d.caffemodel" % (solver.param.snapshot_prefix, solver.iter)
    # per epoch: the test before training (iteration 0, as DIGITS runs it) is not an epoch's
    dice_curve = [(it, v) for (net_id, name), (its, vals, _) in solver.curve.tests.items()
                  if name == "dice" for it, v in zip(its, vals) if it > 0]

    echo("[4/4] segmenting the validation set")
    val = os.path.join(dataset, "val_db")
    source = val if os.path.isdir(os.path.join(val, "features")) else os.path.join(dataset, "train_db")
    pictures = os.path.join(out, "inference")
    result = infer(os.path.join(run_dir, "train_val.prototxt"), final, [source], pictures,
                   echo=lambda *a: None)
    summary = {
        "network": network,
        "dataset": dataset,
        "entries": {k: v["entries"] for k, v in data_summary["splits"].items()},
        "device": "gpu %d" % backend.device() if backend.mode() == "gpu" else "cpu",
        "iterations": solver.iter,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - start, 1),
        "validation_dice_per_epoch": dice_curve,
        "final_validation_dice": dice_curve[-1][1] if dice_curve else None,
        "inference_mean_dice": result.get("mean_dice"),
        "weights": final,
        "solver": solver_path,
        "training_curve": solver.curve_path,
        "tensorboard": solver.events_dir if tensorboard_available() else None,
        "overlays": pictures,
        "contact_sheet": os.path.join(pictures, "contact_sheet.png"),
        "report": result["report"],
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    echo("")
    echo("Done in %.0f s (training %.0f s, %s)." % (summary["total_seconds"], train_seconds,
                                                   plural(solver.iter, "iteration")))
    if summary["final_validation_dice"] is not None:
        echo("Validation Dice by epoch: %s" % ", ".join("%.3f" % v for _, v in dice_curve))
    if summary["inference_mean_dice"] is not None:
        echo("Mean Dice of the saved validation masks: %.3f" % summary["inference_mean_dice"])
    echo("Browse the results: open %s in a browser" % summary["report"])
    echo("Pictures:")
    echo("  training curve  %s" % summary["training_curve"])
    echo("  contact sheet   %s" % summary["contact_sheet"])
    echo("  dataset preview %s" % os.path.join(dataset, "preview", "contact_sheet.png"))
    echo("  overlays/masks  %s" % pictures)
    echo("Weights %s; summary %s" % (final, os.path.join(out, "summary.json")))
    if summary["tensorboard"]:
        echo("Live curves, test Dice and validation overlays:")
        echo("  tensorboard --logdir %s" % _shell_path(out))
    else:
        echo("For live curves in TensorBoard: pip install \"protonet[tensorboard]\"")
    return summary


def _shell_path(path):
    """``path`` relative to the working directory when under it (shorter to type), quoted if needed."""
    import shlex
    rel = os.path.relpath(path)
    return shlex.quote(path if rel.startswith("..") else rel)


TUTORIAL_EXAMPLE = """example:
  protonet tutorial --out runs/tutorial
  protonet tutorial --out runs/real --images Sunnybrook/images --contours Sunnybrook/contours
  protonet tutorial --out runs/alexnet --net fcn_alexnet --weights fcn_alexnet_rgb.caffemodel \\
      --channels rgb --solver-type SGD --base-lr 1e-4"""


def add_arguments(p):
    p.add_argument("--out", default="runs/tutorial",
                   help="output folder (default runs/tutorial); one holding an earlier run is "
                        "refused without --force")
    p.add_argument("--force", action="store_true",
                   help="reuse --out: delete the earlier run (its snapshots included) first")
    p.add_argument("--images", help="the challenge's image folder (real data); default: synthesize")
    p.add_argument("--contours", help="the challenge's contour folder (real data)")
    p.add_argument("--net", default="fcn8s",
                   help="fcn8s (default), fcn_alexnet, or a DIGITS-style .prototxt")
    p.add_argument("--epochs", type=argtypes.positive_float, default=5, help="training epochs (default 5)")
    p.add_argument("--base-lr", type=argtypes.positive_float, default=1e-3, help="base learning rate (default 1e-3)")
    p.add_argument("--solver-type", default="Adam",
                   choices=("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"))
    p.add_argument("--cases", type=argtypes.positive_int, default=30, help="synthetic cases (default 30)")
    p.add_argument("--images-per-case", type=argtypes.positive_int, default=8,
                   help="synthetic images per case (default 8)")
    p.add_argument("--channels", choices=("gray", "rgb"), default="gray",
                   help="features as 1 channel (gray) or the gray copied to 3 (rgb, for "
                        "ImageNet-pretrained conv1 weights)")
    p.add_argument("--weights", help="caffemodel(s) to fine-tune from, comma separated")
    p.add_argument("--seed", type=argtypes.seed, default=1, help="random seed (default 1)")
    p.add_argument("--gpu", metavar="N|-1", default=None,
                   help="train and segment on GPU N with CuPy (default: the CPU)")


def run(args):
    from .devices import gpu_ids, use_devices
    mode, device = backend.mode(), backend.device()
    try:
        if args.gpu is not None:
            use_devices(gpu_ids(args.gpu))      # a bad or missing GPU: main's clear error
        with quiet_net_setup():
            run_tutorial(args.out, images=args.images, contours=args.contours, net=args.net,
                         epochs=args.epochs, base_lr=args.base_lr, solver_type=args.solver_type,
                         cases=args.cases, images_per_case=args.images_per_case,
                         channels=args.channels, seed=args.seed, weights=args.weights,
                         force=args.force)
    except TutorialError as exc:
        print("protonet tutorial: error: %s" % exc, file=sys.stderr)
        return 2
    finally:
        if mode == "cpu":
            backend.set_mode_cpu()
        backend.set_device(device)
    return 0
