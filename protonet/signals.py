"""Signals during training: Caffe's ``-sigint_effect`` / ``-sighup_effect``.

A signal only raises a flag (:class:`SignalHandler`); the solver asks for the
action (``NONE``, ``STOP`` or ``SNAPSHOT``, Caffe's SolverAction) between
iterations. :func:`_sigint_held` keeps a Ctrl-C from landing inside an update.
"""
import contextlib
import signal
import threading

try:    # CPython's own module under ``signal``: the same calls without the enum conversions
    import _signal as _raw_signal      # (about 20 us a pair on this machine's kind, per step)
except ImportError:                   # pragma: no cover - other interpreters
    _raw_signal = signal

from .log import get_logger

__all__ = ["SignalHandler", "NONE", "STOP", "SNAPSHOT"]

log = get_logger()

# Caffe's SolverAction: what a signal asks for, checked between iterations.
NONE, STOP, SNAPSHOT = "none", "stop", "snapshot"
_ACTIONS = (NONE, STOP, SNAPSHOT)


@contextlib.contextmanager
def _sigint_held():
    """Hold a Ctrl-C that arrives inside the block until its end: an update is applied to
    every parameter or to none (Python's default handler would raise between any two)."""
    if threading.current_thread() is not threading.main_thread() \
            or _raw_signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield               # a SignalHandler (the command line) already defers it
        return
    got = []
    previous = _raw_signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        _raw_signal.signal(signal.SIGINT, previous)
    if got:
        raise KeyboardInterrupt



class SignalHandler:
    """Caffe's ``-sigint_effect`` / ``-sighup_effect``.

    A signal only raises a flag; the solver asks (``handler()`` returns
    ``"stop"``, ``"snapshot"`` or ``"none"``) between iterations and between
    test batches, so a snapshot is never written from inside an update.
    As in Caffe, SIGINT defaults to stop (the solver then snapshots when
    ``snapshot_after_train``) and SIGHUP to snapshot. A second SIGINT that
    arrives before the first was acted on aborts at once (KeyboardInterrupt);
    snapshots are written atomically, so that never leaves a torn file.

    Use as a context manager: the previous handlers come back on exit.
    """

    def __init__(self, sigint_effect=STOP, sighup_effect=SNAPSHOT, sigterm_effect=None):
        for flag, value in (("sigint_effect", sigint_effect), ("sighup_effect", sighup_effect),
                            ("sigterm_effect", sigterm_effect or NONE)):
            if value not in _ACTIONS:
                raise ValueError("invalid signal effect %r for %s: use one of %s"
                                 % (value, flag, ", ".join(_ACTIONS)))
        self.sigint_effect = sigint_effect
        self.sighup_effect = sighup_effect
        # None leaves SIGTERM alone; data-parallel runs stop every rank on it (a batch
        # system's or a launcher's SIGTERM), with a snapshot
        self.sigterm_effect = sigterm_effect
        self._pending = {}
        self._previous = {}

    def _signals(self):
        sigs = [signal.SIGINT]
        if hasattr(signal, "SIGHUP"):
            sigs.append(signal.SIGHUP)
        if self.sigterm_effect is not None:
            sigs.append(signal.SIGTERM)
        return sigs

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            log.warning("signal handlers can only be installed from the main thread; "
                        "SIGINT/SIGHUP keep their default effect")
            return self
        for sig in self._signals():
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    __enter__ = install

    def __exit__(self, *exc):
        self.uninstall()
        return False

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self._pending.get(signum) and self.sigint_effect != NONE:
            raise KeyboardInterrupt("second SIGINT before the first was handled")
        self._pending[signum] = True

    def __call__(self):
        # SIGHUP first, as Caffe's CheckForSignals: with both pending, snapshot then stop
        if hasattr(signal, "SIGHUP") and self._pending.pop(signal.SIGHUP, False):
            return self.sighup_effect
        if self._pending.pop(signal.SIGINT, False):
            return self.sigint_effect
        if self._pending.pop(signal.SIGTERM, False):
            return self.sigterm_effect
        return NONE
