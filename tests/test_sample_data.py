"""Checks of the committed sample data and of scripts/make_sample_data.py.

The committed-file checks always run.  The regeneration tests need the
KuaiRec caption CSV (``../shared/data/kuairec-captions/...`` next to the
repository), which users' machines do not have: only those tests are skipped
when it is missing.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "make_sample_data.py"
DATA_DIRS = {"sample": REPO / "data" / "sample",
             "heldout": REPO / "data" / "heldout"}
# the exact parameters of the committed sets (also in their README.md)
COMMITTED_ARGS = {
    "sample": ["--seed", "1", "--n-items", "2000", "--n-users", "300",
               "--user-model", "mixture", "--categories-slice", "all"],
    "heldout": ["--seed", "2", "--n-items", "1500", "--n-users", "200",
                "--user-model", "drift", "--categories-slice", "odd"],
}
SMALL_ARGS = ["--n-items", "200", "--n-users", "20"]
BEHAVIORS = {"view", "click", "rate", "comment"}
CREDIT = "KuaiRec (Gao et al., CIKM 2022), CC BY-SA 4.0"
LICENCE_URL = "https://creativecommons.org/licenses/by-sa/4.0/"


def _load_script():
    name = "make_sample_data"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _read_jsonl(path: Path) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            assert line.endswith("\n"), f"{path}:{n} unterminated line"
            rec = json.loads(line)
            assert isinstance(rec, dict), f"{path}:{n} is not an object"
            out.append(rec)
    return out


def _load_set(name: str):
    d = DATA_DIRS[name]
    items = _read_jsonl(d / "items.jsonl")
    behaviors = _read_jsonl(d / "behaviors.jsonl")
    return items, behaviors


def _per_user(behaviors):
    seqs = defaultdict(list)
    for b in behaviors:
        seqs[b["user_id"]].append(b)
    return seqs


def _ts(value: str) -> datetime:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", value), value
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------
# committed files (always run)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(DATA_DIRS))
def test_items_schema(name):
    items, _ = _load_set(name)
    assert items
    ids = [it["item_id"] for it in items]
    assert len(ids) == len(set(ids))
    for it in items:
        assert set(it) == {"item_id", "title", "text", "category", "tags"}
        assert re.fullmatch(r"v\d+", it["item_id"])
        assert isinstance(it["title"], str) and it["title"]
        assert isinstance(it["text"], str)
        assert it["category"] and "UNKNOWN" not in it["category"]
        assert all(part for part in it["category"].split(">"))
        assert isinstance(it["tags"], list)
        assert all(isinstance(t, str) and t for t in it["tags"])


@pytest.mark.parametrize("name", sorted(DATA_DIRS))
def test_behaviors_schema(name):
    items, behaviors = _load_set(name)
    item_ids = {it["item_id"] for it in items}
    assert behaviors
    for b in behaviors:
        assert b["item_id"] in item_ids
        assert b["behavior"] in BEHAVIORS
        assert re.fullmatch(r"u\d{4,}", b["user_id"])
        _ts(b["timestamp"])
        keys = {"user_id", "item_id", "behavior", "timestamp"}
        if b["behavior"] == "rate":
            assert isinstance(b["rating"], int) and 1 <= b["rating"] <= 5
            keys.add("rating")
        else:
            assert "rating" not in b
        if b["behavior"] == "comment":
            assert isinstance(b["text"], str) and b["text"].strip()
            keys.add("text")
        else:
            assert "text" not in b
        assert set(b) == keys
    assert {b["behavior"] for b in behaviors} == BEHAVIORS


@pytest.mark.parametrize("name", sorted(DATA_DIRS))
def test_behaviors_sorted_and_sized(name):
    _, behaviors = _load_set(name)
    users = [b["user_id"] for b in behaviors]
    # grouped by user, users in sorted order
    order = list(dict.fromkeys(users))
    assert order == sorted(order)
    for uid, seq in _per_user(behaviors).items():
        times = [_ts(b["timestamp"]) for b in seq]
        assert all(a < b for a, b in zip(times, times[1:])), uid
        assert 8 <= len(seq) <= 60, (uid, len(seq))
        assert (times[-1] - times[0]).days <= 62, uid
        assert seq[0]["behavior"] == "view"
    size = (DATA_DIRS[name] / "behaviors.jsonl").stat().st_size
    assert size < 3 * 1024 * 1024


@pytest.mark.parametrize("name", sorted(DATA_DIRS))
def test_last_item_is_a_fresh_item(name):
    """The evaluation target never appears earlier in the user's history."""
    _, behaviors = _load_set(name)
    for uid, seq in _per_user(behaviors).items():
        target = seq[-1]["item_id"]
        first = next(k for k, b in enumerate(seq) if b["item_id"] == target)
        assert seq[first]["behavior"] == "view"
        assert all(b["item_id"] == target for b in seq[first:]), uid


def test_sample_has_fake_pii_comments():
    _, behaviors = _load_set("sample")
    comments = [b["text"] for b in behaviors if b["behavior"] == "comment"]
    pii = [c for c in comments
           if re.search(r"1[3-9]\d{9}|@example\.com|微信", c)]
    assert 1 <= len(pii) <= 0.1 * len(comments)
    # e-mails are only ever on the reserved example.com domain
    for c in comments:
        for email in re.findall(r"[\w.]+@[\w.]+", c):
            assert email.endswith("@example.com"), email


