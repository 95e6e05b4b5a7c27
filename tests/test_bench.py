"""The benchmark suite's own arithmetic and data: FLOP counts, the vectorised user simulator,
and the padding the encoder's length buckets leave on the sample catalogue."""

import os
import sys

import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)

import common  # noqa: E402
import simdata  # noqa: E402


def test_bert_flops_counts_matmuls():
    # One layer, one token, H=2, I=8: QKVO 8·1·4 + FFN 4·1·2·8 + attention 4·1·1·2 = 104.
    assert common.bert_flops([1], layers=1, hidden=2, intermediate=8) == 104
    # BERT-base on a 128-token sequence: 12 layers x (8·128·768² for QKVO + 4·128·768·3072 for
    # the FFN + 4·128²·768 for attention) = 22.4 GFLOP.
    assert common.bert_flops([128], 12, 768) == pytest.approx(22.4e9, rel=0.01)
    assert common.bert_flops([3, 5], 2, 16) == common.bert_flops([3], 2, 16) + \
        common.bert_flops([5], 2, 16)


def test_fast_make_user_matches_the_generator():
    gen = simdata._generator()
    rnd = gen.Rand(3)
    world = gen.World(simdata.build_items(800, rnd, gen))
    fast = simdata._fast_make_user(gen, world)
    slow_rnd, fast_rnd = gen.Rand(11), gen.Rand(11)
    for _ in range(20):
        slow, quick = gen.make_user(slow_rnd, world, "mixture"), fast(fast_rnd, world, "mixture")
        for key in ("w0", "w1", "sec", "tag"):
            np.testing.assert_array_equal(slow[key], quick[key])
    assert slow_rnd.u() == fast_rnd.u()  # the same random draws were consumed


def test_build_items_are_distinct_beyond_the_real_captions():
    gen = simdata._generator()
    items = simdata.build_items(5000, gen.Rand(0), gen)
    assert len({it["item_id"] for it in items}) == 5000
    texts = {(it["title"], it["text"]) for it in items}
    assert len(texts) > 4900  # variants append another item's clause
    assert all(it["pop"] > 0 for it in items)


def test_length_buckets_leave_little_padding_on_the_sample_catalogue():
    from bert_rec.data import read_items
    from bert_rec.encoder import plan_batches
    from bert_rec.text import TextPipeline
    from bert_rec.tokenization import encode_texts, load_tokenizer
    items, _ = read_items(os.path.join(common.ROOT, "data", "sample", "items.jsonl"))
    texts = TextPipeline().clean_many([item.full_text() for item in items])
    tokenizer = load_tokenizer(os.path.join(common.TINY, "vocab.txt"))
    lengths = np.array([len(s) for s in encode_texts(tokenizer, texts, 64)])
    batches = plan_batches(lengths, 64)
    assert sorted(np.concatenate(batches)) == list(range(len(lengths)))
    computed = sum(len(rows) * lengths[rows].max() for rows in batches)
    assert 1 - lengths.sum() / computed <= 0.10
    # Unsorted batches of the same size would pad far more: the buckets are doing the work.
    naive = sum(len(r) * lengths[r].max() for r in np.array_split(np.arange(len(lengths)),
                                                                  len(batches)))
    assert 1 - lengths.sum() / naive > 0.2
