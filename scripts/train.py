#!/usr/bin/env python
"""Thin wrapper: same as `bert-rec train ...` (see `bert-rec train --help`)."""
import sys

from bert_rec.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
