#!/usr/bin/env python3
"""Build the sample data sets of bert_rec: REAL item texts, SIMULATED users.

The item catalogue comes from real Kuaishou short-video captions (the item
side of KuaiRec 2.0: cover text, caption, topic tags and a three-level
category tree).  The users and everything they do -- views, clicks, ratings
and comments -- are SIMULATED by this script: no real person's behaviour is
in the output.  A few comments deliberately carry FAKE personal data (random
phone numbers, user<N>@example.com addresses, made-up WeChat ids) so that the
project's text cleaning has something to scrub.

Data credit and licence: the captions are from KuaiRec (Gao et al., CIKM 2022,
github.com/chongminggao/KuaiRec), CC BY-SA 4.0.  Everything this script writes
is derived from them and is therefore also CC BY-SA 4.0
(https://creativecommons.org/licenses/by-sa/4.0/).

The simulation, in short (see ``simulate_user``):

* a catalogue of ``--n-items`` items is sampled from the chosen slice of
  first-level categories, stratified so that every category present keeps
  some items;
* every item gets a mild Zipf-like popularity prior;
* every user has an interest profile: a Dirichlet-weighted mixture of 2-3
  first-level categories plus a few preferred second-level categories and
  tags.  ``mixture``: every fresh view draws a category from that fixed
  mixture, then an item of it with weight popularity x (second-level/tag)
  affinity.  ``drift``: the mixture moves linearly from an initial to a final
  profile over the user's sequence, so recent behaviour matters more;
* views come in sessions (minutes apart; days between sessions, ~60 days in
  all); clicks follow views with a probability growing with affinity, ratings
  (1-5) and comments (Chinese templates, sentiment following affinity) follow
  clicks;
* a user may re-view an earlier item, but never as the final view: the last
  distinct item of every user is a fresh draw of the interest process, like
  every other fresh view, and serves as the evaluation target;
* negative feedback (``draw_dislikes``): every user has 1-2 first-level
  categories they dislike, outside their interests; now and then the feed
  pushes one of those items (``DISLIKE_VIEW_P`` of the fresh views before the
  last). The user watches it, rarely clicks, and when they do they rate it low
  (1-2) and/or complain in real negation phrasing (不好看, 没意思, 不推荐,
  太无聊了 ...), often with a comment and no rating at all. These (user, item)
  pairs are written to ``dislikes.jsonl``: the simulator's ground truth, for
  evaluation only (bert_rec never reads it to recommend).

Output is deterministic for a given ``--seed`` and parameters: all randomness
goes through one ``numpy.random.Generator`` (PCG64), and only its
``random()`` stream is used so that the files do not depend on how a numpy
version implements ``choice``/``dirichlet``/``normal``.

Usage (the committed sets, run from the repository root)::

    python scripts/make_sample_data.py --seed 1 --n-items 2000 --n-users 300 \
        --user-model mixture --categories-slice all --out data/sample
    python scripts/make_sample_data.py --seed 2 --n-items 1500 --n-users 200 \
        --user-model drift --categories-slice odd --out data/heldout

Only the standard library and numpy are needed; bert_rec is not imported.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = (
    REPO_ROOT / ".." / "shared" / "data" / "kuairec-captions"
    / "kuairec_caption_category.csv"
)
DEFAULT_OUT = REPO_ROOT / "data" / "sample"

CREDIT = "KuaiRec (Gao et al., CIKM 2022), CC BY-SA 4.0"
LICENCE_URL = "https://creativecommons.org/licenses/by-sa/4.0/"

EXPECTED_HEADER = [
    "video_id", "manual_cover_text", "caption", "topic_tag",
    "first_level_category_id", "first_level_category_name",
    "second_level_category_id", "second_level_category_name",
    "third_level_category_id", "third_level_category_name",
]
UNKNOWN = "UNKNOWN"
BEHAVIORS = ("view", "click", "rate", "comment")

# --- simulation constants -------------------------------------------------
POP_EXPONENT = 0.75        # popularity ~ 1 / rank**POP_EXPONENT (mild Zipf)
MIN_PER_CATEGORY = 5       # stratification floor per first-level category
EXPLORE_P = 0.10           # fresh view drawn from global popularity instead
REVIEW_P = 0.06            # view is a re-view of an earlier item
MIN_VIEWS, MAX_VIEWS = 8, 40
MAX_EVENTS = 60            # per user, all behaviour types together
RATE_P = 0.35              # P(rate | click)
COMMENT_P = 0.15           # P(comment | click)
PII_P = 0.03               # P(fake personal data | comment)
SPAN_DAYS = 60
DISLIKE_VIEW_P = 0.15      # fresh view pushed from a disliked category
DISLIKE_CLICK_P = 0.6      # P(click | disliked item viewed)
DISLIKE_RATE_P = 0.45      # P(rate 1-2 | disliked item clicked)
DISLIKE_COMMENT_P = 0.6    # P(complaint | disliked item clicked)


# ---------------------------------------------------------------------------
# randomness: everything is built on Generator.random() only
# ---------------------------------------------------------------------------
class Rand:
    """Small sampling helpers on top of ``Generator.random()``."""

    def __init__(self, seed: int):
        self.g = np.random.default_rng(seed)

    def u(self) -> float:
        return float(self.g.random())

    def randint(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi] (both inclusive)."""
        return lo + min(int(self.u() * (hi - lo + 1)), hi - lo)

    def weighted(self, weights) -> int:
        """Index drawn with probability proportional to ``weights``."""
        cdf = np.cumsum(np.asarray(weights, dtype=np.float64))
        total = cdf[-1]
        if not total > 0:
            raise ValueError("weights sum to zero")
        idx = int(np.searchsorted(cdf, self.u() * total, side="right"))
        return min(idx, len(cdf) - 1)

    def pick(self, seq):
        return seq[self.randint(0, len(seq) - 1)]

    def sample(self, seq, k: int) -> list:
        """k distinct elements of seq, uniformly (partial Fisher-Yates)."""
        pool = list(seq)
        k = min(k, len(pool))
        for i in range(k):
            j = self.randint(i, len(pool) - 1)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]

    def weighted_sample(self, weights, k: int) -> list[int]:
        """k distinct indices, successive draws proportional to weights."""
        w = np.asarray(weights, dtype=np.float64).copy()
        out = []
        for _ in range(min(k, int((w > 0).sum()))):
            i = self.weighted(w)
            out.append(i)
            w[i] = 0.0
        return out

    def dirichlet1(self, k: int) -> np.ndarray:
        """Dirichlet(1, ..., 1): normalised exponentials."""
        e = np.array([-math.log(1.0 - self.u()) for _ in range(k)])
        return e / e.sum()

    def noise(self, sd: float) -> float:
        """Approximately normal noise (Irwin-Hall of 4 uniforms)."""
        return (sum(self.u() for _ in range(4)) - 2.0) * sd * math.sqrt(3.0)


