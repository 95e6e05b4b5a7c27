"""bert-rec report: the HTML, checked as parsed markup and in a real headless browser.

The browser tests need Debian's ``chromium`` (and ``fonts-wqy-microhei`` for Chinese glyphs);
.ci/run installs both. Without a browser they skip locally and fail under CI=true.
"""

import html.parser
import json
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from bert_rec.cli import main
from bert_rec.data import Behavior
from bert_rec.explain import Because, Recommendation, UserRecommendations, \
    format_recommendations
from bert_rec.report import ReportData, UserView, render, training_history

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "data", "sample")
SHIPPED_CKPT = os.path.join(ROOT, "checkpoints", "tiny-bert-zh")
DATA_ARGS = ["--items", os.path.join(SAMPLE, "items.jsonl"),
             "--behaviors", os.path.join(SAMPLE, "behaviors.jsonl")]
PWN = "document.documentElement.setAttribute('data-pwned','{}')"
HOSTILE = [f"<script>{PWN.format(1)}</script>", f"<img src=x onerror=\"{PWN.format(2)}\">",
           f"<a href=\"javascript:{PWN.format(3)}\">点我</a>", "</style><b>粗</b>",
           "\"'><svg onload=alert(1)>", "</textarea></script><!--"]
VOID = {"meta", "input", "br", "img", "hr", "link", "source", "wbr", "area", "col", "embed"}
URL_ATTRIBUTES = {"src", "href", "action", "formaction", "poster", "srcset", "xlink:href",
                  "data", "background", "ping"}


# -- a small DOM ------------------------------------------------------------------------------
class Node:
    def __init__(self, tag, attrs, parent=None):
        self.tag, self.attrs, self.parent, self.children, self.text = tag, dict(attrs), parent, \
            [], []

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()

    def find(self, tag=None, cls=None):
        return [n for n in self.walk() if (tag is None or n.tag == tag) and
                (cls is None or cls in (n.attrs.get("class") or "").split())]

    def all_text(self):
        return "".join(self.text) + "".join(c.all_text() for c in self.children)


