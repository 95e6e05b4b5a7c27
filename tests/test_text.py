"""Tests for bert_rec.text: normalisation, PII scrubbing, segmentation and configuration."""

import json
import os
import pickle
import random
import subprocess
import sys
import time

import pytest

from bert_rec.text import (BUNDLED_STOPWORDS_PATH, MEANING_WORDS, TextConfig, TextPipeline,
                           load_word_list)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pipe():
    return TextPipeline()


@pytest.fixture(scope="module")
def raw_pipe():
    """No PII scrubbing, no stopword removal: shows what the defaults remove."""
    return TextPipeline(TextConfig(scrub_pii=False, remove_stopwords=False))


# --------------------------------------------------------------------------------------
# normalisation
# --------------------------------------------------------------------------------------
def test_full_width_becomes_half_width_and_lowercase(pipe):
    assert pipe.normalize("ＡＢＣ１２３") == "abc123"
    assert pipe.normalize("Ｈｅｌｌｏ\u3000世界") == "hello 世界"
    assert pipe.words("ＡＢＣ１２３") == ["abc123"]
    assert TextPipeline(TextConfig(lowercase=False)).normalize("ＡＢＣ１２３") == "ABC123"


@pytest.mark.parametrize("text", ["😀😂👍🏽", "🇨🇳❤️✨", "👨\u200d👩\u200d👧", "1\ufe0f\u20e3", "⭐️ ⏰ 🀄"])
def test_emoji_only_text_is_empty(pipe, text):
    assert pipe.normalize(text) in ("", "1")  # a keycap emoji leaves its digit
    assert pipe.normalize(text.replace("1\ufe0f", "")) == ""
    assert pipe.words("😀😂👍🏽") == []


def test_emoji_between_words_is_removed(pipe):
    assert pipe.normalize("好吃😋到哭🥲") == "好吃 到哭"


@pytest.mark.parametrize("value", [None, "", "   ", "\n\t \u3000\u200b", b"bytes", ["list"], True,
                                   float("nan")])
def test_empty_none_whitespace_and_non_strings(pipe, value):
    assert pipe.normalize(value) == ""
    assert pipe.words(value) == []
    assert pipe.clean(value) == ""


def test_numbers_become_text(pipe):
    assert pipe.normalize(12) == "12"
    assert pipe.normalize(3.5) == "3.5"


def test_control_format_chars_and_surrogates(pipe):
    text = "今天\u200b天气\u200e很\u202e好\x00\x07\ufeff\n\t真的\ud800\udfff"
    out = pipe.normalize(text)
    assert out == "今天天气很好 真的"
    assert out.isprintable()
    assert pipe.normalize("第一行\r\n第二行") == "第一行 第二行"


def test_html_entities_and_tags(pipe):
    text = '<p>你好<br/>世界</p><a href="https://x.cn/?a=1&amp;b=2">链接</a>&lt;b&gt;粗体&lt;/b&gt; &amp;amp;'
    assert pipe.normalize(text) == "你好 世界 链接粗体 &"
    assert pipe.normalize("<!-- 注释 -->正文<script>") == "正文"
    assert pipe.normalize("&#x200b;零宽&nbsp;空格&#9;制表") == "零宽 空格 制表"


def test_url_removal(pipe):
    text = "看这个https://b23.tv/AbC123?x=1好看 还有 www.baidu.com/s?wd=美食 和 HTTP://EXAMPLE.COM/页"
    out = pipe.normalize(text)
    assert out == "看这个 好看 还有 美食 和 页"
    assert "http" not in out and "www" not in out and "b23" not in out


def test_mentions_hashtags_and_bracket_emoticons(pipe):
    out = pipe.normalize("@张三 @李四@Wang_5：快看 #美食# #旅行 好吃[笑哭][doge]太赞了")
    assert out == ":快看 美食 旅行 好吃 太赞了"
    assert pipe.words("@张三 @李四@Wang_5：红烧肉做法") == ["红烧肉", "做法"]
    assert pipe.words("#美食#分享") == ["美食", "分享"]
    assert "doge" not in pipe.words("哈哈[doge]")
    # longer bracketed text is not an emoticon
    assert "[第一集:开始了]" in pipe.normalize("[第一集:开始了]")