# ---------------------------------------------------------------------------
# source
# ---------------------------------------------------------------------------
def _clean(value: str) -> str:
    value = (value or "").strip()
    return "" if value == UNKNOWN else value


def parse_tags(raw: str) -> list[str]:
    """``[]`` / ``[美食,家常菜]`` -> list of tags (order kept, duplicates dropped)."""
    raw = (raw or "").strip()
    if raw.startswith("[") and raw.endswith("]"):
        raw = raw[1:-1]
    out: list[str] = []
    for tag in raw.split(","):
        tag = tag.strip()
        if tag and tag != UNKNOWN and tag not in out:
            out.append(tag)
    return out


_CLAUSE_SPLIT = re.compile(r"[，。！？\s]+")


def make_title(cover: str, caption: str) -> str:
    if cover:
        return cover
    for clause in _CLAUSE_SPLIT.split(caption):
        if clause:
            return clause[:20]
    return caption[:20]      # caption made of punctuation only ("？？？")


def load_source(path: Path) -> tuple[list[dict], Counter]:
    """Read the KuaiRec caption CSV; return usable rows and skip counts."""
    skipped: Counter = Counter()
    rows: list[dict] = []
    seen_ids: set[int] = set()
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        if header != EXPECTED_HEADER:
            raise SystemExit(f"unexpected header in {path}: {header}")
        for rec in reader:
            if len(rec) != len(EXPECTED_HEADER):
                skipped["malformed"] += 1
                continue
            try:
                vid = int(rec[0])
                cat1_id = int(rec[4])
            except ValueError:
                skipped["malformed"] += 1
                continue
            if vid in seen_ids:
                skipped["duplicate_id"] += 1
                continue
            seen_ids.add(vid)
            cover, caption = _clean(rec[1]), _clean(rec[2])
            cat1, cat2, cat3 = _clean(rec[5]), _clean(rec[7]), _clean(rec[9])
            if not cover and not caption:
                skipped["empty_text"] += 1
                continue
            if not cat1 or cat1_id < 0:
                skipped["unknown_category"] += 1
                continue
            rows.append({
                "vid": vid,
                "item_id": f"v{vid}",
                "title": make_title(cover, caption),
                "text": caption,
                "cat1_id": cat1_id,
                "cat1": cat1,
                "cat2": cat2,
                "category": ">".join(c for c in (cat1, cat2, cat3) if c),
                "tags": parse_tags(rec[3]),
            })
    rows.sort(key=lambda r: r["vid"])
    return rows, skipped


def in_slice(cat1_id: int, which: str) -> bool:
    if which == "all":
        return True
    return (cat1_id % 2 == 0) == (which == "even")


