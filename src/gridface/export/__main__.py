"""``python -m gridface.export``: see :mod:`gridface.export.cli`."""

from gridface.export.cli import main

if __name__ == "__main__":
    main()
