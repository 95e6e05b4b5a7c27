#!/usr/bin/env python
"""Encoder efficiency: useful tokens/s, padding fraction and FLOP ratio of ``TextEncoder.encode``.

The texts are the sample catalogue's item feature texts (data/sample, real KuaiRec captions),
cleaned and tokenised as ``bert-rec recommend`` does (at most 64 tokens). They are encoded by the
product path — ``TextEncoder.encode``: distinct texts, length-bucketed batches (of the encoder's
default size: 32 texts at base width, 64 below), one traced
``tf.function`` with a ``[None, None]`` signature — with three configurations:

- tiny: the shipped checkpoints/tiny-bert-zh (2 layers, hidden 128);
- small: random weights, 4 layers, hidden 256, 4 heads;
- base: random weights, BERT-base size (12 layers, hidden 768, 12 heads, vocab 21,128).

Figures: useful (non-padding) tokens/s; padding fraction = padded-but-useless tokens / tokens
computed; FLOP ratio = the encoder's achieved matmul FLOP/s (FLOPs of the useful tokens only,
see ``common.bert_flops``) over the best FLOP/s of 1024², 2048² and 4096² float32 matmuls
measured in the same process, before and after (the higher is used). Median of ``--repeats``
timed runs after one warm-up run (which also traces the function).

Where fast_bert.FastBert runs the float32 encoder (the product's default), base is run again on
the Keras model (``path: keras``), for its speed-up and largest absolute difference; the headline
figures are the product path's.

On a CPU with bfloat16 matmul instructions (``encoder.cpu_has_bf16``: AVX-512 BF16 or AMX), base
is also run with ``precision="bfloat16"`` on the same texts: ``encoder_bf16_speedup`` is its
texts/s over float32's, with the largest absolute difference and the smallest cosine between the
two runs' vectors. Elsewhere bfloat16 is emulated (slower than float32) and the key is null.

    .venv/bin/python bench/encoder.py [--configs tiny small base] [--base-texts 512]
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (CONFIGS, ROOT, bert_flops, matmul_peak, random_checkpoint,  # noqa: E402
                    table, timed, write_result)


def catalogue_texts():
    from bert_rec.data import read_items  # noqa: PLC0415
    items, _ = read_items(os.path.join(ROOT, "data", "sample", "items.jsonl"))
    return [item.full_text() for item in items]


def measure(name, texts, batch_size, repeats, peak, precision="float32", fast=True):
    """One timed configuration; ``fast=False``: the Keras model even where FastBert runs."""
    from bert_rec.encoder import TextEncoder, plan_batches  # noqa: PLC0415
    encoder = TextEncoder(random_checkpoint(name), batch_size=batch_size, precision=precision)
    if not fast:
        encoder.fast = None
    cleaned = list(dict.fromkeys(encoder.pipeline.clean_many(texts)))  # distinct, as encode does
    max_len = min(64, encoder.max_position)
    lengths = np.array([len(encoder.tokenizer.encode(t, maxlen=max_len)[0]) for t in cleaned])
    batches = plan_batches(lengths, encoder.batch_size)
    computed = sum(len(rows) * lengths[rows].max() for rows in batches)
    useful = int(lengths.sum())
    config = encoder.files.config
    seconds, vectors = timed(lambda: encoder.encode(cleaned, max_len=max_len, clean=False),
                             repeats=repeats)
    flops = bert_flops(lengths, config["num_hidden_layers"], config["hidden_size"],
                       config["intermediate_size"])
    computed_flops = sum(bert_flops([lengths[rows].max()] * len(rows),
                                    config["num_hidden_layers"], config["hidden_size"],
                                    config["intermediate_size"]) for rows in batches)
    return vectors, {
        "config": name, "precision": precision,
        "path": "fast_bert" if encoder.fast is not None else "keras",
        "layers": config["num_hidden_layers"],
        "hidden": config["hidden_size"],
        "vocab_size": config["vocab_size"], "texts": len(cleaned),
        "batch_size": encoder.batch_size,
        "mean_tokens": float(lengths.mean()), "seconds": seconds,
        "texts_per_s": len(cleaned) / seconds, "useful_tokens_per_s": useful / seconds,
        "padding_fraction": 1 - useful / computed,
        "useful_gflop_per_s": flops / seconds / 1e9,
        "flop_ratio": flops / seconds / peak,
        "computed_flop_ratio": computed_flops / seconds / peak,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--base-texts", type=int, default=512,
                        help="texts for the base config (a random subset keeping the length mix)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="texts per batch (default: the encoder's, "
                             "encoder.default_batch_size)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from bert_rec.encoder import cpu_has_bf16  # noqa: PLC0415
    texts = catalogue_texts()
    peak_before, sizes_before = matmul_peak()
    runs, bf16, fast = [], None, None
    for name in args.configs:
        subset = texts
        if name == "base" and args.base_texts < len(texts):
            pick = np.random.default_rng(0).choice(len(texts), args.base_texts, replace=False)
            subset = [texts[i] for i in sorted(pick)]
        repeats = 2 if name == "base" else args.repeats
        vectors, run = measure(name, subset, args.batch_size, repeats, peak_before)
        runs.append(run)
        if name == "base" and run["path"] == "fast_bert":  # the same texts on the Keras model
            slow, slow_run = measure(name, subset, args.batch_size, repeats, peak_before,
                                     fast=False)
            runs.append(slow_run)
            fast = {"speedup": run["texts_per_s"] / slow_run["texts_per_s"],
                    "max_abs_diff": float(np.abs(slow - vectors).max())}
        if name == "base" and cpu_has_bf16():
            low, low_run = measure(name, subset, args.batch_size, repeats, peak_before,
                                   precision="bfloat16")
            runs.append(low_run)
            cos = np.sum(low * vectors, 1) / (np.linalg.norm(low, axis=1)
                                              * np.linalg.norm(vectors, axis=1))
            bf16 = {"speedup": low_run["texts_per_s"] / run["texts_per_s"],
                    "max_abs_diff": float(np.abs(low - vectors).max()),
                    "min_cosine": float(cos.min())}
    peak_after, sizes_after = matmul_peak()
    peak = max(peak_before, peak_after)  # the conservative (higher) reference
    for run in runs:  # ratios against the higher of the two matmul measurements
        run["flop_ratio"] *= peak_before / peak
        run["computed_flop_ratio"] *= peak_before / peak

    sizes = ", ".join(f"{n}² {sizes_before[n] / 1e9:.0f}/{sizes_after[n] / 1e9:.0f}"
                      for n in sizes_before)
    print(f"\nfloat32 matmul GFLOP/s before/after: {sizes} (ratios use {peak / 1e9:.0f})\n")
    table(["config", "precision", "path", "texts", "mean tokens", "texts/s", "useful tokens/s",
           "padding", "useful GFLOP/s", "FLOP ratio", "FLOP ratio incl. padding"],
          [[r["config"], r["precision"], r["path"], r["texts"], r["mean_tokens"], r["texts_per_s"],
            r["useful_tokens_per_s"], r["padding_fraction"], r["useful_gflop_per_s"],
            r["flop_ratio"], r["computed_flop_ratio"]] for r in runs])
    by_name = {}  # each config's first float32 run: the product's path
    for r in runs:
        if r["precision"] == "float32":
            by_name.setdefault(r["config"], r)
    summary = {"padding_fraction": max(r["padding_fraction"] for r in runs)}
    # summary.json is merged: a run without base keeps the measured figure; null only
    # where the CPU has no BF16 (the same rule as bench/training.py)
    if bf16:
        summary["encoder_bf16_speedup"] = bf16["speedup"]
    elif not cpu_has_bf16():
        summary["encoder_bf16_speedup"] = None
    if "base" in by_name:
        summary["encoder_flop_ratio_base"] = by_name["base"]["flop_ratio"]
    if fast:
        print(f"\nbase float32, fast_bert over the Keras model: {fast['speedup']:.2f}x texts/s; "
              f"vectors differ by at most {fast['max_abs_diff']:.2e}")
    if bf16:
        print(f"\nbase bfloat16: {bf16['speedup']:.2f}x float32's texts/s; vectors differ by at "
              f"most {bf16['max_abs_diff']:.4f} (min cosine {bf16['min_cosine']:.5f})")
    else:
        print("\nno bfloat16 run: this CPU has no AVX-512 BF16 / AMX (encoder_bf16_speedup null)")
    write_result("encoder", {"matmul_gflop_per_s": {"before": {n: r / 1e9 for n, r in
                                                               sizes_before.items()},
                                                    "after": {n: r / 1e9 for n, r in
                                                              sizes_after.items()}},
                             "fast_bert": fast, "bfloat16": bf16,
                             "cpu_has_bf16": cpu_has_bf16(), "runs": runs},
                 summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
