"""protonet's glog-format log lines, captured for a test to read."""
import contextlib
import io
import logging

from protonet import log as plog


@contextlib.contextmanager
def captured_log():
    """Yield a StringIO that receives protonet's INFO (and up) lines while the block runs."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(plog.GlogFormatter())
    plog.logger.addHandler(handler)
    old = plog.logger.level
    plog.logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        plog.logger.removeHandler(handler)
        plog.logger.setLevel(old)