class _Builder(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.node = Node("#document", {})

    def handle_starttag(self, tag, attrs):
        node = Node(tag, attrs, self.node)
        self.node.children.append(node)
        if tag not in VOID:
            self.node = node

    def handle_startendtag(self, tag, attrs):
        self.node.children.append(Node(tag, attrs, self.node))

    def handle_endtag(self, tag):
        node = self.node
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.node = node.parent

    def handle_data(self, data):
        self.node.text.append(data)


def parse(text):
    builder = _Builder()
    builder.feed(text)
    return builder.root


def check_inert(root, expected_scripts=1):
    """No element or attribute that runs code or loads anything, whatever the data said."""
    tags = {n.tag for n in root.walk()}
    assert not tags & {"img", "a", "iframe", "object", "embed", "form", "link", "base",
                       "textarea", "b"}, tags
    assert len(root.find("script")) == expected_scripts and len(root.find("style")) == 1
    for node in root.walk():
        for name, value in node.attrs.items():
            assert not name.startswith("on"), (node.tag, name)
            assert name not in URL_ATTRIBUTES, (node.tag, name, value)
    assert "data-pwned" not in root.find("html")[0].attrs if root.find("html") else True


# -- rendering, no browser --------------------------------------------------------------------
def _b(user, item, behavior, minutes, text="", rating=None):
    return Behavior(user, item, behavior, 1.7e9 + 60 * minutes, rating, text)


def _hand_built():
    """Two users; hostile text everywhere; one item explained with a negative share."""
    user = HOSTILE[0]
    titles = {"v1": HOSTILE[1], "v2": HOSTILE[2], "v3": "红烧肉 家常菜", "v4": HOSTILE[3]}
    history = [_b(user, "v1", "view", 0), _b(user, "v2", "comment", 1, text=HOSTILE[4]),
               _b(user, "v4", "rate", 2, rating=1.0)]
    disliked = Because("v4", "rate", "", -0.25)
    disliked.polarity = "negative"  # the field bert_rec.explain.Because gets in issue #11
    liked = Because("v2", "comment", HOSTILE[5], 1.25)
    liked.polarity = "positive"
    items = [Recommendation("v3", 0.5, titles["v3"], [liked, disliked]),
             Recommendation(HOSTILE[3], 0.25, HOSTILE[2], [Because("v1", "view", "", 1.0)])]
    other = [_b("u2", "v3", "click", 5)]
    return ReportData(users=[UserView(user, history, items), UserView("u2", other, [])],
                      titles=titles, clean=lambda t: t, counts=[("users", "2")])


def test_render_escapes_every_id_title_and_text():
    data = _hand_built()
    root = parse(render(data))
    check_inert(root)
    text = root.all_text()
    for hostile in HOSTILE:
        assert hostile in text, hostile  # shown as text, character for character
    articles = root.find("article")
    assert [a.attrs["data-user"] for a in articles] == [HOSTILE[0], "u2"]
    assert [li.attrs["data-item"] for li in articles[0].find("li", "rec")] == ["v3", HOSTILE[3]]


def test_negative_shares_are_drawn_as_such():
    root = parse(render(_hand_built()))
    first = root.find("li", "rec")[0]
    labels = first.find(cls="lab")
    assert [float(lab.attrs["data-share"]) for lab in labels] == [1.25, -0.25]
    assert [lab.attrs.get("data-polarity") for lab in labels] == ["positive", "negative"]
    assert "disliked" in labels[1].all_text() and "disliked" not in labels[0].all_text()
    fills = first.find("i")
    assert [f.attrs["class"] for f in fills] == ["p", "n"]
    assert "left:37.5%;width:12.5%" in fills[1].attrs["style"]  # left of the middle line
    assert "left:50.0%;width:50.0%" in fills[0].attrs["style"]  # capped at the half
    assert [p.all_text() for p in first.find(cls="pct")] == ["125.0%", "-25.0%"]
    assert first.find(cls="pct")[1].attrs["class"] == "pct n"
    second = root.find("li", "rec")[1]  # no negative share: one-sided bars
    assert not second.find(cls="two") and "left:0.0%;width:100.0%" in second.find("i")[0].attrs[
        "style"]


def test_table_output_shows_negative_shares_and_polarity():
    data = _hand_built()
    result = UserRecommendations(data.users[0].user_id, data.users[0].items)
    text = format_recommendations([result], {result.user_id: data.users[0].history},
                                  data.titles)
    line = next(li for li in text.splitlines() if "v4" in li and "rated" in li)
    assert "-25.0%" in line and "ranked lower because you disliked: rated v4" in line
    assert "disliked" not in next(li for li in text.splitlines() if "commented" in li)


def test_training_curves_from_the_model_directory(tmp_path):
    assert training_history(str(tmp_path)) is None
    (tmp_path / "training").mkdir()
    history = [{"epoch": e, "loss": 3.0 / e, "val_ndcg": 0.1 * e, "val_hr": 0.2 * e}
               for e in (1, 2, 3)]
    (tmp_path / "training" / "history.json").write_text(json.dumps(history))
    assert training_history(str(tmp_path)) == history
    data = _hand_built()
    data.training = history
    root = parse(render(data))
    charts = [n for n in root.find("div") if n.attrs.get("id") == "training"][0]
    assert len(charts.find("svg")) == 2 and len(charts.find("polyline")) == 3


# -- in a browser -----------------------------------------------------------------------------
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars",
         # networking off: every host resolves to nothing and every request goes to a dead proxy
         "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
         "--proxy-bypass-list=<-loopback>"]


def _missing():
    """What the browser tests lack here ('' when chromium and a CJK font are installed)."""
    if CHROMIUM is None:
        return "no chromium browser"
    fonts = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True) \
        if shutil.which("fc-list") else None
    if fonts is not None and not fonts.stdout.strip():
        return "no CJK font (Chinese would render as boxes)"
    return ""


