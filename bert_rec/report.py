"""``bert-rec report``: one self-contained HTML file (no TensorFlow here).

Inline CSS, one inline script and inline SVG charts; no URL of any kind, so the file opens
offline and from an e-mail attachment. Every id, title and text from the data goes through
``html.escape`` (text content and attribute values alike), and nothing from the data is ever
placed inside the script, the style sheet or an ``href``/``src``. A Content-Security-Policy
allows only the report's own script (by hash) and no network at all, as a second line of
defence. The caller (commands.cmd_report) computes the results; this module only renders.
"""

import base64
import dataclasses
import datetime
import hashlib
import html
import json
import os
from collections import Counter

from .explain import VERBS
from .report_svg import grouped_bars, line_chart

CJK_FONTS = ('-apple-system, "Segoe UI", Roboto, "Noto Sans CJK SC", "Source Han Sans SC", '
             '"PingFang SC", "Hiragino Sans GB", "Microsoft YaHei", "WenQuanYi Micro Hei", '
             '"WenQuanYi Zen Hei", "Noto Color Emoji", "Apple Color Emoji", "Segoe UI Emoji", '
             'sans-serif')

CSS = """
:root{--fg:#1d232b;--muted:#5b6675;--line:#dde3ea;--pos:#3b6fb6;--neg:#c0392b;--bg:#f4f6f9}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 %FONTS%;color:var(--fg);background:var(--bg)}
header,main{max-width:1280px;margin:0 auto;padding:12px 20px}
header h1{margin:8px 0 2px;font-size:22px}
.muted,small{color:var(--muted)}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px 16px;
  margin:0 0 14px}
h2{font-size:18px;margin:4px 0 10px}h3{font-size:16px;margin:0 0 8px}
h4{font-size:13px;margin:8px 0 4px;color:var(--muted);text-transform:uppercase}
table{border-collapse:collapse;font-size:13px}
th,td{padding:3px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
th.sub{font-weight:normal;padding-left:22px}
.grid2{display:flex;flex-wrap:wrap;gap:16px 28px;align-items:flex-start}
.wide{flex:1;min-width:0}
svg.chart{max-width:100%;height:auto;font-size:11px}
svg .grid{stroke:#e6e9ee}svg .title{font-weight:600;font-size:12px}
#filter{font:inherit;padding:6px 10px;width:280px;border:1px solid var(--line);
  border-radius:6px}
article.user{content-visibility:auto;contain-intrinsic-size:auto 600px}
.cols{display:grid;grid-template-columns:minmax(0,5fr) minmax(0,6fr);gap:18px}
@media (max-width:900px){.cols{grid-template-columns:1fr}}
.tl{max-height:420px;overflow:auto}.tl td{white-space:nowrap}.tl td.t{white-space:normal}
ol.recs{margin:0;padding-left:26px}ol.recs>li{margin:0 0 8px}
.rh{display:flex;gap:8px;align-items:baseline}.rh .s{font-variant-numeric:tabular-nums}
.why{display:grid;grid-template-columns:150px 52px minmax(0,1fr);gap:2px 8px;
  font-size:12px;margin:2px 0 0}
.bar{position:relative;height:12px;margin-top:3px;background:#eef1f5;border-radius:2px}
.bar i{position:absolute;top:0;bottom:0;border-radius:2px}
.bar i.p{background:var(--pos)}.bar i.n{background:var(--neg)}
.bar.two::after{content:"";position:absolute;left:50%;top:-2px;bottom:-2px;
  border-left:1px solid var(--fg)}
.pct{text-align:right;font-variant-numeric:tabular-nums}.pct.n{color:var(--neg)}
.tag{font-size:11px;border-radius:3px;padding:0 4px;background:#fbe3e0;color:var(--neg)}
[hidden]{display:none!important}
""".replace("%FONTS%", CJK_FONTS)

# The only script: filters the user sections by id (also from "#q=ID" in the address).
SCRIPT = """(function(){
var input=document.getElementById("filter"),shown=document.getElementById("shown");
var users=Array.prototype.slice.call(document.querySelectorAll("article.user"));
function apply(){var q=input.value.trim().toLowerCase(),n=0;
users.forEach(function(a){var hit=!q||a.getAttribute("data-user").toLowerCase().indexOf(q)>=0;
a.hidden=!hit;if(hit){n++;}});shown.textContent=n+" of "+users.length+" users shown";}
input.addEventListener("input",apply);
var m=/^#q=(.*)$/.exec(location.hash);
if(m){try{input.value=decodeURIComponent(m[1]);}catch(e){input.value=m[1];}}
apply();
window.addEventListener("load",function(){document.documentElement.setAttribute(
"data-loaded-ms",String(Math.round(performance.now())));});
document.documentElement.setAttribute("data-ready","1");
})();"""


