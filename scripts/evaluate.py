#!/usr/bin/env python
"""Thin wrapper: same as `bert-rec evaluate ...` (see `bert-rec evaluate --help`)."""
import sys

from bert_rec.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
