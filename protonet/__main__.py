"""``python -m protonet <command>``: the same as the ``protonet`` console script."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
