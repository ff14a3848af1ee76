import sys

from greenserve.cli import main

if __name__ == "__main__":
    sys.exit(main())
