"""``python -m protonet <command>``: the same as the ``protonet`` console script."""
import sys

if __name__ == "__main__":
    try:
        from .cli import main
    except KeyboardInterrupt:           # Ctrl-C while starting: one line, as main() says it
        sys.stderr.write("protonet: interrupted\n")
        sys.exit(130)
    sys.exit(main())
