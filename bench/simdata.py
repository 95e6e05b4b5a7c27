"""SIMULATED benchmark data sets of any size, built with the sample generator.

Items: the real KuaiRec captions shipped in data/sample and data/heldout (3,500 items, CC BY-SA
4.0), recombined when more are asked for: variant ``j`` of an item keeps its category and tags
and appends a clause of another item's title, so every item text is distinct. Users and their
behaviours: ``scripts/make_sample_data.py``'s ``simulate_user`` (interest mixtures, sessions,
clicks, ratings, comments) on that catalogue. Everything here is simulated, derived from CC BY-SA
4.0 captions, and written under ``common.SCRATCH`` (never committed); each set is built once.
"""

import datetime as dt
import importlib.util
import json
import os
import sys
from collections import Counter

import numpy as np

from common import ROOT, SCRATCH

_GENERATOR = os.path.join(ROOT, "scripts", "make_sample_data.py")


def _generator():
    spec = importlib.util.spec_from_file_location("make_sample_data", _GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _real_items():
    """The shipped captions, as generator item records (first-level category ids by name)."""
    items, seen = [], set()
    for name in ("sample", "heldout"):
        with open(os.path.join(ROOT, "data", name, "items.jsonl"), encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                if record["item_id"] not in seen:
                    seen.add(record["item_id"])
                    items.append(record)
    names = sorted({r["category"].split(">")[0] for r in items})
    for r in items:
        levels = r["category"].split(">")
        r.update(cat1=levels[0], cat1_id=names.index(levels[0]),
                 cat2=levels[1] if len(levels) > 1 else "")
    return items


def build_items(n, rnd, gen):
    """n generator item records; beyond the 3,500 real ones, recombined variants."""
    real = _real_items()
    items = []
    for j in range(-(-n // len(real))):
        for r in real:
            if len(items) == n:
                break
            record = dict(r, tags=list(r["tags"]))
            if j:
                other = real[int(rnd.u() * len(real))]
                record["item_id"] = f"{r['item_id']}~{j}"
                record["title"] = f"{r['title']} {gen._snippet(other['title'])}"  # noqa: SLF001
            items.append(record)
    ranking = rnd.sample(range(len(items)), len(items))
    for rank, idx in enumerate(ranking):
        items[idx]["pop"] = 1.0 / (rank + 1) ** gen.POP_EXPONENT
    return items


def _fast_make_user(gen, world):
    """The generator's ``make_user`` with its per-item Python loops vectorised (same draws, same
    result): 10,000 users over 100,000 items would otherwise take minutes."""
    cat2 = np.array([it["cat2"] for it in world.items], dtype=object)
    by_tag = {}
    for i, it in enumerate(world.items):
        for t in it["tags"]:
            by_tag.setdefault(t, []).append(i)

    def make_user(rnd, world_, model):
        w0 = gen.draw_profile(rnd, world_)
        w1 = w0
        if model == "drift":
            raise ValueError("the benchmark data use the mixture model")
        cats = sorted({int(c) for c in np.flatnonzero(w0 + w1)})
        pref_cat2, pref_tags = set(), set()
        for c in cats:
            n2 = 2 if len(world_.cat2_counts[c]) >= 4 else 1
            pref_cat2.update(gen._weighted_names(rnd, world_.cat2_counts[c], n2))  # noqa: SLF001
            pref_tags.update(gen._weighted_names(  # noqa: SLF001
                rnd, world_.tag_counts[c], rnd.randint(1, 3), exclude=world_.generic_tags))
        sec = np.isin(cat2, list(pref_cat2)).astype(float)
        tag = np.zeros(len(world_.items))
        for t in pref_tags:
            tag[by_tag.get(t, [])] = 1.0
        return {"w0": w0, "w1": w1, "sec": sec, "tag": tag}

    return make_user


def dataset(n_items, n_users, seed=0):
    """Paths (items.jsonl, behaviors.jsonl) of a simulated set, built on first use."""
    out = os.path.join(SCRATCH, f"sim-{n_items}-{n_users}-{seed}")
    items_path = os.path.join(out, "items.jsonl")
    behaviors_path = os.path.join(out, "behaviors.jsonl")
    if os.path.exists(behaviors_path):
        return items_path, behaviors_path
    print(f"simulating {n_items:,} items and {n_users:,} users into {out} ...", file=sys.stderr)
    gen = _generator()
    rnd = gen.Rand(seed)
    items = build_items(n_items, rnd, gen)
    world = gen.World(items)
    gen.make_user = _fast_make_user(gen, world)
    stats = Counter()
    start = dt.datetime(2024, 3, 1)
    os.makedirs(out, exist_ok=True)
    with open(items_path + ".part", "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps({k: it[k] for k in ("item_id", "title", "text", "category",
                                                   "tags")}, ensure_ascii=False) + "\n")
    with open(behaviors_path + ".part", "w", encoding="utf-8") as f:
        for n in range(1, n_users + 1):
            for record in gen.simulate_user(rnd, world, "mixture", f"u{n:05d}", start, stats):
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(items_path + ".part", items_path)
    os.replace(behaviors_path + ".part", behaviors_path)
    return items_path, behaviors_path