def test_mixed_english_is_kept(pipe):
    assert pipe.normalize("iPhone 15 Pro真香！") == "iphone 15 pro真香!"
    words = pipe.words("iPhone 15 Pro真香！")
    assert words == ["iphone", "15", "pro", "真香"]
    assert pipe.words("学习C++和Python编程") == ["学习", "c++", "python", "编程"]


def test_traditional_chinese_and_other_scripts_survive(pipe):
    assert pipe.normalize("這是繁體中文") == "這是繁體中文"
    assert "繁體" in pipe.words("這是繁體中文")
    assert pipe.normalize("Привет мир") == "привет мир"


# --------------------------------------------------------------------------------------
# PII
# --------------------------------------------------------------------------------------
PII_CASES = [
    # (text, secrets that must disappear, words that must stay)
    ("我的电话是13812345678，邮箱zhang.san@example.com", ["13812345678", "zhang", "example", "@"], ["电话", "邮箱"]),
    ("身份证号110105199003071234请保密", ["110105199003071234", "1101"], ["身份证号", "保密"]),
    ("身份证11010519900307123X", ["11010519900307123x"], ["身份证"]),
    ("银行卡 6222 0212 3456 7890 123 转账", ["6222", "0212", "3456", "7890", "123"], ["银行卡", "转账"]),
    ("银行卡号6222021234567890123", ["6222021234567890123"], ["银行卡"]),
    ("联系 +86 138-0013-8000 预约", ["138", "0013", "8000", "86"], ["联系", "预约"]),
    ("手机 139 1234 5678 或 8615912345678", ["139", "1234", "5678", "8615912345678"], ["手机"]),
    ("座机 010-12345678 或 (0755)1234567 咨询", ["010", "12345678", "0755", "1234567"], ["座机", "咨询"]),
    ("加我微信 wx_abc123 详聊", ["wx_abc123", "abc123"], ["详聊"]),
    ("有事QQ 12345678 联系", ["12345678"], ["有事", "联系"]),
    ("vx：Mei_Shi_2024 私聊", ["mei_shi_2024"], ["私聊"]),
]


@pytest.mark.parametrize("text,secrets,kept", PII_CASES)
def test_pii_is_scrubbed(pipe, text, secrets, kept):
    out = pipe.normalize(text)
    words = pipe.words(text)
    for secret in secrets:
        assert secret not in out, (secret, out)
    for word in kept:
        assert word in words, (word, words)


@pytest.mark.parametrize("text,secrets,kept", PII_CASES)
def test_scrub_pii_off_keeps_pii(raw_pipe, text, secrets, kept):
    out = raw_pipe.normalize(text)
    for secret in secrets:
        assert secret in out, (secret, out)


def test_pii_keeps_other_numbers(pipe):
    # whole digit runs only: order numbers, prices and years are not PII
    assert pipe.normalize("订单号 12345678901234567890123 价格 1999 元 2024年") == \
        "订单号 12345678901234567890123 价格 1999 元 2024年"
    assert pipe.normalize("iphone 15 卖 5999") == "iphone 15 卖 5999"


def test_email_is_not_a_mention(raw_pipe):
    assert raw_pipe.normalize("邮箱 zhang.san@example.com @张三") == "邮箱 zhang.san@example.com"


# --------------------------------------------------------------------------------------
# length, idempotence, determinism
# --------------------------------------------------------------------------------------
def test_very_long_text_is_cut_and_fast(pipe):
    text = ("今天的美食视频太好看了😀 @某人 http://x.com/a 13812345678 ＡＢＣ " * 4000)[:100_000]
    start = time.perf_counter()
    out = pipe.normalize(text)
    words = pipe.words(text)
    elapsed = time.perf_counter() - start
    assert 1990 <= len(out) <= 2000
    assert out.startswith("今天的美食视频太好看了 abc 今天")
    assert "13812345678" not in out and "http" not in out
    assert words and len(words) < 2000
    assert elapsed < 3.0
    short = TextPipeline(TextConfig(max_chars=5, remove_stopwords=False))
    assert short.normalize("一二三四五六七八九") == "一二三四五"
    assert short.normalize("abcd efgh") == "abcd"  # no trailing space after the cut