@pytest.mark.parametrize("name", sorted(DATA_DIRS))
def test_readme_and_licence(name):
    d = DATA_DIRS[name]
    readme = (d / "README.md").read_text(encoding="utf-8")
    licence = (d / "LICENSE.md").read_text(encoding="utf-8")
    assert "SIMULATED" in readme
    assert CREDIT in readme
    args = COMMITTED_ARGS[name]
    command = ("python scripts/make_sample_data.py " + " ".join(args))
    assert command in readme
    assert f"--out data/{name}" in readme
    assert "CC BY-SA 4.0" in licence and LICENCE_URL in licence
    assert "github.com/chongminggao/KuaiRec" in licence
    assert "scripts/make_sample_data.py" in licence


def test_signal_last_item_follows_main_interest():
    """Last item's first-level category matches the user's most frequent
    category in history far more often than a random item would."""
    items, behaviors = _load_set("sample")
    cat = {it["item_id"]: it["category"].split(">")[0] for it in items}
    share = Counter(cat.values())
    hits = chance = 0.0
    seqs = _per_user(behaviors)
    for seq in seqs.values():
        target = seq[-1]["item_id"]
        history = [b["item_id"] for b in seq
                   if b["behavior"] == "view" and b["item_id"] != target]
        top = Counter(cat[i] for i in history).most_common(1)[0][0]
        hits += cat[target] == top
        chance += share[top] / len(items)
    hits, chance = hits / len(seqs), chance / len(seqs)
    assert hits > 2 * chance, (hits, chance)
    assert hits > 0.3, hits


# ---------------------------------------------------------------------------
# regeneration (needs the KuaiRec source CSV)
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def script():
    module = _load_script()
    source = Path(module.DEFAULT_SOURCE).resolve()
    if not source.is_file():
        pytest.skip(f"KuaiRec source CSV not found: {source}")
    return module


def _run(script, out: Path, *args: str) -> dict[str, bytes]:
    rc = script.main([*args, "--out", str(out)])
    assert rc == 0
    names = ("items.jsonl", "behaviors.jsonl", "README.md", "LICENSE.md")
    return {n: (out / n).read_bytes() for n in names}


def test_generator_is_deterministic(script, tmp_path, capsys):
    a = _run(script, tmp_path / "a", "--seed", "7", *SMALL_ARGS)
    b = _run(script, tmp_path / "b", "--seed", "7", *SMALL_ARGS)
    assert a == b
    c = _run(script, tmp_path / "c", "--seed", "8", *SMALL_ARGS)
    assert c["items.jsonl"] != a["items.jsonl"]
    assert c["behaviors.jsonl"] != a["behaviors.jsonl"]
    items = _read_jsonl(tmp_path / "a" / "items.jsonl")
    assert len(items) == 200
    users = {b["user_id"] for b in _read_jsonl(tmp_path / "a" / "behaviors.jsonl")}
    assert len(users) == 20
    out = capsys.readouterr().out
    assert "comments with fake PII" in out and "skipped" in out


def test_generator_drift_and_slice(script, tmp_path):
    _run(script, tmp_path / "odd", "--seed", "3", *SMALL_ARGS,
         "--user-model", "drift", "--categories-slice", "odd")
    _run(script, tmp_path / "even", "--seed", "3", *SMALL_ARGS,
         "--categories-slice", "even")
    odd = {it["category"].split(">")[0]
           for it in _read_jsonl(tmp_path / "odd" / "items.jsonl")}
    even = {it["category"].split(">")[0]
            for it in _read_jsonl(tmp_path / "even" / "items.jsonl")}
    assert odd and even and not odd & even


@pytest.mark.parametrize("name", sorted(DATA_DIRS))
def test_committed_files_match_generator(script, tmp_path, name):
    got = _run(script, tmp_path / name, *COMMITTED_ARGS[name])
    for fname in ("items.jsonl", "behaviors.jsonl"):
        assert got[fname] == (DATA_DIRS[name] / fname).read_bytes(), (
            f"data/{name}/{fname} differs from the generator's output; "
            "regenerate it with the command in its README.md")


@pytest.mark.parametrize("name", sorted(DATA_DIRS))
def test_negative_feedback_is_in_the_log(name):
    """Simulated dislikes: every listed pair has a low rating or a complaint in the log, the
    complaints use real negation phrasing, and no user's last item (the target) is disliked."""
    _, behaviors = _load_set(name)
    dislikes = {(d["user_id"], d["item_id"])
                for d in _read_jsonl(DATA_DIRS[name] / "dislikes.jsonl")}
    assert len(dislikes) > 100
    events = defaultdict(list)
    for b in behaviors:
        events[(b["user_id"], b["item_id"])].append(b)
    for pair in dislikes:
        said = [b for b in events[pair] if b["behavior"] in ("rate", "comment")]
        assert said and all(b.get("rating", 1) <= 2 for b in said), pair
    phrases = ("不好看", "没意思", "不推荐", "太无聊了")
    complaints = [b["text"] for b in behaviors if b["behavior"] == "comment"
                  and any(p in b["text"] for p in phrases)]
    assert len(complaints) > 50
    for uid, seq in _per_user(behaviors).items():
        first = {}
        for b in seq:
            first.setdefault(b["item_id"], b)
        assert (uid, list(first)[-1]) not in dislikes