@dataclasses.dataclass
class UserView:
    """One user's section: the time-sorted behaviours and the explained recommendations."""
    user_id: str
    history: list
    items: list


@dataclasses.dataclass
class ReportData:
    """Everything the report shows. ``clean``: the model's text cleaning (scrubs personal
    data) for the behaviour texts of the timelines."""
    users: list
    titles: dict
    clean: object
    counts: list = dataclasses.field(default_factory=list)
    sources: list = dataclasses.field(default_factory=list)
    evaluation: dict | None = None
    evaluation_note: str = ""
    training: list | None = None
    k: int = 10
    timeline_limit: int = 100
    title: str = "bert_rec report"


def _e(text):
    return html.escape(str(text), quote=True)


def csp():
    """The Content-Security-Policy: no network, inline styles, only SCRIPT (by its hash)."""
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode()
    return (f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
            f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'")


def render(data):
    """The report as one HTML string."""
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sources = " · ".join(f"{_e(label)}: {_e(value)}" for label, value in data.sources)
    users = "".join(_user_section(i, view, data) for i, view in enumerate(data.users))
    return (f'<!DOCTYPE html>\n<html lang="zh-CN"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_e(csp())}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="referrer" content="no-referrer">'
            f'<title>{_e(data.title)}</title><style>{CSS}</style></head><body>'
            f'<header><h1>{_e(data.title)}</h1><div class="muted">{sources} · generated '
            f'{generated}</div></header><main>{_overview(data)}'
            f'<section id="users" class="card"><h2>Users ({len(data.users)})</h2>'
            f'<p><input id="filter" type="search" placeholder="filter by user id" '
            f'aria-label="filter by user id" autocomplete="off"> <span id="shown" '
            f'class="muted"></span></p><p class="muted">Bars: each behaviour\'s share of '
            f'the item\'s score (the shares of all of a user\'s behaviours sum to 100%; the '
            f'largest are listed). A negative share (red, left of the line) ranked the item '
            f'lower.</p></section>{users}</main><script>{SCRIPT}</script></body></html>\n')


def _overview(data):
    parts = ['<section id="overview" class="card"><h2>Overview</h2><div class="grid2"><div>'
             '<h3>Data</h3>', _counts_table(data.counts), '</div><div class="wide">',
             _evaluation(data.evaluation, data.evaluation_note), "</div></div>"]
    if data.training:
        parts.append(_training(data.training, data.k))
    parts.append("</section>")
    return "".join(parts)


def _counts_table(counts):
    rows = "".join(f'<tr><th{" class=sub" if label.startswith(" ") else ""}>'
                   f'{_e(label.strip())}</th><td class="n">{_e(value)}</td></tr>'
                   for label, value in counts)
    return f'<table id="counts"><tbody>{rows}</tbody></table>'


def _evaluation(report, note):
    if not report:
        return f'<h3>Evaluation</h3><p class="muted" id="evaluation-note">{_e(note)}</p>'
    k, results = report["k"], report["results"]
    columns = {"hr": f"HR@{k}", "ndcg": f"NDCG@{k}", "mrr": "MRR", "coverage": f"Coverage@{k}",
               "disliked": f"Disliked@{k}"}  # disliked: share of top-K like a disliked item
    keys = [key for key in columns if all(key in m for m in results.values())]
    head = "".join(f'<th class="n" data-metric="{key}">{columns[key]}</th>' for key in keys)
    rows = "".join(f'<tr data-method="{_e(name)}"><th>{_e(name)}</th>' + "".join(
        f'<td class="n">{m[key]:.4f}</td>' for key in keys)
        + "</tr>" for name, m in results.items())
    chart = grouped_bars(list(results), [f"HR@{k}", f"NDCG@{k}", "MRR"],
                         [[m["hr"], m["ndcg"], m["mrr"]] for m in results.values()],
                         f"leave-last-out, {report['users_evaluated']} users, full ranking")
    disliked = (f" Disliked@{k}: the share of the top {k} items whose closest history item "
                f"(TF-IDF) the user disliked; lower is better." if "disliked" in keys else "")
    return (f'<h3>Evaluation against the baselines</h3><p class="muted">Per user the last '
            f'distinct item is the target and everything before it the history; every '
            f'catalogue item outside the history is a candidate. {report["users_evaluated"]} '
            f'users evaluated, {report["users_skipped"]} skipped (fewer than 2 distinct '
            f'items).{disliked}</p><div class="grid2"><table id="evaluation"><thead><tr>'
            f'<th>method</th>'
            f'{head}</tr></thead><tbody>{rows}</tbody></table>{chart}</div>')


def _training(history, k):
    epochs = [h["epoch"] for h in history]
    loss = line_chart(epochs, {"training loss": [h["loss"] for h in history]}, "training loss")
    metrics = line_chart(epochs, {f"NDCG@{k}": [h["val_ndcg"] for h in history],
                                  f"HR@{k}": [h["val_hr"] for h in history]},
                         "validation (last-but-one item per user)")
    return f'<h3>Training</h3><div class="grid2" id="training">{loss}{metrics}</div>'


def _when(timestamp):
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M")


def _user_section(index, view, data):
    history = view.history
    latest = f", latest {_when(history[-1].timestamp)} UTC" if history else ""
    return (f'<article class="user card" id="user-{index}" data-user="{_e(view.user_id)}">'
            f'<h3>user {_e(view.user_id)} <small>{len(history)} behaviours{latest}</small>'
            f'</h3><div class="cols"><div>{_timeline(history, data)}</div><div>'
            f'<h4>Top {len(view.items)}</h4>{_recommendations(view.items, data.titles)}'
            f'</div></div></article>')


def _timeline(history, data):
    shown = history[-data.timeline_limit:]
    rows = []
    for b in reversed(shown):  # newest first
        rating = "" if b.rating is None else f"{b.rating:g}"
        text = data.clean(b.text) if b.text else ""
        rows.append(f'<tr><td>{_when(b.timestamp)}</td><td>{_e(b.behavior)}</td>'
                    f'<td>{_e(b.item_id)}</td><td class="t">{_e(data.titles.get(b.item_id, ""))}'
                    f'</td><td class="n">{_e(rating)}</td><td class="t">{_e(text)}</td></tr>')
    more = len(history) - len(shown)
    note = f'<p class="muted">{more} earlier behaviours not shown.</p>' if more > 0 else ""
    return (f'<h4>Behaviour timeline (newest first)</h4><div class="tl"><table><thead><tr>'
            f'<th>time (UTC)</th><th>type</th><th>item</th><th>title</th><th>rating</th>'
            f'<th>text (cleaned)</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
            f'{note}')


def _recommendations(items, titles):
    rows = []
    for rec in items:
        because = "".join(_because(why, titles, any(w.share < 0 for w in rec.because))
                          for why in rec.because)
        rows.append(f'<li class="rec" data-item="{_e(rec.item_id)}" data-score="{rec.score!r}">'
                    f'<div class="rh"><strong class="s">{rec.score:.3f}</strong><code>{_e(rec.item_id)}'
                    f'</code><span>{_e(rec.title)}</span></div><div class="why">{because}</div>'
                    f'</li>')
    return f'<ol class="recs">{"".join(rows)}</ol>'


def _because(why, titles, two_sided):
    """One explanation row: label, share and a bar (negative shares to the left, in red)."""
    polarity = getattr(why, "polarity", None)
    share = float(why.share)
    negative = share < 0
    width = min(abs(share), 1.0) * (50 if two_sided else 100)
    left = (50 - width if negative else 50) if two_sided else 0
    verb = VERBS.get(why.behavior, why.behavior)
    said = f" “{_e(why.text)}”" if why.text else ""
    tag = ' <span class="tag">disliked</span>' if polarity == "negative" else ""
    pol = f' data-polarity="{_e(polarity)}"' if polarity is not None else ""
    return (f'<div class="lab" data-share="{share!r}"{pol}>{_e(verb)} <code>{_e(why.item_id)}'
            f'</code>{tag}</div><div class="pct{" n" if negative else ""}">{share:.1%}</div>'
            f'<div><div class="bar{" two" if two_sided else ""}"><i class="'
            f'{"n" if negative else "p"}" style="left:{left:.1f}%;width:{width:.1f}%"></i>'
            f'</div><small>{_e(titles.get(why.item_id, ""))}{said}</small></div>')


# -- inputs the command gathers ----------------------------------------------------------------
def dataset_counts(items, histories):
    """(label, value) rows of the overview: items, users, behaviours by type, time span."""
    behaviors = [b for h in histories.values() for b in h]
    by_type = Counter(b.behavior for b in behaviors)
    rows = [("items in the catalogue", f"{len(items):,}"), ("users", f"{len(histories):,}"),
            ("behaviours", f"{len(behaviors):,}"),
            ("items with behaviours", f"{len({b.item_id for b in behaviors}):,}")]
    rows += [(f"  {name}", f"{count:,}") for name, count in by_type.most_common()]
    rows += [("with rating", f"{sum(b.rating is not None for b in behaviors):,}"),
             ("with text", f"{sum(bool(b.text) for b in behaviors):,}")]
    if behaviors:
        times = [b.timestamp for b in behaviors]
        rows.append(("time span (UTC)", f"{_when(min(times))} – {_when(max(times))}"))
    return rows


def training_history(model_path):
    """The epochs of ``MODEL/training/history.json`` (None if the model has none)."""
    path = os.path.join(model_path, "training", "history.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        history = json.load(f)
    keys = ("epoch", "loss", "val_ndcg", "val_hr")
    ok = isinstance(history, list) and all(isinstance(h, dict) and all(k in h for k in keys)
                                           for h in history)
    return history if ok and history else None
