"""Caffe's log lines (glog's format) and a terminal progress bar.

Every line starts like glog's::

    I1122 10:07:39.123456  1234 solver.py:218] Iteration 20 (4.1 iter/s, 4.9s/20 iters), loss = 0.5

(level letter, month+day, time with microseconds, thread id right-aligned in 5,
source file:line) so tools written for Caffe logs (``tools/extra/parse_log.py``,
DIGITS) read ours. Lines go to ``sys.stderr`` as glog's do, looked up when each
line is written so redirection and test capture work.

The library logs through the standard ``logging`` logger ``"protonet"``:
``setup()`` (the command line calls it) installs the glog-format handler;
``ensure_handler()`` installs it only when nobody configured logging, so a
pycaffe-style script still sees Caffe's lines while an application that set
up ``logging`` keeps control of them.
"""
import contextlib
import logging
import os
import shutil
import sys
import threading
import time

LOGGER_NAME = "protonet"
logger = logging.getLogger(LOGGER_NAME)

_LETTERS = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W",
            logging.ERROR: "E", logging.CRITICAL: "F"}


def fmt(value):
    """A number as C++ ``ostream <<`` prints a float (6 significant digits, like %g)."""
    return "%g" % float(value)


def plural(count, word, words=None):
    """``1 epoch``, ``2 epochs``, ``0.5 epochs`` (``words``: an irregular plural)."""
    text = fmt(count) if isinstance(count, float) else str(count)
    return "%s %s" % (text, word if count == 1 else (words or word + "s"))


class GlogFormatter(logging.Formatter):
    """``I1122 10:07:39.123456  1234 file.py:12] message``; later lines of a
    multi-line message carry no prefix, as with glog."""

    def format(self, record):
        created = record.created
        t = time.localtime(created)
        micros = int(round((created - int(created)) * 1e6))
        if micros >= 1000000:       # rounding reached the next second
            micros = 999999
        letter = _LETTERS.get(record.levelno, "I" if record.levelno < logging.WARNING else "E")
        tid = getattr(record, "native_tid", None) or threading.get_native_id()
        prefix = "%s%02d%02d %02d:%02d:%02d.%06d %5d %s:%d] " % (
            letter, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, micros, tid,
            record.filename, record.lineno)
        text = prefix + record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class StderrHandler(logging.StreamHandler):
    """A StreamHandler bound to whatever ``sys.stderr`` is at emit time.

    While a :class:`ProgressBar` is drawn on the same stream, the bar is wiped
    before a line is written and drawn again below it.
    """

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass  # always the current sys.stderr

    def emit(self, record):
        bar = ProgressBar.active
        if bar is not None and bar.stream is self.stream:
            bar.clear()
            super().emit(record)
            bar.redraw()
        else:
            super().emit(record)


def _has_glog_handler(log):
    return any(isinstance(h.formatter, GlogFormatter) for h in log.handlers)


# GLOG_minloglevel's values: 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL
_GLOG_LEVELS = (logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)


def _env_level(level):
    """``level``, raised to what GLOG_minloglevel asks (as Caffe's glog reads it)."""
    value = os.environ.get("GLOG_minloglevel", "").strip()
    if not value:
        return level
    try:
        floor = _GLOG_LEVELS[min(max(int(value), 0), 3)]
    except ValueError:
        return level
    return max(level, floor)


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "y")


def setup(level=logging.INFO, log_file=None, program="protonet", log_dir=None):
    """Send protonet's log lines to stderr in glog's format (idempotent).

    ``log_file``: also write them to this file (one at a time: a new call
    replaces it; :func:`close_log_file` ends it). As with Caffe's glog, the
    environment can ask for less (``GLOG_minloglevel=1`` warnings and up,
    ``=2`` errors) and for a log file (``GLOG_log_dir=DIR``: see
    :func:`log_dir_file`; ``GLOG_logtostderr=1`` keeps to stderr).
    ``log_dir`` is glog's ``--log_dir`` flag: as GLOG_log_dir, and wins over it.
    """
    if not _has_glog_handler(logger):
        handler = StderrHandler()
        handler.setFormatter(GlogFormatter())
        logger.addHandler(handler)
    logger.setLevel(_env_level(level))
    close_log_file()
    try:
        folder = log_dir or os.environ.get("GLOG_log_dir")
        if log_file is None and folder and not _env_flag("GLOG_logtostderr"):
            log_file = log_dir_file(folder, program)
        if log_file:
            global _file_handler
            _file_handler = logging.FileHandler(log_file)
            _file_handler.setFormatter(GlogFormatter())
            logger.addHandler(_file_handler)
    except OSError as exc:
        # as glog: say so and go on logging to stderr
        logger.warning("Could not create logging file: %s", exc)
    return logger


_file_handler = None


def _log_warning(message, category, filename, lineno, file=None, line=None):
    """warnings.showwarning for the command line: a warning is one log line, with the
    place that warned in glog's file:line slot, instead of Python's two-line
    ``file.py:117: RuntimeWarning: ...`` plus the source line."""
    text = " ".join(str(message).split())
    record = logger.makeRecord(logger.name, logging.WARNING, filename, lineno,
                               "%s: %s", (category.__name__, text), None)
    logger.handle(record)


@contextlib.contextmanager
def warnings_to_log():
    """Meanwhile, Python warnings go to protonet's log (see :func:`_log_warning`)."""
    import warnings
    previous = warnings.showwarning
    warnings.showwarning = _log_warning
    try:
        yield
    finally:
        warnings.showwarning = previous


