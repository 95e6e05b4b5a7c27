#!/usr/bin/env python3
"""Build the plain-text corpus the shipped checkpoint (checkpoints/tiny-bert-zh) was pretrained on.

Mixes real modern Chinese from ``../shared/data`` (which exists only on the machine that built
the project; the corpus is written to a temporary path and never committed):

- ``pretrain-zh/wiki-cmrc2018.txt.gz``  Chinese Wikipedia sentences (CC BY-SA 4.0, CMRC 2018)
- ``pretrain-zh/dialogue-kdconv.txt.gz`` casual film/music/travel dialogue (Apache-2.0, KdConv)
- ``pretrain-zh/law-statutes.txt.gz``    laws and regulations (official texts, no copyright)
- ``kuairec-captions/``                  short-video captions (CC BY-SA 4.0, KuaiRec), except the
  items of ``data/heldout``, so that set stays unseen by the checkpoint

Legal text is 94% of the characters but far from captions and comments, so a seeded half of it
is taken, while the encyclopedia, dialogue and caption lines are written twice (dynamic masking
makes the two passes differ). Lines without a CJK character are dropped. Deterministic:

    python scripts/build_pretrain_corpus.py --out /tmp/bert_rec-corpus.txt.gz
"""

import argparse
import csv
import gzip
import json
import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT / ".." / "shared" / "data"
CJK = re.compile(r"[\u4e00-\u9fff]")


def read_gz_lines(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.strip() for line in f if CJK.search(line)]


def caption_lines(path, exclude_ids):
    """Cover text and caption of every video not in ``exclude_ids`` (``v<id>`` item ids)."""
    lines = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)
        for row in reader:
            if len(row) < 3 or f"v{row[0]}" in exclude_ids:
                continue
            for text in (row[1], row[2]):
                text = " ".join(text.split())
                if text != "UNKNOWN" and CJK.search(text):
                    lines.append(text)
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(SHARED), help="the shared data folder")
    parser.add_argument("--out", required=True, help="corpus file to write (.txt.gz)")
    parser.add_argument("--law-fraction", type=float, default=0.5)
    parser.add_argument("--repeat-casual", type=int, default=2,
                        help="times the wiki, dialogue and caption lines are written")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    shared = Path(args.shared)
    with open(ROOT / "data" / "heldout" / "items.jsonl", encoding="utf-8") as f:
        heldout = {json.loads(line)["item_id"] for line in f if line.strip()}
    rng = random.Random(args.seed)
    law = read_gz_lines(shared / "pretrain-zh" / "law-statutes.txt.gz")
    law = [line for line in law if rng.random() < args.law_fraction]
    casual = (read_gz_lines(shared / "pretrain-zh" / "wiki-cmrc2018.txt.gz")
              + read_gz_lines(shared / "pretrain-zh" / "dialogue-kdconv.txt.gz")
              + caption_lines(shared / "kuairec-captions" / "kuairec_caption_category.csv",
                              heldout))
    lines = law + casual * args.repeat_casual
    rng.shuffle(lines)
    with gzip.open(args.out, "wt", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
    chars = sum(len(line) for line in lines)
    print(f"wrote {args.out}: {len(lines)} lines, {chars / 1e6:.1f}M characters "
          f"({len(law)} legal lines, {len(casual)} casual lines x {args.repeat_casual}; "
          f"{len(heldout)} held-out items' captions left out)")


if __name__ == "__main__":
    main()