def chromium(url, *args):
    """Run headless chromium on ``url``; returns its stdout (the DOM with --dump-dom)."""
    missing = _missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {missing}: .ci/run installs them (apt-get install -y "
                        f"chromium fonts-wqy-microhei)")
        pytest.skip(f"{missing} here (apt-get install -y chromium fonts-wqy-microhei)")
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, url],
                                capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def dump_dom(path, fragment=""):
    return parse(chromium(f"file://{path}{fragment}", "--dump-dom"))


def screenshot_is_not_blank(path, out, size="1280,1000"):
    import numpy as np
    from PIL import Image
    chromium(f"file://{path}", f"--screenshot={out}", f"--window-size={size}")
    pixels = np.asarray(Image.open(out).convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    ink = 1 - counts.max() / len(pixels)  # share of pixels not of the background colour
    assert ink > 0.05 and len(colours) > 50, (ink, len(colours))


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory, tiny_ckpt):
    tmp = tmp_path_factory.mktemp("hostile")
    items = [{"item_id": f"v{i}", "title": f"{h} 红烧肉 家常菜", "text": h}
             for i, h in enumerate(HOSTILE)] + [{"item_id": HOSTILE[2], "title": "篮球"}]
    behaviors = []
    for u, user in enumerate([HOSTILE[0], HOSTILE[1], "u3", HOSTILE[4]]):
        behaviors += [{"user_id": user, "item_id": items[(u + j) % len(items)]["item_id"],
                       "behavior": "comment" if j == 1 else "view",
                       "timestamp": 1.7e9 + 60 * (10 * u + j),
                       **({"text": HOSTILE[(u + 3) % len(HOSTILE)] + " 好看"} if j == 1 else {})}
                      for j in range(3)]
    out = str(tmp / "report.html")
    argv = ["report", "--model", tiny_ckpt, "--items", _write(tmp / "items.jsonl", items),
            "--behaviors", _write(tmp / "behaviors.jsonl", behaviors), "--out", out, "-k", "3"]
    assert main(argv) == 0
    return out, [b["user_id"] for b in behaviors][::3], tmp


def test_hostile_text_is_inert_in_the_browser(hostile_report):
    path, users, tmp = hostile_report
    with open(path, encoding="utf-8") as f:
        page = f.read()
    no_csp = tmp / "no-csp.html"  # the escaping alone must be enough
    no_csp.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page),
                      encoding="utf-8")
    assert "Content-Security-Policy" not in no_csp.read_text(encoding="utf-8")
    for variant in (path, str(no_csp)):
        root = dump_dom(variant)
        document = root.find("html")[0]
        assert document.attrs.get("data-ready") == "1"  # the report's own script ran
        assert "data-pwned" not in document.attrs
        check_inert(root)
        assert [a.attrs["data-user"] for a in root.find("article")] == sorted(users)
        assert all(len(a.find("li", "rec")) == 3 for a in root.find("article"))
        assert HOSTILE[1] + " 红烧肉 家常菜" in root.all_text()
    screenshot_is_not_blank(str(no_csp), str(tmp / "hostile.png"))


def test_report_follows_hash_user_ids(tiny_ckpt, hostile_report):
    _, users, tmp = hostile_report
    out = str(tmp / "hashed.html")
    assert main(["report", "--model", tiny_ckpt, "--items", str(tmp / "items.jsonl"),
                 "--behaviors", str(tmp / "behaviors.jsonl"), "--out", out, "-k", "2",
                 "--hash-user-ids", "salt", "--no-evaluation"]) == 0
    root = parse(open(out, encoding="utf-8").read())
    ids = [a.attrs["data-user"] for a in root.find("article")]
    assert len(ids) == len(users) and all(re.fullmatch("u_[0-9a-f]{16}", u) for u in ids)
    assert "u3" not in ids and "Left out (--no-evaluation)." in root.all_text()


