"""The training curve: losses, test outputs and learning rate, drawn as a PNG."""
import io as _io

from .io import write_bytes_atomic
from .log import get_logger

__all__ = ["TrainingCurve"]

log = get_logger()


class TrainingCurve:
    """What the solver has seen: per-iteration loss and lr, test outputs per test.

    ``draw(path)`` writes a PNG (train loss and test losses; other test
    outputs such as accuracy or Dice; learning rate) with matplotlib's Agg
    canvas, without touching pyplot's global state.
    """

    max_values = 10

    def __init__(self, title=""):
        self.title = title
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

    def draw(self, path):
        """Write the PNG atomically; False (after one log line) without matplotlib."""
        if not self.iters:
            return False        # nothing trained yet (the test before the first iteration)
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            if not self._warned:
                log.info("matplotlib is not installed: no training curve is drawn "
                         "(pip install matplotlib)")
                self._warned = True
            return False
        losses = {k: v for k, v in self.tests.items() if v[2]}
        others = {k: v for k, v in self.tests.items() if not v[2]}
        panels = 2 + bool(others)
        fig = Figure(figsize=(8, 2.6 * panels + 0.6))
        FigureCanvasAgg(fig)
        axes = fig.subplots(panels, 1, sharex=True)
        ax = axes[0]
        if self.iters:
            if self.smoothed != self.loss:       # average_loss > 1: the raw loss behind the smoothed one
                ax.plot(self.iters, self.loss, color="tab:blue", alpha=0.3, lw=0.8, label="train loss")
                ax.plot(self.iters, self.smoothed, color="tab:blue", lw=1.2, label="train loss (smoothed)")
            else:
                ax.plot(self.iters, self.loss, color="tab:blue", lw=1.2, label="train loss")
        multi = len({k[0] for k in self.tests}) > 1
        for k, ((net_id, name), (iters, values, _)) in enumerate(sorted(losses.items())):
            label = "test%s %s" % (" #%d" % net_id if multi else "", name)
            ax.plot(iters, values, marker="o", ms=3, lw=1.2, color="C%d" % (k % 9 + 1), label=label)
        ax.set_ylabel("loss")
        ax.legend(loc="upper right", fontsize="small")
        ax.grid(alpha=0.3)
        if others:
            ax = axes[1]
            for (net_id, name), (iters, values, _) in sorted(others.items()):
                label = "test%s %s" % (" #%d" % net_id if multi else "", name)
                ax.plot(iters, values, marker="o", ms=3, lw=1.2, label=label)
            ax.set_ylabel("test outputs")
            ax.legend(loc="lower right", fontsize="small")
            ax.grid(alpha=0.3)
        ax = axes[-1]
        if self.iters:
            ax.plot(self.iters, self.lr, color="tab:green", lw=1.2, drawstyle="steps-post")
            positive = [v for v in self.lr if v > 0]
            if positive and max(positive) > 20 * min(positive) and len(positive) == len(self.lr):
                ax.set_yscale("log")
        ax.set_ylabel("learning rate")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if self.title:
            fig.suptitle(self.title)
        fig.tight_layout()
        buf = _io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        write_bytes_atomic(path, buf.getvalue())
        return True