def close_log_file():
    """Stop writing to the file :func:`setup` opened, if any."""
    global _file_handler
    if _file_handler is not None:
        logger.removeHandler(_file_handler)
        _file_handler.close()
        _file_handler = None


def log_dir_file(folder, program="protonet"):
    """A new glog-style log file in ``folder``, and the ``<program>.INFO`` link to it.

    Named as glog names it (``<program>.<host>.<user>.log.INFO.<date>-<time>.<pid>``)
    and opened with glog's three header lines, so scripts that look for
    Caffe's log there find ours. Returns the path.
    """
    import getpass
    import socket
    os.makedirs(folder, exist_ok=True)
    now = time.localtime()
    try:
        user = getpass.getuser()
    except Exception:  # no user name in a bare container
        user = "invalid-user"
    name = "%s.%s.%s.log.INFO.%s.%d" % (program, socket.gethostname(), user,
                                         time.strftime("%Y%m%d-%H%M%S", now), os.getpid())
    path = os.path.join(folder, name)
    with open(path, "a") as f:
        f.write("Log file created at: %s\nRunning on machine: %s\n"
                "Log line format: [IWEF]mmdd hh:mm:ss.uuuuuu threadid file:line] msg\n"
                % (time.strftime("%Y/%m/%d %H:%M:%S", now), socket.gethostname()))
    link = os.path.join(folder, program + ".INFO")
    try:
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(name, link)
    except OSError:
        pass  # links are a convenience (glog ignores this failure too)
    return path


def ensure_handler():
    """Install the glog handler unless logging is configured already."""
    if logger.handlers or logging.getLogger().handlers:
        return logger
    return setup()


def get_logger(part=None):
    """The ``protonet`` logger, or its child ``protonet.<part>`` (same handlers)."""
    return logging.getLogger(LOGGER_NAME + "." + part) if part else logger


@contextlib.contextmanager
def quiet_net_setup():
    """Hide the lines of net construction ("Creating Layer ...", "Top shape: ...") meanwhile.

    Caffe logs them for every net; a command whose output is for people
    (the tutorial, infer) keeps its own lines readable this way.
    """
    net_log = get_logger("net")
    level = net_log.level
    net_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        net_log.setLevel(level)


def _is_terminal(stream):
    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb" and not os.environ.get("CI")
    except (AttributeError, ValueError):
        return False


class ProgressBar:
    """One line at the bottom of a terminal: iteration, loss, lr, speed, ETA.

    Drawn only when the stream is a terminal (never in pipes, files or CI
    logs); otherwise every method does nothing. Log lines written through
    :class:`StderrHandler` appear above it.
    """

    active = None
    min_interval = 0.1

    def __init__(self, total, start=0, stream=None, enabled=None):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _is_terminal(self.stream) if enabled is None else enabled
        self.total = max(int(total), 0)
        self.start_iter = int(start)
        self.iteration = int(start)
        self.loss = None
        self.lr = None
        self._t0 = time.monotonic()
        self._last_draw = 0.0
        self._text = ""
        if self.enabled:
            ProgressBar.active = self

    def update(self, iteration, loss=None, lr=None):
        if not self.enabled:
            return
        self.iteration = int(iteration)
        if loss is not None:
            self.loss = float(loss)
        if lr is not None:
            self.lr = float(lr)
        now = time.monotonic()
        if now - self._last_draw >= self.min_interval or self.iteration >= self.total:
            self._last_draw = now
            self.redraw()

    def _render(self):
        """The bar and its numbers, each field padded to a fixed width so the line keeps
        one length from the first draw to the last (numbers growing do not shift it)."""
        width = shutil.get_terminal_size((80, 20)).columns
        done = self.iteration - self.start_iter
        todo = self.total - self.start_iter
        elapsed = time.monotonic() - self._t0
        rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
        eta = (self.total - self.iteration) / rate if rate > 0 else None
        digits = len(str(self.total))
        info = " %*d/%d" % (digits, self.iteration, self.total)
        # %.4g / %.3g: at most 10 / 8 characters for any loss / positive lr
        info += "  loss %-10s" % ("%.4g" % self.loss if self.loss is not None else "-")
        info += "  lr %-8s" % ("%.3g" % self.lr if self.lr is not None else "-")
        info += "  %8s it/s" % ("%.3g" % rate if rate else "-")
        if eta is not None:
            m, s = divmod(int(eta + 0.5), 60)
            h, m = divmod(m, 60)
            eta_text = "%d:%02d:%02d" % (h, m, s) if h else "%d:%02d" % (m, s)
        else:
            eta_text = "-"
        info += "  ETA %7s" % eta_text
        slots = max(min(30, width - len(info) - 3), 0)
        frac = min(max(done / todo, 0.0), 1.0) if todo > 0 else 1.0
        filled = int(round(frac * slots))
        bar = "[%s%s]" % ("#" * filled, "." * (slots - filled)) if slots >= 5 else ""
        return (bar + info)[:max(width - 1, 1)]

    def redraw(self):
        if not self.enabled:
            return
        self._text = self._render()
        self.stream.write("\r" + self._text + "\033[K")
        self.stream.flush()

    def clear(self):
        if self.enabled and self._text:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def close(self):
        if not self.enabled:
            return
        self.clear()
        self._text = ""
        self.enabled = False
        if ProgressBar.active is self:
            ProgressBar.active = None
