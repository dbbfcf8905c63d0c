"""``python -m ferflow``: the same command line as ``ferflow``."""

from ferflow.cli import main

main()
