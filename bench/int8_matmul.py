#!/usr/bin/env python
"""Is an int8 encoder worth building here? The products of one BERT-base layer in float32,
bfloat16 and int8, each as TensorFlow runs it on this CPU.

An encoder's time is mostly its dense products: per layer, for B·L tokens, [B·L, 768] x
[768, 2304] (Q, K, V), x [768, 768] (attention output), x [768, 3072] and [3072, 768] (the
feed-forward). This times those four shapes for 32 texts of 42 tokens (B·L = 1,344, the
encoder's batch at base width) three ways, inputs already in the product's type:

- float32 ``tf.matmul`` (what the encoder runs by default);
- bfloat16 ``tf.matmul`` (``--precision bfloat16``);
- int8: ``tf.raw_ops.QuantizedMatMulWithBias``, uint8 activation codes x int8 weights ->
  int32 (oneDNN's int8 kernel, VNNI where the CPU has it), alone and with the steps an int8
  encoder could not avoid: quantising the float32 activations over their range before the
  product, and scaling its int32 result back (with the zero-point correction) after it.

It prints the rate of each and the largest error of the int8 product against float32, relative
to the largest float32 output. No encoder is run: this bounds what an int8 path could gain.

    .venv/bin/python bench/int8_matmul.py [--repeats 10]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import table, timed, write_result  # noqa: E402

TOKENS = 32 * 42
SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]  # one BERT-base layer's products


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    rng = np.random.default_rng(0)
    totals = {"float32": 0.0, "bfloat16": 0.0, "int8 product": 0.0,
              "int8 with (de)quantising": 0.0}
    errors = []
    flops = 0
    for k, n in SHAPES:
        flops += 2 * TOKENS * k * n
        x = tf.constant(rng.standard_normal((TOKENS, k)).astype(np.float32))
        w = tf.constant((rng.standard_normal((k, n)) * 0.05).astype(np.float32))
        bias = tf.zeros([n], tf.float32)
        xb, wb = tf.cast(x, tf.bfloat16), tf.cast(w, tf.bfloat16)
        # Weights: symmetric per-tensor int8. Activations: asymmetric uint8 over their range,
        # x ≈ scale·q + low, so x·w ≈ scale·(q·w) + low·colsum(w). The kernel runs in its
        # SCALED mode on the raw codes (its int32 result is then exactly q·q_w) and the zero
        # point is corrected here: its MIN_FIRST mode gave wrong results here.
        w_scale = float(tf.reduce_max(tf.abs(w))) / 127
        qw = tf.bitcast(tf.cast(tf.round(w / w_scale), tf.int8), tf.qint8)
        w_colsum = tf.reduce_sum(tf.round(w / w_scale), 0) * w_scale  # [n]
        w_range = 127 * w_scale

        def quantise(x):
            low, high = tf.reduce_min(x), tf.reduce_max(x)
            scale = (high - low) / 255
            codes = tf.cast(tf.round((x - low) / scale), tf.uint8)
            return tf.bitcast(codes, tf.quint8), low, scale

        def product(codes, scale, qw=qw, bias=bias, w_range=w_range):
            return tf.raw_ops.QuantizedMatMulWithBias(
                a=codes, b=qw, bias=bias, min_a=0.0, max_a=255 * scale, min_b=-w_range,
                max_b=w_range, Toutput=tf.qint32, input_quant_mode="SCALED").out

        codes, low, scale = quantise(x)

        def int8_product(codes=codes, scale=scale, product=product):
            return product(codes, scale)

        def int8_full(x=x, quantise=quantise, product=product, w_scale=w_scale,
                      w_colsum=w_colsum):
            codes, low, scale = quantise(x)
            exact = tf.cast(tf.bitcast(product(codes, scale), tf.int32), tf.float32)
            return exact * (scale * w_scale) + low * w_colsum

        runs = {"float32": tf.function(lambda x=x, w=w: tf.matmul(x, w)),
                "bfloat16": tf.function(lambda xb=xb, wb=wb: tf.matmul(xb, wb)),
                "int8 product": tf.function(int8_product),
                "int8 with (de)quantising": tf.function(int8_full)}
        for name, fn in runs.items():
            totals[name] += timed(lambda fn=fn: tf.nest.map_structure(
                lambda t: t.numpy(), fn()), repeats=args.repeats)[0]
        exact = tf.matmul(x, w)
        approx = runs["int8 with (de)quantising"]()
        errors.append(float(tf.reduce_max(tf.abs(approx - exact)) / tf.reduce_max(tf.abs(exact))))

    rows = [[name, seconds * 1000, flops / seconds / 1e9, totals["float32"] / seconds]
            for name, seconds in totals.items()]
    print(f"\nthe four products of one BERT-base layer, {TOKENS} tokens, median of "
          f"{args.repeats}\n")
    table(["path", "ms", "GOP/s", "vs float32"], rows)
    print(f"\nint8 with (de)quantising: largest error / largest float32 output "
          f"{max(errors):.4f}")
    write_result("int8_matmul", {"tokens": TOKENS, "shapes": SHAPES,
                                 "seconds": totals, "max_relative_error": max(errors)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