def test_pathological_inputs_do_not_raise_and_stay_fast(pipe):
    inputs = ["<" * 100_000, "&amp;" * 20_000, "@a" * 50_000, "a" * 100_000, "\ud800" * 100_000,
              "<!--" * 25_000, "1 " * 50_000, "<" * 50_000 + "b" + ">" * 50_000, "😀" * 100_000]
    start = time.perf_counter()
    for text in inputs:
        out = pipe.normalize(text)
        assert len(out) <= 2000
        assert pipe.normalize(out) == out
    assert time.perf_counter() - start < 5.0


TRICKY = [
    "ＡＢＣ１２３", "😀😂👍🏽🇨🇳", "&amp;lt;b&amp;gt;粗&amp;lt;/b&amp;gt;", "<<b>b>嵌套<</b>/b>", "＜b＞全角标签＜/b＞",
    "&#65313;&#xff22;", "@张三@李四@wang@zhao 你好", "x@@y", "a@b.c", "#美食##旅行#", "[[笑哭]]", "[ ]",
    "138 [doge] 0013 [doge] 8000", "138😀0013😀8000", "1381234567890123", "13812345678901234567890",
    "+86 138-0013-8000", "加我微信 wx_abc123 def_456789", "微信微信 abc12345", "QQ号：12345678",
    "http://a.cn/ www.b.cn zhang@x.com", "\ud800\udfff\u200b\u200e\u202e\x00", "今天\n\n\t天气\r\n好",
    "İstanbul ß ﷺ ㍿ ① ™ Ⅻ", "這是繁體中文，還有𠮷字", "مرحبا hello שלום", "   前后空格   ", "&amp;" * 12 + "lt;",
    "<p>" * 10 + "段落" + "</p>" * 10, "email：ZHANG.San@Example.COM。", "a\u0301\u0302 e\u0308", "｀～！＠＃￥％……&＊（）",
]


@pytest.mark.parametrize("config", [TextConfig(), TextConfig(scrub_pii=False, lowercase=False),
                                    TextConfig(max_chars=6)])
def test_normalize_is_idempotent(config):
    pipeline = TextPipeline(config)
    for text in TRICKY:
        once = pipeline.normalize(text)
        assert pipeline.normalize(once) == once, (text, once)
        assert pipeline.clean(pipeline.clean(text)) == pipeline.clean(text) or config.max_chars == 6


def test_normalize_is_idempotent_on_random_junk(pipe):
    fragments = ["<", ">", "b", "&", "amp;", "lt;", "#", "@", "[", "]", "笑", "http://", "www.", "1", "3", "8", "0",
                 " ", "-", "\n", "\u200b", "\u200d", "\ufe0f", "😀", "🏽", "＜", "＞", "１", "Ａ", "x", "微信", "vx",
                 "qq", "ab_12", "86", "+", ".", "com", "(", ")", "中文", "的", "İ", "ﷺ", "\ud800", "\x00"]
    rng = random.Random(1234)
    for _ in range(1500):
        text = "".join(rng.choice(fragments) if rng.random() < 0.9 else chr(rng.randint(0, 0x2FFFF))
                       for _ in range(rng.randint(0, 30)))
        once = pipe.normalize(text)
        assert pipe.normalize(once) == once, (text, once)


def test_two_pipelines_give_identical_output():
    first, second = TextPipeline(), TextPipeline()
    assert [first.clean(t) for t in TRICKY] == [second.clean(t) for t in TRICKY]
    assert [first.words(t) for t in TRICKY] == [second.words(t) for t in TRICKY]


