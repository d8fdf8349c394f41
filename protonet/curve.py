"""The training curve: losses, test outputs and learning rate, drawn as a PNG.

Its history is kept as JSON beside the snapshots (``<prefix>_curve.json``),
so a resumed run's picture still shows the whole run; the picture is drawn
in a thread (:class:`BackgroundDrawer`) while the solver trains on.
"""
import io as _io
import json
import math
import threading

import numpy as np

from .io import SolverError, write_bytes_atomic
from .log import fmt, get_logger
from .proto import caffe_pb2

__all__ = ["TrainingCurve", "BackgroundDrawer", "iterations_per_epoch"]

log = get_logger()


class TrainingCurve:
    """What the solver has seen: per-iteration loss and lr, test outputs per test.

    ``draw(path)`` writes a PNG (train loss and test losses on a log axis;
    other test outputs such as accuracy or Dice; the learning rate when it
    changes) with matplotlib's Agg canvas, without touching pyplot's global
    state. The x axis is in epochs when ``iters_per_epoch`` is known.
    ``save``/``load`` keep the history in a JSON file beside the snapshots,
    so a resumed run's picture still shows the whole run.
    """

    max_values = 10
    version = 1

    def __init__(self, title="", iters_per_epoch=None):
        self.title = title
        self.iters_per_epoch = iters_per_epoch
        self.iters, self.loss, self.smoothed, self.lr = [], [], [], []
        self.tests = {}          # (test net id, output name) -> ([iters], [values], loss_weight)
        self._warned = False

    def add_train(self, iteration, loss, smoothed, lr):
        self.iters.append(int(iteration))
        self.loss.append(float(loss))
        self.smoothed.append(float(smoothed))
        self.lr.append(float(lr))

    def add_test(self, net_id, iteration, results):
        """``results``: (output name, value, loss weight), one per value as Caffe prints them.
        A multi-valued output (per-class accuracy) becomes ``name[k]``; beyond
        ``max_values`` values it is not plotted."""
        counts = {}
        for name, _, _ in results:
            counts[name] = counts.get(name, 0) + 1
        seen = {}
        for name, value, weight in results:
            k = seen[name] = seen.get(name, -1) + 1
            if counts[name] > self.max_values:
                continue
            label = name if counts[name] == 1 else "%s[%d]" % (name, k)
            iters, values, _ = self.tests.setdefault((net_id, label), ([], [], weight))
            iters.append(int(iteration))
            values.append(float(value))

    # -- history across resumes
    def truncate(self, iteration):
        """Forget what was seen at ``iteration`` and later (a run resumed there redoes it)."""
        keep = sum(1 for it in self.iters if it < iteration)
        for field in (self.iters, self.loss, self.smoothed, self.lr):
            del field[keep:]
        for key, (iters, values, weight) in list(self.tests.items()):
            keep = sum(1 for it in iters if it < iteration)
            del iters[keep:], values[keep:]
            if not iters:
                del self.tests[key]

    def to_dict(self):
        return {"version": self.version, "title": self.title,
                "iters_per_epoch": self.iters_per_epoch,
                "train": {"iter": self.iters, "loss": self.loss, "smoothed": self.smoothed,
                          "lr": self.lr},
                "tests": [{"net": net_id, "output": name, "loss_weight": weight,
                           "iter": iters, "value": values}
                          for (net_id, name), (iters, values, weight) in self.tests.items()]}

    def save(self, path):
        """Write the history as JSON, atomically."""
        write_bytes_atomic(path, json.dumps(self.to_dict(), separators=(",", ":")).encode())

    def load(self, path, before=None):
        """Take the history from a JSON file ``save`` wrote, up to (not including) ``before``.

        The title and a known ``iters_per_epoch`` stay this curve's own. A file
        that cannot be read is a clear error naming it.
        """
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            train = data["train"]
            iters, loss = [int(v) for v in train["iter"]], [float(v) for v in train["loss"]]
            smoothed, lr = [float(v) for v in train["smoothed"]], [float(v) for v in train["lr"]]
            if not len(iters) == len(loss) == len(smoothed) == len(lr):
                raise ValueError("train lists of different lengths")
            tests = {}
            for t in data["tests"]:
                it, values = [int(v) for v in t["iter"]], [float(v) for v in t["value"]]
                if len(it) != len(values):
                    raise ValueError("test output %r: %d iterations, %d values"
                                     % (t["output"], len(it), len(values)))
                tests[(int(t["net"]), str(t["output"]))] = (it, values, float(t["loss_weight"]))
            per_epoch = data.get("iters_per_epoch")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SolverError("%s: not a training curve history protonet wrote (%s: %s)"
                              % (path, type(exc).__name__, exc)) from None
        self.iters, self.loss, self.smoothed, self.lr = iters, loss, smoothed, lr
        self.tests = tests
        if self.iters_per_epoch is None and per_epoch:
            self.iters_per_epoch = float(per_epoch)
        if before is not None:
            self.truncate(before)

    def copy(self):
        """A copy to draw from another thread while this one grows."""
        other = TrainingCurve(self.title, self.iters_per_epoch)
        other.iters, other.loss = list(self.iters), list(self.loss)
        other.smoothed, other.lr = list(self.smoothed), list(self.lr)
        other.tests = {k: (list(i), list(v), w) for k, (i, v, w) in self.tests.items()}
        other._warned = self._warned
        return other

    # -- the picture
    def can_draw(self):
        """Whether matplotlib is there (said once when it is not)."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
            from matplotlib.figure import Figure  # noqa: F401
        except ImportError:
            if not self._warned:
                log.info("matplotlib is not installed: no training curve is drawn "
                         "(pip install matplotlib)")
                self._warned = True
            return False
        return True

    def draw(self, path):
        """Write the PNG atomically; False (after one log line) without matplotlib."""
        fig = self.figure()
        if fig is None:
            return False
        buf = _io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        write_bytes_atomic(path, buf.getvalue())
        return True

    def figure(self):
        """The picture as a matplotlib Figure (Agg canvas); None with nothing to draw."""
        if not self.iters:
            return None         # nothing trained yet (the test before the first iteration)
        if not self.can_draw():
            return None
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        per_epoch = self.iters_per_epoch if self.iters_per_epoch and self.iters_per_epoch > 0 else None

        def x(iters):
            return [i / per_epoch for i in iters] if per_epoch else iters

        losses = {k: v for k, v in self.tests.items() if v[2]}
        others = {k: v for k, v in self.tests.items() if not v[2]}
        # a fixed lr is a flat line: it goes in the title instead of a panel of its own
        lr_changes = len(set(self.lr)) > 1
        panels = 1 + bool(others) + lr_changes
        fig = Figure(figsize=(8, 2.6 * panels + 0.6))
        FigureCanvasAgg(fig)
        axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
        ax = axes[0]
        if self.smoothed != self.loss:       # average_loss > 1: the raw loss behind the smoothed one
            ax.plot(x(self.iters), self.loss, color="tab:blue", alpha=0.3, lw=0.8, label="train loss")
            ax.plot(x(self.iters), self.smoothed, color="tab:blue", lw=1.2,
                    label="train loss (smoothed)")
        else:
            ax.plot(x(self.iters), self.loss, color="tab:blue", lw=1.2, label="train loss")
        multi = len({k[0] for k in self.tests}) > 1
        for k, ((net_id, name), (iters, values, _)) in enumerate(sorted(losses.items())):
            label = "test%s %s" % (" #%d" % net_id if multi else "", name)
            ax.plot(x(iters), values, marker="o", ms=3, lw=1.2, color="C%d" % (k % 9 + 1), label=label)
        plotted = self.loss + self.smoothed + [v for _, values, _ in losses.values() for v in values]
        if all(v > 0 for v in plotted if np.isfinite(v)):
            ax.set_yscale("log")        # losses fall over decades; a linear axis flattens the tail
        ax.set_ylabel("loss")
        ax.legend(loc="upper right", fontsize="small")
        ax.grid(alpha=0.3, which="both")
        if others:
            ax = axes[1]
            for (net_id, name), (iters, values, _) in sorted(others.items()):
                label = "test%s %s" % (" #%d" % net_id if multi else "", name)
                ax.plot(x(iters), values, marker="o", ms=3, lw=1.2, label=label)
            ax.set_ylabel("test outputs")
            ax.legend(loc="lower right", fontsize="small")
            ax.grid(alpha=0.3)
        if lr_changes:
            ax = axes[-1]
            ax.plot(x(self.iters), self.lr, color="tab:green", lw=1.2, drawstyle="steps-post")
            positive = [v for v in self.lr if v > 0]
            if positive and max(positive) > 20 * min(positive) and len(positive) == len(self.lr):
                ax.set_yscale("log")
            ax.set_ylabel("learning rate")
            ax.grid(alpha=0.3)
        axes[-1].set_xlabel("epoch" if per_epoch else "iteration")
        if per_epoch:
            # iterations still matter (snapshot names, --snapshot): on the top axis
            axes[0].secondary_xaxis("top", functions=(lambda e: e * per_epoch,
                                                      lambda i: i / per_epoch)).set_xlabel(
                "iteration", fontsize="small")
        title = self.title
        if not lr_changes:
            title = "%s%slr %s (fixed)" % (title, "    " if title else "", fmt(self.lr[0]))
        fig.suptitle(title)
        fig.tight_layout()
        return fig


class BackgroundDrawer:
    """Draws curve PNGs in a thread, so a test or snapshot does not wait for matplotlib.

    Requests made while a picture is being drawn collapse into the latest;
    :meth:`wait` returns when the last one is on disk.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._pending = None
        self._thread = None

    def request(self, curve, path):
        with self._lock:
            self._pending = (curve, path)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="protonet-curve",
                                                daemon=True)
                self._thread.start()

    def _run(self):
        while True:
            with self._lock:
                job, self._pending = self._pending, None
                if job is None:
                    self._thread = None
                    return
            curve, path = job
            try:
                curve.draw(path)
            except Exception as exc:        # a picture that cannot be drawn stops no training
                log.warning("could not write the training curve %s: %s", path, exc)

    def wait(self):
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join()


def iterations_per_epoch(param, net, solvers=1):
    """Iterations of one pass over the training data, when the train net says it; else None.

    Known for a train net fed by LMDB Data layers (DIGITS' runs, most Caffe
    runs): ceil(records / (batch_size * iter_size * solvers)), as DIGITS counts
    an epoch. Other data layers (HDF5, images, Python) leave it unknown.
    """
    from .digits import db_entries
    for layer in getattr(net, "param", caffe_pb2.NetParameter()).layer:
        if layer.type != "Data" or not layer.data_param.source:
            continue
        if layer.data_param.backend != caffe_pb2.DataParameter.LMDB:
            return None
        try:
            records = db_entries(layer.data_param.source)
        except Exception:       # an unreadable database is the Data layer's error to report
            return None
        batch = layer.data_param.batch_size * max(1, param.iter_size) * max(1, solvers)
        return int(math.ceil(records / float(batch))) if records and batch else None
    return None