@pytest.fixture(scope="module")
def sample_report(tmp_path_factory):
    """200 users of data/sample: the report and recommend's JSON for the same users."""
    tmp = tmp_path_factory.mktemp("sample")
    with open(os.path.join(SAMPLE, "behaviors.jsonl"), encoding="utf-8") as f:
        users = sorted({json.loads(line)["user_id"] for line in f})[:200]
    out, recs = str(tmp / "report.html"), str(tmp / "recs.jsonl")
    assert main(["report", "--model", SHIPPED_CKPT, *DATA_ARGS, "--out", out, "--users", "200",
                 "-k", "10", "--explain", "5", "--dislikes",
                 os.path.join(SAMPLE, "dislikes.jsonl")]) == 0
    assert main(["recommend", "--model", SHIPPED_CKPT, *DATA_ARGS, "--user", *users, "-k", "10",
                 "--explain", "5", "--format", "json", "--output", recs]) == 0
    with open(recs, encoding="utf-8") as f:
        return out, {r["user_id"]: r for r in map(json.loads, f)}, tmp


def test_sample_report_in_the_browser(sample_report):
    path, expected, tmp = sample_report
    size = os.path.getsize(path)
    assert size < 5 * 2**20, size
    with open(path, encoding="utf-8") as f:
        page = f.read()
    assert not re.search(r"(?i)(https?|ftp|wss?|file):|//[a-z0-9-]+\.[a-z]|url\(", page)
    root = dump_dom(path)
    check_inert(root)
    document = root.find("html")[0]
    assert int(document.attrs["data-loaded-ms"]) < 5000  # ~0.5 s here; slack for a busy CI
    articles = root.find("article")
    assert [a.attrs["data-user"] for a in articles] == sorted(expected)
    for article in articles:
        want = expected[article.attrs["data-user"]]["items"]
        got = article.find("li", "rec")
        assert [li.attrs["data-item"] for li in got] == [i["item_id"] for i in want]
        for li, item in zip(got, want):
            assert float(li.attrs["data-score"]) == pytest.approx(item["score"], abs=1e-6)
            assert item["title"] in li.all_text()  # Chinese arrives as the same characters
            shares = [float(lab.attrs["data-share"]) for lab in li.find(cls="lab")]
            assert shares == pytest.approx([b["share"] for b in item["because"]], abs=1e-6)
            assert sum(shares) == pytest.approx(sum(b["share"] for b in item["because"]),
                                                abs=1e-6)
    methods = [tr.attrs["data-method"] for tr in root.find("tr") if "data-method" in tr.attrs]
    assert methods == ["bert_rec", "zero_shot", "itemknn", "tfidf", "popularity"]
    metrics = [th.attrs["data-metric"] for th in root.find("th") if "data-metric" in th.attrs]
    assert metrics == ["hr", "ndcg", "mrr", "coverage", "disliked"]
    # the disliked-items rate against the simulator's dislikes, as evaluate computes it
    from bert_rec.data import group_by_user, read_behaviors, read_items
    from bert_rec.evaluation import dislike_probe, leave_last_out, run_baselines
    items, _ = read_items(os.path.join(SAMPLE, "items.jsonl"))
    behaviors, _ = read_behaviors(os.path.join(SAMPLE, "behaviors.jsonl"))
    cases, _ = leave_last_out(group_by_user(behaviors))
    with open(os.path.join(SAMPLE, "dislikes.jsonl"), encoding="utf-8") as f:
        truth = [(r["user_id"], r["item_id"]) for r in map(json.loads, f)]
    knn = run_baselines(items, cases, k=10, probe=dislike_probe(items, cases, truth=truth))
    row = next(tr for tr in root.find("tr") if tr.attrs.get("data-method") == "itemknn")
    assert row.find("td")[-1].all_text() == f"{knn['itemknn']['disliked']:.4f}"
    screenshot_is_not_blank(path, str(tmp / "sample.png"))


def test_filter_by_user_id_in_the_browser(sample_report):
    path, expected, _ = sample_report
    user = sorted(expected)[1]
    root = dump_dom(path, f"#q={user}")
    visible = [a.attrs["data-user"] for a in root.find("article") if "hidden" not in a.attrs]
    assert visible == [user]
    assert [s.all_text() for s in root.find("span") if s.attrs.get("id") == "shown"] == [
        "1 of 200 users shown"]
