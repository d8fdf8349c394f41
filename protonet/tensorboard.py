"""TensorBoard event files for a training run: live curves, prototxts, overlays.

``protonet train`` and ``protonet tutorial`` write them beside the
snapshots (``tensorboard --logdir runs/`` then shows every run folder under
runs/ as its own run). The writer is tensorboardX's event format, the
optional extra ``pip install "protonet[tensorboard]"``; without it training
goes on and says once how to get the curves.

What a run holds (tags):

* ``train/loss``, ``train/smoothed_loss``, ``train/lr`` at every iteration;
* ``test/<output>`` (test net #0) and ``test<k>/<output>`` (#k) at every
  test, every value Caffe prints (``<output>_<j>`` for the j-th value of a
  multi-valued output such as per-class accuracy);
* text ``solver`` and ``net`` (``train_net``, ``test_net_<k>`` when the
  test nets come from other files), at the run's first iteration;
* for a segmentation test net, ``test/overlay_<j>``: a few validation images
  with the predicted mask (red) and the label's contour (green), at every test.

The training loop only appends to a queue; a thread of the writer builds
the events, draws the overlays and writes the file, so logging costs the
loop microseconds. A run first drops the steps at or after its
``start_iter`` from the earlier event files of its name (a resumed run
redoes them; a run from iteration 0 replaces them all) and starts its own
file with TensorBoard's purge marker (a SessionLog START at that step), so
the curves go on without a gap or a duplicated step whichever reader shows
them.
"""
import collections
import glob
import os
import re
import socket
import struct
import threading
import time

import numpy as np

from .log import get_logger

log = get_logger()

INSTALL_HINT = 'pip install "protonet[tensorboard]"'
OVERLAYS = 4            # validation pictures per test of a segmentation net
_FLUSH_SECS = 2.0       # how stale the file may be while training runs

_warned_missing = False