def test_clean_many_matches_clean_and_handles_repeats(pipe):
    texts = ["今天的美食视频", None, "今天的美食视频", "篮球比赛", 42, "", "今天的美食视频"]
    result = pipe.clean_many(texts)
    assert result == [pipe.clean(t) for t in texts]
    assert result[0] == "今天 美食 视频"
    assert result[1] == "" and result[4] == "42"
    assert pipe.clean_many(iter(["精彩的篮球比赛"])) == ["精彩 篮球比赛"]


# --------------------------------------------------------------------------------------
# segmentation, stopwords, user dictionaries
# --------------------------------------------------------------------------------------
def test_stopwords_and_punctuation_are_dropped(pipe, raw_pipe):
    text = "今天的天气是不错了吧，我们去看电影！！……"
    assert pipe.words(text) == ["今天", "天气", "不错", "电影"]
    kept = raw_pipe.words(text)
    assert {"的", "是", "了"} <= set(kept)
    assert not any(set(w) <= set("，,！!…。.") for w in kept)
    assert pipe.clean(text) == "今天 天气 不错 电影"


def test_bundled_stopwords():
    words = load_word_list(BUNDLED_STOPWORDS_PATH)
    assert {"的", "了", "是"} <= words
    assert len(words) > 700
    assert {"的", "了", "是"} <= TextPipeline().stopwords
    assert TextPipeline(TextConfig(remove_stopwords=False)).stopwords == frozenset()


def test_extra_stopword_file(tmp_path):
    extra = tmp_path / "extra.txt"
    extra.write_text("# 自定义停用词\n\n视频\n  ＶＬＯＧ  \n", encoding="utf-8")
    pipeline = TextPipeline(TextConfig(extra_stopwords_path=str(extra)))
    assert pipeline.words("今天的美食视频 Vlog") == ["今天", "美食"]
    assert TextPipeline().words("今天的美食视频 Vlog") == ["今天", "美食", "视频", "vlog"]


def test_replacement_stopword_file(tmp_path):
    own = tmp_path / "own.txt"
    own.write_text("美食\n", encoding="utf-8")
    pipeline = TextPipeline(TextConfig(stopwords_path=str(own)))
    assert pipeline.words("今天的美食视频") == ["今天", "的", "视频"]


def test_user_dict_changes_segmentation_without_leaking(tmp_path):
    user_dict = tmp_path / "user.txt"
    user_dict.write_text("酷喵宝宝机 10 nz\n噗噗星人\nＡＢＣ爱好者\n", encoding="utf-8")
    plain = TextPipeline()
    text = "我买了酷喵宝宝机送给噗噗星人"
    before = plain.words(text)
    assert "酷喵宝宝机" not in before and "噗噗星人" not in before
    custom = TextPipeline(TextConfig(user_dict_path=str(user_dict)))
    assert custom.words(text) == ["买", "酷喵宝宝机", "送给", "噗噗星人"]
    assert custom.words("ABC爱好者聚会") == ["abc爱好者", "聚会"]  # dictionary words are folded too
    # neither an existing nor a new pipeline sees the user words
    assert plain.words(text) == before
    assert TextPipeline().words(text) == before


def test_missing_resource_files_fail_clearly(tmp_path):
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        TextPipeline(TextConfig(user_dict_path=missing))
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        TextPipeline(TextConfig(extra_stopwords_path=missing))


def test_load_word_list(tmp_path):
    path = tmp_path / "words.txt"
    path.write_bytes("\ufeff# comment\n 美食 \n\n旅行\r\n#另一个注释\n美食\n".encode("utf-8"))
    assert load_word_list(path) == frozenset({"美食", "旅行"})
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_word_list(tmp_path / "missing.txt")
    bad = tmp_path / "gbk.txt"
    bad.write_bytes("美食".encode("gbk"))
    with pytest.raises(ValueError, match="gbk.txt.*UTF-8"):
        load_word_list(bad)
    with pytest.raises(ValueError, match="directory"):
        load_word_list(tmp_path)


# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------
def test_config_round_trip(tmp_path):
    config = TextConfig(scrub_pii=False, lowercase=False, remove_stopwords=True,
                        stopwords_path=None, extra_stopwords_path=str(tmp_path / "x.txt"),
                        user_dict_path=tmp_path / "u.txt", max_chars=128)
    data = config.to_dict()
    assert data["user_dict_path"] == str(tmp_path / "u.txt")  # PathLike stored as str
    assert json.loads(json.dumps(data)) == data
    assert TextConfig.from_dict(data) == config
    assert TextConfig.from_dict({}) == TextConfig()
    assert TextConfig().to_dict() == {
        "scrub_pii": True, "lowercase": True, "remove_stopwords": True, "stopwords_path": None,
        "extra_stopwords_path": None, "user_dict_path": None, "max_chars": 2000,
        "keep_meaning_words": True,
    }


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="'scrub_pi'"):
        TextConfig.from_dict({"scrub_pi": False})
    with pytest.raises(ValueError, match="max_chars"):
        TextConfig(max_chars=0)
    with pytest.raises(TypeError, match="scrub_pii"):
        TextConfig.from_dict({"scrub_pii": "false"})
    with pytest.raises(TypeError, match="max_chars"):
        TextConfig(max_chars=2.5)
    with pytest.raises(TypeError):
        TextPipeline({"scrub_pii": False})


def test_pipeline_pickles(tmp_path):
    user_dict = tmp_path / "user.txt"
    user_dict.write_text("噗噗星人\n", encoding="utf-8")
    pipeline = TextPipeline(TextConfig(user_dict_path=str(user_dict), max_chars=50))
    copy = pickle.loads(pickle.dumps(pipeline))
    assert copy.config == pipeline.config
    assert copy.words("我是噗噗星人") == pipeline.words("我是噗噗星人") == ["噗噗星人"]


def test_import_is_light_and_quiet():
    """text.py must not pull in TensorFlow, and jieba must not log to stderr."""
    code = ("import sys, bert_rec.text as t; p = t.TextPipeline(); print(p.clean('北京大学生前来应聘')); "
            "assert 'tensorflow' not in sys.modules and 'bert4keras' not in sys.modules")
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "北京 大学生 前来 应聘"
    assert proc.stderr == ""


# ------------------------------------------------------------------ meaning survives cleaning
@pytest.mark.parametrize("text, kept", [
    ("我不喜欢这个", ["不", "喜欢"]),
    ("这个视频不好看", ["视频", "不", "好看"]),
    ("不推荐", ["不", "推荐"]),
    ("太无聊了", ["太", "无聊"]),
    ("画质好差,喜剧不是这么拍的", ["画质", "好差", "喜剧", "不是", "拍"]),
    ("并不是很喜欢", ["不是", "很", "喜欢"]),
    ("虽然画质不错但是剧情很差", ["虽然", "画质", "不错", "但是", "剧情", "很差"]),
    ("很一般", ["很", "一般"]),
    ("别再推了", ["别", "推"]),
])
def test_negations_and_degree_words_survive(text, kept):
    assert TextPipeline().words(text) == kept


def test_meaning_flips_are_not_cleaned_away():
    """With the strict list a complaint and praise clean to the same words; not any more."""
    pipeline, strict = TextPipeline(), TextPipeline(TextConfig(keep_meaning_words=False))
    for praise, complaint in [("这个视频好看", "这个视频不好看"), ("喜欢这个", "不喜欢这个"),
                              ("推荐", "不推荐"), ("很好看", "不是很好看")]:
        assert strict.clean(praise) == strict.clean(complaint)
        assert pipeline.clean(praise) != pipeline.clean(complaint)


def test_user_stopword_list_is_used_as_given(tmp_path):
    own = tmp_path / "stop.txt"
    own.write_text("不\n视频\n", encoding="utf-8")
    pipeline = TextPipeline(TextConfig(stopwords_path=str(own)))
    assert pipeline.words("这个视频不好看") == ["这个", "好看"]
    assert TextPipeline().stopwords == TextPipeline(TextConfig(
        keep_meaning_words=False)).stopwords - MEANING_WORDS
