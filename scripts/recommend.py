#!/usr/bin/env python
"""Thin wrapper: same as `bert-rec recommend ...` (see `bert-rec recommend --help`)."""
import sys

from bert_rec.cli import main

if __name__ == "__main__":
    sys.exit(main(["recommend", *sys.argv[1:]]))
