"""The export served over HTTP as TF Serving's REST API serves it, compared with recommend.

No model server binary can be installed here, so a stand-in runs in a fresh process that imports
only TensorFlow: it loads the SavedModel and answers ``POST /v1/models/NAME:predict`` with the
columnar ``{"signature_name", "inputs"}`` -> ``{"outputs"}`` protocol, encoding its answer as
strict JSON (a non-finite score would be an error, as it is for a JSON client).
"""

import json
import os
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

from bert_rec.cli import main
from bert_rec.data import Item
from bert_rec.recommend import Recommender
from bert_rec.serving import PAD_SCORE, ServingClient, recommendations

sys.path.insert(0, os.path.dirname(__file__))
from test_export import trained  # noqa: E402,F401  (the fixture: a trained model and export)
from test_serving import ITEMS, _b, export_dir  # noqa: E402,F401  (an export's assets only)

STAND_IN = r'''
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import numpy as np
import tensorflow as tf

path, name = sys.argv[1:]
model = tf.saved_model.load(path)
PREDICT = f"/v1/models/{name}:predict"


def plain(value):
    value = value.numpy()
    if value.dtype.kind in "SO":
        return np.char.decode(value.astype(bytes), "utf-8").tolist()
    return value.tolist()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        if self.path != PREDICT:
            return self.reply(404, {"error": f"no model at {self.path}"})
        try:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fn = model.signatures[body.get("signature_name", "serving_default")]
            specs = fn.structured_input_signature[1]
            args = {k: tf.constant(v, dtype=specs[k].dtype) for k, v in body["inputs"].items()}
            outputs = {k: plain(v) for k, v in fn(**args).items()}
        except Exception as e:  # TF Serving answers {"error": ...} too
            return self.reply(400, {"error": f"{type(e).__name__}: {e}"})
        self.reply(200, {"outputs": outputs if len(outputs) > 1 else next(iter(outputs.values()))})

    def reply(self, code, obj):
        try:
            data = json.dumps(obj, allow_nan=False).encode()
        except ValueError as e:
            code, data = 500, json.dumps({"error": f"answer is not JSON: {e}"}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], "bert_rec" in sys.modules, "bert4keras" in sys.modules,
      flush=True)
server.serve_forever()
'''


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    """The stand-in model server on a free local port: (base URL of the model, process)."""
    _, _, _, export_dir, version = trained
    env = {k: v for k, v in os.environ.items() if k not in ("TF_KERAS", "TF_USE_LEGACY_KERAS")}
    proc = subprocess.Popen([sys.executable, "-c", STAND_IN, version, "recs"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(tmp_path_factory.mktemp("server")))
    try:
        line = proc.stdout.readline().split()
        assert line, proc.stderr.read()[-3000:]
        assert line[1:] == ["False", "False"]  # plain TensorFlow, like the model server
        yield f"http://127.0.0.1:{line[0]}/v1/models/recs", proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _post(url, body):
    request = urllib.request.Request(url + ":predict", data=body.encode("utf-8"),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as answer:
        text = answer.read().decode("utf-8")
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def _files(tmp_path, items, histories, extra_items=()):
    def write(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                        encoding="utf-8")
        return str(path)
    return (write("items.jsonl", [{"item_id": i.item_id, "title": i.title,
                                   "category": i.category} for i in [*items, *extra_items]]),
            write("behaviors.jsonl", [{"user_id": b.user_id, "item_id": b.item_id,
                                       "behavior": b.behavior, "timestamp": b.timestamp,
                                       "text": b.text} for h in histories.values() for b in h]))


def test_served_answers_equal_recommend(trained, server, tmp_path, capsys):
    """Every user in one batched request, ids only (no items file), over HTTP."""
    items, histories, out, export_dir, _ = trained
    url, _ = server
    items_path, behaviors_path = _files(tmp_path, items, histories)
    assert main(["request", "--export", export_dir, "--behaviors", behaviors_path,
                 "-k", "5"]) == 0
    captured = capsys.readouterr()
    assert f"request for {len(histories)} user(s)" in captured.err
    body = json.loads(captured.out)
    ids = np.array(body["inputs"]["behavior_item_ids"])
    tokens = np.array(body["inputs"]["behavior_token_ids"])
    assert not tokens[ids != ""].any()  # catalogue items: ids only, no token ids
    assert tokens[(ids == "") & (np.array(body["inputs"]["behavior_weights"]) > 0)].any()
    answer = _post(url, captured.out)
    assert set(answer["outputs"]) == {"item_ids", "scores", "num_valid"}
    recs = tmp_path / "recs.jsonl"
    assert main(["recommend", "--model", out, "--items", items_path, "--behaviors",
                 behaviors_path, "-k", "5", "--format", "json", "--output", str(recs)]) == 0
    expected = {r["user_id"]: r["items"] for r in map(json.loads, recs.read_text().splitlines())}
    served = recommendations(answer)
    assert len(served) == len(expected)
    for user, got in zip(sorted(expected), served):  # rows: the users by id
        want = expected[user]
        assert [i for i, _ in got] == [r["item_id"] for r in want]
        np.testing.assert_allclose([s for _, s in got], [r["score"] for r in want], atol=1e-5)
    edge = sorted(expected).index("edge")  # 4 unseen items for k=5: a padded tail
    assert answer["outputs"]["num_valid"][edge] == 4 and len(served[edge]) == 4
    assert answer["outputs"]["item_ids"][edge][4] == ""
    assert answer["outputs"]["scores"][edge][4] == PAD_SCORE


def test_new_items_need_the_items_file(trained, server, tmp_path, capsys):
    """A behaviour on an item the export lacks: --items gives its text, encoded in the graph."""
    items, histories, out, export_dir, _ = trained
    url, _ = server
    new = Item("brand-new", "篮球 比赛 精彩 集锦 球星", category="ball")
    user = {"u1": histories["u1"] + [histories["u1"][-1].__class__(
        "u1", "brand-new", "click", histories["u1"][-1].timestamp + 60)]}
    items_path, behaviors_path = _files(tmp_path, items, user, extra_items=[new])
    argv = ["request", "--export", export_dir, "--behaviors", behaviors_path,
            "--signature", "user_vector"]
    assert main(argv) == 2
    assert ("behaviours refer to item(s) brand-new that are neither in the export's catalogue "
            "nor in the items file" in capsys.readouterr().err)
    assert main(argv + ["--items", items_path, "--user", "u1"]) == 0
    answer = _post(url, capsys.readouterr().out)
    rec = Recommender.load(out).index_items([*items, new])
    [(_, _, _, profile, _)] = list(rec._user_blocks([user["u1"]], with_scores=False))
    np.testing.assert_allclose(answer["outputs"]["interest"], profile[:, 0], atol=1e-5)
    np.testing.assert_allclose(answer["outputs"]["dislike"], profile[:, 1], atol=1e-5)


# -- the client alone (no server, no TensorFlow model) -----------------------------------------
def test_units_of_the_exports_items_carry_no_tokens(export_dir):
    assets = export_dir / "recs" / "7" / "assets"
    (assets / "item_vectors.ids").write_text("a\nb\n", encoding="utf-8")
    client = ServingClient(str(export_dir))
    assert client.export_items == {"a", "b"}
    history = [_b("a", 0), _b("c", 1, "篮球 太 精彩 了", "comment")]
    with pytest.raises(ValueError, match="item\\(s\\) c that are neither in the export's"):
        client.user_inputs([history])
    inputs = client.user_inputs([history], {"c": ITEMS[2]})
    ids, tokens = inputs["behavior_item_ids"][0].tolist(), inputs["behavior_token_ids"][0]
    assert ids == ["a", "c", ""]
    assert not tokens[0].any() and tokens[1].any() and tokens[2].any()  # a: id only
    want = client.encode(client.pipeline.clean_many([ITEMS[2].full_text()]), 64)[0]
    assert tokens[1, :len(want)].tolist() == want


def test_recommendations_from_every_answer_form():
    columnar = {"outputs": {"item_ids": [["a", "b"], ["c", ""]], "scores": [[0.5, 0.25],
                                                                         [0.75, PAD_SCORE]],
                            "num_valid": [2, 1]}}
    rows = {"predictions": [{"item_ids": ["a", "b"], "scores": [0.5, 0.25], "num_valid": 2},
                            {"item_ids": ["c", ""], "scores": [0.75, PAD_SCORE],
                             "num_valid": 1}]}
    older = {"outputs": {"item_ids": [["a", "b"], ["c", "a"]],
                         "scores": [[0.5, 0.25], [0.75, float("-inf")]]}}
    want = [[("a", 0.5), ("b", 0.25)], [("c", 0.75)]]
    assert recommendations(columnar) == recommendations(rows) == recommendations(older) == want