# ---------------------------------------------------------------------------
# catalogue
# ---------------------------------------------------------------------------
def build_catalogue(rows: list[dict], which: str, n_items: int, rnd: Rand):
    pool = [r for r in rows if in_slice(r["cat1_id"], which)]
    by_cat: dict[int, list[dict]] = defaultdict(list)
    for r in pool:
        by_cat[r["cat1_id"]].append(r)
    cat_ids = sorted(by_cat)
    if n_items < len(cat_ids):
        raise SystemExit(
            f"--n-items {n_items} is below the {len(cat_ids)} first-level "
            "categories of the slice; every category must keep an item")
    if n_items >= len(pool):
        chosen = list(pool)
    else:
        floor = max(1, min(MIN_PER_CATEGORY, n_items // len(cat_ids)))
        chosen, rest = [], []
        for cid in cat_ids:
            members = by_cat[cid]
            order = rnd.sample(range(len(members)), len(members))
            chosen.extend(members[i] for i in order[:floor])
            rest.extend(members[i] for i in order[floor:])
        rest.sort(key=lambda r: r["vid"])
        chosen.extend(rnd.sample(rest, n_items - len(chosen)))
    chosen.sort(key=lambda r: r["vid"])
    items = [dict(r) for r in chosen]
    # mild Zipf-like popularity prior over a random ranking of the catalogue
    ranking = rnd.sample(range(len(items)), len(items))
    for rank, idx in enumerate(ranking):
        items[idx]["pop"] = 1.0 / (rank + 1) ** POP_EXPONENT
    return items


# ---------------------------------------------------------------------------
# comments
# ---------------------------------------------------------------------------
POSITIVE = [
    "这个{cat}视频太好看了",
    "不错不错，{sub}拍得真好",
    "没毛病，{tag}yyds",
    "不得不说，{cat}这期太好看了",
    "一点都不无聊，看了好几遍",
    "{tag}yyds，求更新",
    "太喜欢{sub}了，已关注",
    "「{title}」这个真的绝了👍",
    "每天都要刷{cat}，这个最好看",
    "{tag}爱了爱了，再来一个",
    "博主的{sub}内容质量好高，支持一下",
    "哈哈哈{title}，笑死我了",
    "看了三遍还想看，{cat}区宝藏",
    "收藏了，{sub}就该这么拍",
    "{tag}冲冲冲！",
    "终于刷到好看的{cat}了😍",
    "{title}，说得太对了",
    "这期{sub}太有用了，学到了",
    "必须点赞，{tag}永远的神",
]
NEUTRAL = [
    "还行吧，{cat}类的看多了",
    "{title}？有点意思",
    "路过，{sub}还可以",
    "有没有{tag}的后续",
    "这个{cat}视频中规中矩",
    "感觉{sub}都差不多，凑合看",
    "{tag}是什么梗",
    "第一次刷到{cat}，先看看",
    "求问{title}是在哪拍的",
]
NEGATIVE = [
    "一般般，不太喜欢{cat}",
    "{sub}看腻了，划走",
    "怎么又给我推{cat}",
    "{title}？没看懂",
    "标题党吧，{tag}根本不是这样",
    "这种{sub}视频有啥好看的",
    "不感兴趣，别再推{tag}了",
    "太无聊了，{cat}越来越水",
    "画质好差，{sub}不是这么拍的",
]
# complaints about an item of a category the user dislikes: real negation phrasing
COMPLAINTS = [
    "不好看，{cat}真的没意思",
    "不推荐，{title}太无聊了",
    "太无聊了，不想再看{cat}了",
    "别再给我推{cat}了，不感兴趣",
    "没意思，{sub}看不下去",
    "一点都不好看，浪费时间",
    "不喜欢{cat}，划走了",
    "这种{sub}真的不行，不推荐",
    "{tag}不是我的菜，没意思",
    "不好笑，{title}很无聊",
    "没看懂有什么好看的，不推荐",
    "太假了，{sub}一点都不真实",
]
SUFFIXES = {
    "pos": ["", "", "", "！", "～", "😂", "哈哈", "👍", "。", "🔥", "！！", "😍"],
    "neu": ["", "", "", "。", "～", "？", "🤔", "哈哈"],
    "neg": ["", "", "", "。", "…", "😑", "🙄", "！"],
}
SUFFIXES["complaint"] = SUFFIXES["neg"]


def _snippet(title: str) -> str:
    title = re.sub(r"[#@]\S*", "", title).strip()
    clause = next((c for c in _CLAUSE_SPLIT.split(title) if c), "")
    return clause[:10] or "这个视频"


def fake_pii(rnd: Rand) -> str:
    """Synthetic personal data: random digits, example.com, made-up ids."""
    phone = rnd.pick(["138", "139", "137", "158", "186"]) + "".join(
        str(rnd.randint(0, 9)) for _ in range(8))
    email = f"user{rnd.randint(1, 9999)}@example.com"
    wechat = "".join(rnd.pick("abcdefghijkmnpqrstuvwxyz") for _ in range(4)) + \
        str(rnd.randint(100, 9999))
    forms = [
        f"加我微信 {wechat}",
        f"有需要的打我电话{phone}",
        f"联系邮箱{email}",
        f"私聊我 {phone}",
        f"加我微信{wechat}，或者发邮件到 {email}",
        f"同款找我，电话 {phone}",
    ]
    return rnd.pick(forms)


def make_comment(rnd: Rand, item: dict, sentiment: str, with_pii: bool,
                 generic_tags=frozenset()) -> str:
    pool = {"pos": POSITIVE, "neu": NEUTRAL, "neg": NEGATIVE,
            "complaint": COMPLAINTS}[sentiment]
    tags = [t for t in item["tags"] if t not in generic_tags] or item["tags"]
    fields = {
        "cat": item["cat1"],
        "sub": item["cat2"] or item["cat1"],
        "tag": rnd.pick(tags) if tags else (item["cat2"] or item["cat1"]),
        "title": _snippet(item["title"]),
    }
    text = rnd.pick(pool).format(**fields) + rnd.pick(SUFFIXES[sentiment])
    if with_pii:
        text = f"{text} {fake_pii(rnd)}"
    return text


# ---------------------------------------------------------------------------
# users
# ---------------------------------------------------------------------------
class World:
    """Catalogue indexes shared by all simulated users."""

    def __init__(self, items: list[dict]):
        self.items = items
        self.pop = np.array([it["pop"] for it in items])
        self.cat_ids = sorted({it["cat1_id"] for it in items})
        self.cat_pos = {c: k for k, c in enumerate(self.cat_ids)}
        self.item_cat = np.array([self.cat_pos[it["cat1_id"]] for it in items])
        self.members = [np.flatnonzero(self.item_cat == k)
                        for k in range(len(self.cat_ids))]
        self.cat_size = np.array([len(m) for m in self.members], float)
        # second-level names and "specific" tags of every first-level category
        self.cat2_counts: list[Counter] = [Counter() for _ in self.cat_ids]
        self.tag_counts: list[Counter] = [Counter() for _ in self.cat_ids]
        tag_cats: dict[str, set] = defaultdict(set)
        for it, k in zip(items, self.item_cat):
            if it["cat2"]:
                self.cat2_counts[k][it["cat2"]] += 1
            for t in it["tags"]:
                self.tag_counts[k][t] += 1
                tag_cats[t].add(int(k))
        # tags spread over many categories (热门, 作品推广 ...) say nothing
        self.generic_tags = {t for t, cs in tag_cats.items() if len(cs) >= 4}


def _weighted_names(rnd: Rand, counts: Counter, k: int, exclude=()) -> list[str]:
    names = sorted(n for n in counts if n not in exclude)
    if not names:
        return []
    idx = rnd.weighted_sample([counts[n] for n in names], k)
    return [names[i] for i in idx]


def draw_profile(rnd: Rand, world: World, avoid: list[int] = ()) -> np.ndarray:
    """Weights over first-level categories: 2-3 of them, Dirichlet(1)."""
    n_cat = len(world.cat_ids)
    k = min(n_cat, 3 if rnd.u() < 0.4 else 2)
    prior = np.sqrt(world.cat_size)
    for a in avoid:
        prior[a] = 0.0
    if (prior > 0).sum() < k:
        prior = np.sqrt(world.cat_size)
    chosen = rnd.weighted_sample(prior, k)
    w = np.zeros(n_cat)
    w[chosen] = rnd.dirichlet1(len(chosen))
    return w


def make_user(rnd: Rand, world: World, model: str) -> dict:
    w0 = draw_profile(rnd, world)
    if model == "drift":
        cats0 = [int(c) for c in np.flatnonzero(w0)]
        keep = [rnd.pick(cats0)] if rnd.u() < 0.5 else []
        fresh = draw_profile(rnd, world, avoid=cats0)
        w1 = fresh.copy()
        for c in keep:   # one initial interest may survive into the final mix
            w1[c] = float(w0[c])
        w1 /= w1.sum()
    else:
        w1 = w0
    cats = sorted({int(c) for c in np.flatnonzero(w0 + w1)})
    pref_cat2: set[str] = set()
    pref_tags: set[str] = set()
    for c in cats:
        n2 = 2 if len(world.cat2_counts[c]) >= 4 else 1
        pref_cat2.update(_weighted_names(rnd, world.cat2_counts[c], n2))
        pref_tags.update(_weighted_names(
            rnd, world.tag_counts[c], rnd.randint(1, 3),
            exclude=world.generic_tags))
    # per item: does it match a preferred second-level category / tag?
    sec = np.array([it["cat2"] in pref_cat2 for it in world.items], float)
    tag = np.array([any(t in pref_tags for t in it["tags"])
                    for it in world.items], float)
    return {"w0": w0, "w1": w1, "sec": sec, "tag": tag}


def draw_dislikes(rnd: Rand, world: World, user: dict) -> list[int]:
    """1-2 first-level categories (positions) the user dislikes, outside their interests."""
    interests = [int(c) for c in np.flatnonzero(user["w0"] + user["w1"])]
    prior = np.sqrt(world.cat_size)
    prior[interests] = 0.0
    if not prior.any():
        return []
    return [int(c) for c in rnd.weighted_sample(prior, 1 if rnd.u() < 0.5 else 2)]


def disliked_view(rnd: Rand, world: World, seen: np.ndarray, dislikes: list[int]):
    """A fresh item of a disliked category, drawn by popularity (None if none left)."""
    members = np.concatenate([world.members[c] for c in dislikes])
    weights = np.zeros(len(world.items))
    weights[members] = world.pop[members] * ~seen[members]
    return rnd.weighted(weights) if weights.any() else None


def complaint_block(rnd: Rand, world: World, i: int, stats: Counter) -> list[tuple]:
    """What a user does with an item they dislike: watch, maybe click, rate low, complain."""
    block = [("view", i, None)]
    if rnd.u() < DISLIKE_CLICK_P:
        block.append(("click", i, None))
        if rnd.u() < DISLIKE_RATE_P:
            block.append(("rate", i, 1 + int(rnd.u() < 0.4)))
        if rnd.u() < DISLIKE_COMMENT_P:
            text = make_comment(rnd, world.items[i], "complaint", False, world.generic_tags)
            block.append(("comment", i, (text, False)))
    stats["disliked_views"] += 1
    return block


def affinity(world: World, user: dict, w: np.ndarray, i: int) -> float:
    cw = w[world.item_cat[i]] / w.max()
    return 0.6 * cw + 0.25 * user["sec"][i] + 0.15 * user["tag"][i]


def fmt_time(t: _dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def simulate_user(rnd: Rand, world: World, model: str, uid: str,
                  start: _dt.datetime, stats: Counter,
                  disliked: set | None = None) -> list[dict]:
    """One user's behaviour records. The (user, item) pairs the user disliked and said so
    (a low rating or a complaint survives in the log) are added to ``disliked``."""
    user = make_user(rnd, world, model)
    dislikes = draw_dislikes(rnd, world, user)
    n_views = MIN_VIEWS + int((MAX_VIEWS - MIN_VIEWS + 1) * rnd.u() ** 1.6)
    n_views = min(n_views, MAX_VIEWS)
    seen = np.zeros(len(world.items), bool)
    history: list[int] = []
    blocks: list[list[tuple]] = []    # per view: [(behavior, item, extra)]
    complaints: list[int] = []        # blocks of disliked items
    for v in range(n_views):
        frac = v / (n_views - 1)
        w = (1.0 - frac) * user["w0"] + frac * user["w1"]
        if 0 < v < n_views - 1 and dislikes and rnd.u() < DISLIKE_VIEW_P:
            i = disliked_view(rnd, world, seen, dislikes)
            if i is not None:
                seen[i] = True
                complaints.append(len(blocks))
                blocks.append(complaint_block(rnd, world, i, stats))
                continue
        if 0 < v < n_views - 1 and rnd.u() < REVIEW_P:
            i = rnd.pick(history)                       # re-view (of a liked item)
            stats["reviews"] += 1
        else:
            open_ = ~seen
            if rnd.u() < EXPLORE_P:
                weights = world.pop * open_
            else:
                cat = rnd.weighted(w)
                m = world.members[cat]
                weights = np.zeros(len(world.items))
                weights[m] = (world.pop[m] * open_[m]
                              * (1.0 + 2.0 * user["sec"][m]
                                 + 2.0 * user["tag"][m]))
                if not weights.any():
                    weights = world.pop * open_
            if not weights.any():        # user has seen the whole catalogue
                weights = world.pop.copy()
            i = rnd.weighted(weights)
            seen[i] = True
            history.append(i)
        aff = affinity(world, user, w, i)
        block = [("view", i, None)]
        if rnd.u() < 0.12 + 0.5 * aff:
            block.append(("click", i, None))
            if rnd.u() < RATE_P:
                top = world.item_cat[i] == int(np.argmax(w))
                r = 2.0 + 1.2 * top + 1.6 * aff + rnd.noise(0.7)
                block.append(("rate", i, int(min(5, max(1, round(r))))))
            if rnd.u() < COMMENT_P:
                s = aff + rnd.noise(0.15)
                sentiment = "pos" if s > 0.55 else "neu" if s > 0.3 else "neg"
                pii = rnd.u() < PII_P
                text = make_comment(rnd, world.items[i], sentiment, pii,
                                    world.generic_tags)
                block.append(("comment", i, (text, pii)))
        blocks.append(block)
    # keep every user within MAX_EVENTS: drop follow-ups of random views
    total = sum(len(b) for b in blocks)
    while total > MAX_EVENTS:
        with_extra = [k for k, b in enumerate(blocks) if len(b) > 1]
        k = rnd.pick(with_extra)
        total -= len(blocks[k]) - 1
        blocks[k] = blocks[k][:1]
    stats["comments_with_fake_pii"] += sum(
        1 for b in blocks for e in b if e[0] == "comment" and e[2][1])
    for k in complaints:
        if any(e[0] in ("rate", "comment") for e in blocks[k]):
            stats["explicit_dislikes"] += 1
            if disliked is not None:
                disliked.add((uid, world.items[blocks[k][0][1]]["item_id"]))
    return timestamp_blocks(rnd, blocks, uid, world, start)


def timestamp_blocks(rnd: Rand, blocks, uid: str, world: World,
                     start: _dt.datetime) -> list[dict]:
    # split views into sessions of 1..10 views
    sessions, v = [], 0
    while v < len(blocks):
        size = min(10, 1 + int(-math.log(1.0 - rnd.u()) * 3.0))
        sessions.append(blocks[v:v + size])
        v += size
    span = (SPAN_DAYS - 15) + 15 * rnd.u()
    day_offsets = sorted([0.0] + [rnd.u() * span for _ in sessions[1:]])
    first_day = start + _dt.timedelta(days=int(rnd.u() * 3))
    out: list[dict] = []
    last = None
    for sess, day in zip(sessions, day_offsets):
        t = first_day + _dt.timedelta(days=int(day),
                                      hours=rnd.randint(7, 22),
                                      minutes=rnd.randint(0, 59),
                                      seconds=rnd.randint(0, 59))
        if last is not None and t <= last + _dt.timedelta(minutes=30):
            t = last + _dt.timedelta(minutes=rnd.randint(30, 180))
        for j, block in enumerate(sess):
            if j:
                t = last + _dt.timedelta(seconds=rnd.randint(30, 600))
            for behavior, i, extra in block:
                if behavior == "click":
                    t = t + _dt.timedelta(seconds=rnd.randint(5, 90))
                elif behavior in ("rate", "comment"):
                    t = t + _dt.timedelta(seconds=rnd.randint(10, 240))
                rec = {"user_id": uid, "item_id": world.items[i]["item_id"],
                       "behavior": behavior, "timestamp": fmt_time(t)}
                if behavior == "rate":
                    rec["rating"] = extra
                elif behavior == "comment":
                    rec["text"] = extra[0]
                out.append(rec)
                last = t
    return out


# ---------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------
def _jsonl(path: Path, records) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


def command_line(args) -> str:
    out = Path(args.out).resolve()
    try:
        out_s = out.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        out_s = "OUT_DIR"
    return ("python scripts/make_sample_data.py"
            f" --seed {args.seed} --n-items {args.n_items}"
            f" --n-users {args.n_users} --user-model {args.user_model}"
            f" --categories-slice {args.categories_slice}"
            f" --start-date {args.start_date} --out {out_s}")


LICENSE_TEXT = f"""\
# Licence of this data set: CC BY-SA 4.0

Derived from KuaiRec (Gao et al., CIKM 2022, github.com/chongminggao/KuaiRec),
CC BY-SA 4.0; simulated behaviours generated by scripts/make_sample_data.py.

- `items.jsonl` contains real Kuaishou video cover texts, captions, topic tags and
  category names taken from KuaiRec 2.0 (selected, reformatted; titles of items
  without a cover text are cut from the caption).
- `behaviors.jsonl` is SIMULATED by `scripts/make_sample_data.py` on top of those
  items; it describes no real user. Phone numbers, e-mail addresses and WeChat ids
  in its comments are synthetic (random digits, example.com, made-up ids).

Both files (and this directory as a whole) are licensed under the Creative Commons
Attribution-ShareAlike 4.0 International licence (CC BY-SA 4.0):
{LICENCE_URL}

You may share and adapt this material for any purpose, provided you give
appropriate credit — "{CREDIT}", plus a note that the behaviours are simulated by
bert_rec's scripts/make_sample_data.py — indicate if changes were made, and
distribute your contributions under the same licence.

Cite the source data as:
Chongming Gao, Shijun Li, Wenqiang Lei, Jiawei Chen, Biao Li, Peng Jiang,
Xiangnan He, Jiaxin Mao, Tat-Seng Chua. "KuaiRec: A Fully-observed Dataset and
Insights for Evaluating Recommender Systems". CIKM 2022.
"""


def readme_text(args, stats: dict) -> str:
    beh = stats["behaviors"]
    model_desc = {
        "mixture": ("**mixture** — every fresh view draws a first-level category "
                    "from the user's fixed interest mixture"),
        "drift": ("**drift** — the user's interest mixture moves linearly from an "
                  "initial to a final profile over the sequence, so the latest "
                  "behaviour is the most informative"),
    }[args.user_model]
    slice_desc = {"all": "all first-level categories",
                  "odd": "first-level categories with an odd category id",
                  "even": "first-level categories with an even category id",
                  }[args.categories_slice]
    cats = "、".join(stats["categories"])
    skipped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in
                        stats["source_rows_skipped"].items()) or "none"
    return f"""\
# bert_rec sample data: SIMULATED users on REAL KuaiRec captions

A small, ready-to-run input for bert_rec. **The items are real** Kuaishou short
videos (cover text, caption, topic tags and category tree from KuaiRec 2.0).
**The users are SIMULATED**: every view, click, rating and comment in
`behaviors.jsonl` was generated by `scripts/make_sample_data.py`; no real
person's behaviour is included. About 3% of the comments contain FAKE
personal data (random 11-digit phone numbers, `user<N>@example.com` addresses,
made-up WeChat ids) so that the text-cleaning step has something to scrub;
all of it is synthetic.

Credit: {CREDIT}. Licence: CC BY-SA 4.0 — see `LICENSE.md`.

## How it was made

```
{command_line(args)}
```

(run from the repository root, with `--source` pointing at
`kuairec_caption_category.csv` of KuaiRec; it defaults to
`../shared/data/kuairec-captions/kuairec_caption_category.csv`). The output is
deterministic for the seed and parameters.

- Catalogue: {stats["n_items"]} items sampled from {slice_desc}
  ({stats["n_categories"]} categories), stratified so that every one keeps items;
  a mild Zipf-like popularity prior over a random ranking.
- Users: each has a Dirichlet-weighted mix of 2–3 first-level categories plus a
  few preferred second-level categories and tags; items within a category are
  drawn by popularity × (second-level/tag) affinity, 10% of views explore by
  popularity alone. User model: {model_desc}.
- Sessions minutes apart within a day, days between sessions, about
  {SPAN_DAYS} days from {args.start_date}; clicks follow views more often for
  high-affinity items, ratings (1–5) are higher for the user's top category,
  comments (~15% of clicks) come from {len(POSITIVE) + len(NEGATIVE) + len(NEUTRAL)}
  templates with sentiment following affinity (positive ones include negations
  such as 不错, 没毛病, 一点都不无聊).
- Negative feedback: each user dislikes 1–2 first-level categories outside their
  interests; {DISLIKE_VIEW_P:.0%} of the fresh views (never the last) are pushed
  from them. The user watches, clicks less often, and then rates 1–2 and/or
  complains in {len(COMPLAINTS)} templates of real negation phrasing (不好看,
  没意思, 不推荐, 太无聊了 ...), often with no rating at all.
  `dislikes.jsonl` lists the (user, item) pairs the user disliked and said so
  (a low rating or a complaint in the log): the simulator's ground truth, used
  only by evaluation (the disliked-items rate), never by bert_rec to recommend.
- A user may re-view an item, but the last distinct item of each user is a
  regular draw of the interest process (a leave-last-out target).

## Schema

`items.jsonl`, one JSON object per line:
`{{"item_id": "v123", "title": str, "text": str, "category": "一级>二级>三级", "tags": [str]}}`
— title is the cover text, or the caption's first clause (≤20 chars) when there
is none; text is the full caption (may be empty when only a cover text exists);
category joins the known level names with `>`.

`dislikes.jsonl` (SIMULATED ground truth, for evaluation):
`{{"user_id": "u0001", "item_id": "v123"}}` per disliked item.

`behaviors.jsonl`, sorted by user then time:
`{{"user_id": "u0001", "item_id": "v123", "behavior": "view|click|rate|comment", "timestamp": "2024-03-05T12:34:56Z"}}`
plus `"rating": 1..5` on `rate` and `"text": str` on `comment`.

## Stats

| | |
|---|---|
| items | {stats["n_items"]} |
| first-level categories | {stats["n_categories"]} |
| users | {stats["n_users"]} |
| behaviours | {sum(beh.values())} |
| view / click / rate / comment | {beh["view"]} / {beh["click"]} / {beh["rate"]} / {beh["comment"]} |
| events per user (min / mean / max) | {stats["events_min"]} / {stats["events_mean"]:.1f} / {stats["events_max"]} |
| re-views | {stats["reviews"]} |
| comments with fake personal data | {stats["comments_with_fake_pii"]} |
| views pushed from disliked categories | {stats["disliked_views"]} |
| disliked items with a low rating or complaint (`dislikes.jsonl`) | {stats["explicit_dislikes"]} |
| ratings of 1–2 | {stats["low_ratings"]} |
| time range | {stats["first_time"]} – {stats["last_time"]} |
| source rows usable / skipped | {stats["source_rows_used"]} / {skipped} |

Categories: {cats}.
"""


def generate(args) -> dict:
    source = Path(args.source)
    if not source.is_file():
        raise FileNotFoundError(f"KuaiRec caption file not found: {source}")
    start = _dt.datetime.strptime(args.start_date, "%Y-%m-%d")
    rows, skipped = load_source(source)
    rnd = Rand(args.seed)
    items = build_catalogue(rows, args.categories_slice, args.n_items, rnd)
    world = World(items)
    sim: Counter = Counter()
    width = max(4, len(str(args.n_users)))
    behaviors: list[dict] = []
    per_user: list[int] = []
    disliked: set = set()
    for n in range(1, args.n_users + 1):
        recs = simulate_user(rnd, world, args.user_model, f"u{n:0{width}d}",
                             start, sim, disliked)
        per_user.append(len(recs))
        behaviors.extend(recs)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _jsonl(out / "items.jsonl", (
        {"item_id": it["item_id"], "title": it["title"], "text": it["text"],
         "category": it["category"], "tags": it["tags"]} for it in items))
    _jsonl(out / "behaviors.jsonl", behaviors)
    _jsonl(out / "dislikes.jsonl", ({"user_id": u, "item_id": i}
                                    for u, i in sorted(disliked)))

    stats = {
        "n_items": len(items),
        "n_categories": len(world.cat_ids),
        "categories": [next(it["cat1"] for it in items if it["cat1_id"] == c)
                       for c in world.cat_ids],
        "n_users": args.n_users,
        "behaviors": {b: sum(1 for r in behaviors if r["behavior"] == b)
                      for b in BEHAVIORS},
        "events_min": min(per_user), "events_max": max(per_user),
        "events_mean": sum(per_user) / len(per_user),
        "reviews": sim["reviews"],
        "comments_with_fake_pii": sim["comments_with_fake_pii"],
        "disliked_views": sim["disliked_views"],
        "explicit_dislikes": len(disliked),
        "low_ratings": sum(1 for r in behaviors if r.get("rating", 5) <= 2),
        "first_time": min(b["timestamp"] for b in behaviors),
        "last_time": max(b["timestamp"] for b in behaviors),
        "source_rows_skipped": dict(sorted(skipped.items())),
        "source_rows_used": len(rows),
    }
    (out / "README.md").write_text(readme_text(args, stats), encoding="utf-8")
    (out / "LICENSE.md").write_text(LICENSE_TEXT, encoding="utf-8")
    return stats


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Write SIMULATED user behaviours on REAL KuaiRec items "
                    f"(data credit: {CREDIT}).")
    p.add_argument("--source", default=str(DEFAULT_SOURCE),
                   help="kuairec_caption_category.csv (default: %(default)s)")
    p.add_argument("--out", default=str(DEFAULT_OUT),
                   help="output directory (default: data/sample)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--n-items", type=int, default=2000)
    p.add_argument("--n-users", type=int, default=300)
    p.add_argument("--user-model", choices=("mixture", "drift"),
                   default="mixture")
    p.add_argument("--categories-slice", choices=("all", "even", "odd"),
                   default="all",
                   help="first-level categories used, by parity of their id")
    p.add_argument("--start-date", default="2024-03-01",
                   help="first day of the simulated period (YYYY-MM-DD)")
    args = p.parse_args(argv)
    if args.n_items < 1 or args.n_users < 1:
        p.error("--n-items and --n-users must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        stats = generate(args)
    except FileNotFoundError as exc:
        print(f"error: {exc} (pass --source)", file=sys.stderr)
        return 2
    beh = stats["behaviors"]
    skipped = stats["source_rows_skipped"]
    print(f"wrote {args.out}")
    print(f"  items: {stats['n_items']} in {stats['n_categories']} "
          "first-level categories")
    print(f"  users: {stats['n_users']} (SIMULATED, {args.user_model} model)")
    print(f"  behaviours: {sum(beh.values())} ("
          + ", ".join(f"{k} {v}" for k, v in beh.items()) + ")")
    print(f"  events per user: {stats['events_min']}-{stats['events_max']}, "
          f"mean {stats['events_mean']:.1f}; re-views {stats['reviews']}")
    print(f"  comments with fake PII: {stats['comments_with_fake_pii']}")
    print(f"  negative feedback: {stats['disliked_views']} views pushed from disliked "
          f"categories, {stats['explicit_dislikes']} disliked with a low rating or "
          f"complaint, {stats['low_ratings']} ratings of 1-2")
    print(f"  source rows: {stats['source_rows_used']} usable, skipped "
          + (", ".join(f"{k} {v}" for k, v in skipped.items()) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
