"""Shared fixtures: tiny Google-format checkpoints written to a temporary directory."""

import atexit
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings

os.environ.setdefault("BERT_REC_PROGRESS", "0")
# The CLI's encode cache defaults to ~/.cache: keep the suite's in a temporary directory of its
# own (shared by the whole session and its subprocesses, which inherit the environment).
if "BERT_REC_CACHE" not in os.environ:
    os.environ["BERT_REC_CACHE"] = tempfile.mkdtemp(prefix="bert_rec-test-cache-")
    atexit.register(shutil.rmtree, os.environ["BERT_REC_CACHE"], ignore_errors=True)

# Property tests: the same examples on every run (CI is deterministic), no per-example deadline
# (the first call loads jieba's dictionary), no example database written into the checkout.
settings.register_profile("bert_rec", derandomize=True, deadline=None, database=None,
                          max_examples=100, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("bert_rec")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "data", "sample")

TINY_TEXTS = [
    "今天 的 美食 视频 太 好看 了", "红烧肉 家常菜 做法", "篮球 比赛 精彩 瞬间",
    "小猫 小狗 萌宠 日常", "旅行 风景 摄影 山 水", "手机 数码 评测 iphone 15 pro",
    "搞笑 段子 喜剧", "美妆 口红 试色", "健身 运动 跑步", "汽车 驾驶 技巧",
]


@pytest.fixture(scope="session")
def tiny_vocab():
    from bert_rec.tokenization import build_char_vocab
    return build_char_vocab(TINY_TEXTS)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, tiny_vocab):
    """A random 2-layer, hidden-32 BERT with MLM/NSP heads, as a checkpoint directory."""
    from bert_rec.checkpoint import create_random_checkpoint
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    return create_random_checkpoint(str(out), tiny_vocab, seed=7, hidden_size=32,
                                    num_hidden_layers=2, num_attention_heads=2,
                                    max_position_embeddings=64)