def available():
    """True when tensorboardX (the event writer) can be imported."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        return False
    return True


def open_writer(logdir, start_iter=0, run=None):
    """A :class:`EventWriter` for ``logdir``, or None (said once) without tensorboardX."""
    global _warned_missing
    if not available():
        if not _warned_missing:
            log.info("TensorBoard curves are not written: tensorboardX is not installed "
                     "(%s)", INSTALL_HINT)
            _warned_missing = True
        return None
    return EventWriter(logdir, start_iter=start_iter, run=run)


# ---------------------------------------------------------------- event files
def _safe(name):
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name) or "run"


def _records(path):
    """(raw record bytes, payload) of each whole record of a TFRecord file.

    A record is length (u64), its masked CRC (u32), the payload, the
    payload's masked CRC (u32); a torn tail (a writer that died) ends the list.
    """
    with open(path, "rb") as f:
        data = f.read()
    pos, out = 0, []
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        end = pos + 12 + length + 4
        if end > len(data):
            break
        out.append((data[pos:end], data[pos + 12:pos + 12 + length]))
        pos = end
    return out


def drop_steps_from(path, first_stale):
    """Rewrite the event file ``path`` without its events at step >= ``first_stale``.

    Records are copied byte for byte (their checksums stay valid) and the file
    is replaced in one step; a file left with nothing but its version record
    is removed. Returns the number of events dropped.
    """
    from tensorboardX.proto.event_pb2 import Event
    kept, dropped, events = [], 0, 0
    for raw, payload in _records(path):
        event = Event.FromString(payload)
        if event.HasField("file_version"):
            kept.append(raw)
        elif event.step >= first_stale:
            dropped += 1
        else:
            kept.append(raw)
            events += event.HasField("summary")     # a purge marker alone is no content
    if dropped and not events:
        os.remove(path)
    elif dropped:
        from .io import write_bytes_atomic
        write_bytes_atomic(path, b"".join(kept))
    return dropped


class EventWriter:
    """One run's event file in ``logdir``, written by a thread.

    ``run`` (default ``"run"``; the solver passes its snapshot prefix's last
    part) names its files (``events.out.tfevents.<time>.<host>.protonet-<run>.<n>``):
    a run rewrites only files of its own name, and ``n`` keeps files made
    within one second in the order TensorBoard must read them.
    """

    def __init__(self, logdir, start_iter=0, run=None):
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        self._Event = Event
        self.logdir = os.path.abspath(logdir)
        self.start_iter = int(start_iter)
        os.makedirs(self.logdir, exist_ok=True)
        tag = "protonet-" + _safe(run or "run")
        pattern = os.path.join(self.logdir, "events.out.tfevents.*.%s.*" % tag)
        earlier = sorted(glob.glob(pattern))
        # a run resumed at iteration N redoes N and on; one started afresh (N = 0) redoes all
        dropped = sum(drop_steps_from(path, self.start_iter) for path in earlier)
        if dropped:
            log.info("TensorBoard: dropped %d events at iterations >= %d written by an earlier "
                     "run in %s", dropped, self.start_iter, self.logdir)
        numbers = [int(m.group(1)) for m in
                   (re.search(r"\.(\d+)$", p) for p in earlier) if m]
        suffix = ".%s.%04d" % (tag, max(numbers, default=0) + 1)
        self._file = EventsWriter(os.path.join(self.logdir, "events"), suffix)
        self.path = self._file._file_name
        # What TensorBoard's Python reader purges by: a restart at this step drops every
        # later step it read before (a TensorBoard that was already showing the old run).
        self._file.write_event(Event(wall_time=time.time(), step=self.start_iter,
                                     session_log=SessionLog(status=SessionLog.START)))
        self._file.flush()
        self._queue = collections.deque()
        self._lock = threading.Lock()      # the thread and flush()/close() both drain
        self._wake = threading.Event()
        self._closed = False
        self._error = None
        self._thread = threading.Thread(target=self._run, name="protonet-tensorboard", daemon=True)
        self._thread.start()

    # -- what the solver calls: cheap, no work here beyond copying values
    def on_train(self, iteration, loss, smoothed, lr):
        self._queue.append(("train", int(iteration), float(loss), float(smoothed), float(lr)))

    def on_test(self, net_id, iteration, results):
        """``results``: (output name, value, loss weight) per value, as the solver logs them."""
        self._queue.append(("test", int(net_id), int(iteration), list(results)))
        self._wake.set()

    def on_overlays(self, net_id, iteration, samples):
        """``samples``: (image H x W [x C], predicted mask, true mask or None) host arrays."""
        if samples:
            self._queue.append(("overlays", int(net_id), int(iteration), list(samples)))
            self._wake.set()

    def on_text(self, tag, text, iteration=None):
        self._queue.append(("text", tag, text,
                            self.start_iter if iteration is None else int(iteration)))

    def flush(self):
        """Write what is queued now (blocks until it is on disk)."""
        if not self._closed:
            self._drain()

    def close(self):
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._thread.join()
        self._drain()
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the thread
    def _run(self):
        while not self._closed:
            self._wake.wait(_FLUSH_SECS)
            self._wake.clear()
            if self._closed:
                break
            self._drain()

    def _drain(self):
        with self._lock:
            wrote = False
            while True:
                try:
                    item = self._queue.popleft()
                except IndexError:
                    break
                try:
                    for event in self._events(item):
                        self._file.write_event(event)
                        wrote = True
                except Exception as exc:       # a picture that cannot be drawn stops no training
                    if self._error is None:
                        log.warning("TensorBoard: could not write %s events to %s: %s",
                                    item[0], self.path, exc)
                        self._error = exc
            if wrote:
                self._file.flush()

    def _events(self, item):
        from tensorboardX.proto.summary_pb2 import Summary
        now = time.time()
        kind = item[0]
        if kind == "train":
            _, it, loss, smoothed, lr = item
            values = [Summary.Value(tag="train/loss", simple_value=loss),
                      Summary.Value(tag="train/smoothed_loss", simple_value=smoothed),
                      Summary.Value(tag="train/lr", simple_value=lr)]
            return [self._Event(wall_time=now, step=it, summary=Summary(value=values))]
        if kind == "test":
            _, net_id, it, results = item
            values = [Summary.Value(tag=tag, simple_value=value)
                      for tag, value in test_tags(net_id, results)]
            return [self._Event(wall_time=now, step=it, summary=Summary(value=values))]
        if kind == "overlays":
            from tensorboardX.summary import image
            from .viz import overlay
            _, net_id, it, samples = item
            prefix = "test" if net_id == 0 else "test%d" % net_id
            summaries = [image("%s/overlay_%d" % (prefix, j), overlay(img, pred, true),
                               dataformats="HWC")
                         for j, (img, pred, true) in enumerate(samples)]
            values = [v for s in summaries for v in s.value]
            return [self._Event(wall_time=now, step=it, summary=Summary(value=values))]
        if kind == "text":
            from tensorboardX.summary import text
            _, tag, body, it = item
            return [self._Event(wall_time=now, step=it, summary=text(tag, body))]
        raise ValueError("unknown event kind %r" % (kind,))


def test_tags(net_id, results):
    """(tag, value) per test output value: ``test/<name>`` for net #0, ``test<k>/`` for #k;
    the j-th value of a multi-valued output is ``<name>_<j>``."""
    prefix = "test" if net_id == 0 else "test%d" % net_id
    counts = collections.Counter(name for name, _, _ in results)
    seen = collections.Counter()
    out = []
    for name, value, _ in results:
        j = seen[name]
        seen[name] += 1
        label = name if counts[name] == 1 else "%s_%d" % (name, j)
        out.append(("%s/%s" % (prefix, label), float(value)))
    return out


test_tags.__test__ = False      # not a pytest test, whatever its name


def code_block(text):
    """Text shown as written: TensorBoard renders text summaries as Markdown."""
    return "```\n%s\n```" % text.rstrip("\n")


def run_texts(param, source=None):
    """[(tag, text)]: the solver (as protonet read it) and the nets' prototxt files.

    Nets inside the solver (``net_param``) are shown as text too; a test net
    from the same file as the train net is not repeated.
    """
    from google.protobuf import text_format
    texts = [("solver", text_format.MessageToString(param))]

    def body(path):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError as exc:
            return "(%s could not be read: %s)" % (path, exc)

    train = None
    for field in ("net", "train_net"):
        if param.HasField(field):
            train = ("file", getattr(param, field))
    for field in ("net_param", "train_net_param"):
        if param.HasField(field):
            train = ("message", text_format.MessageToString(getattr(param, field)))
    if train is not None:
        texts.append(("net", body(train[1]) if train[0] == "file" else train[1]))
    for k, path in enumerate(param.test_net):
        if ("file", path) != train:
            texts.append(("test_net_%d" % k, body(path)))
    for k, message in enumerate(param.test_net_param, start=len(param.test_net)):
        texts.append(("test_net_%d" % k, text_format.MessageToString(message)))
    return [(tag, code_block(text)) for tag, text in texts]


# ---------------------------------------------------------------- segmentation overlays
class SegmentationSamples:
    """Finds what to draw for a segmentation test net, and copies a few samples.

    A test net is a segmentation net when a layer whose top is a net output
    (loss, accuracy, Dice) takes a score blob N x C x H x W (H, W > 1) and a
    label blob of one channel and the same N, H, W from a data layer; the
    picture is a data-layer top of that N, H, W other than the label. ``None``
    from :meth:`find` otherwise. The predicted mask is the argmax over C
    (C > 1) or score > 0.5 / > 0 (one channel of probabilities / logits); the
    true mask is label in 1..C-1 (an ignore_label such as 255 is not in).
    """

    def __init__(self, image, score, label, count=OVERLAYS):
        self.image, self.score, self.label = image, score, label
        self.count = count
        self.samples = []

    @classmethod
    def find(cls, net, count=OVERLAYS):
        shapes = {name: tuple(b.shape) for name, b in net.blobs.items()}
        sourced = set(net.inputs)       # blobs from data layers (no bottoms) or net inputs
        origin = {}                     # a Split's top -> the blob it copies
        for li, bottoms in enumerate(net.bottom_names):
            if not bottoms:
                sourced.update(net.top_names[li])
            elif net.param.layer[li].type == "Split":
                for top in net.top_names[li]:
                    origin[top] = origin.get(bottoms[0], bottoms[0])
        outputs = set(net.outputs)
        for li, bottoms in enumerate(net.bottom_names):
            tops = net.top_names[li]
            if len(bottoms) < 2 or not tops or tops[0] not in outputs:
                continue
            score, label = (origin.get(b, b) for b in bottoms[:2])
            s, l = shapes.get(score, ()), shapes.get(label, ())
            if len(s) != 4 or s[2] <= 1 or s[3] <= 1 or label not in sourced:
                continue
            n, _, h, w = s
            if len(l) < 3 or l[0] != n or tuple(l[-2:]) != (h, w) or int(np.prod(l)) != n * h * w:
                continue
            for name in sourced:
                shape = shapes.get(name, ())
                if (name != label and len(shape) == 4 and shape[0] == n
                        and tuple(shape[2:]) == (h, w)):
                    return cls(name, score, label, count)
        return None

    def reset(self):
        self.samples = []

    def take(self, net):
        """Copy samples of the net's current batch until ``count`` are held."""
        need = self.count - len(self.samples)
        if need <= 0:
            return
        from . import backend
        score = np.asarray(backend.to_host(net.blobs[self.score].data))
        image = np.asarray(backend.to_host(net.blobs[self.image].data))
        label = np.asarray(backend.to_host(net.blobs[self.label].data))
        n, c, h, w = score.shape
        if image.shape[0] != n or image.shape[2:] != (h, w) or label.size != n * h * w:
            return          # reshaped since find(): nothing sensible to draw
        label = label.reshape(n, h, w)
        for i in range(min(need, n)):
            if c > 1:
                pred = score[i].argmax(axis=0) != 0
                true = (label[i] >= 1) & (label[i] < c)
            else:
                s = score[i, 0]
                pred = s > (0.5 if s.min() >= 0 and s.max() <= 1 else 0.0)
                true = label[i] == 1
            self.samples.append((np.transpose(image[i], (1, 2, 0)).astype(np.float32),
                                 pred, true))
