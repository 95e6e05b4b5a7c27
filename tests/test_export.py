"""Keras model files, the TF Serving export and its client, verified as a server would load it."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import bert_rec
from bert_rec.backend import keras, tf
from bert_rec.cli import main
from bert_rec.data import Behavior
from bert_rec.export import export
from bert_rec.config import TrainConfig
from bert_rec.recommend import Recommender
from bert_rec.serving import PAD_SCORE, ServingClient, predict_request, rest_body
from bert_rec.training import train
from bert_rec.units import pad_units, user_units

sys.path.insert(0, os.path.dirname(__file__))
from test_training import _dataset  # noqa: E402

# A fresh process that imports only TensorFlow, loads the export and calls each signature.
SERVER = r'''
import json, sys
import tensorflow as tf
path, requests_file, out_file = sys.argv[1:]
model = tf.saved_model.load(path)
results = {}
for name, body in json.load(open(requests_file)).items():
    fn = model.signatures[body["signature_name"]]
    specs = fn.structured_input_signature[1]
    args = {k: tf.constant(v, dtype=specs[k].dtype) for k, v in body["inputs"].items()}
    results[name] = {k: (v.numpy().astype(str) if v.dtype == tf.string else v.numpy()).tolist()
                     for k, v in fn(**args).items()}
json.dump(results, open(out_file, "w"))
print("imported bert4keras:", "bert4keras" in sys.modules, "bert_rec:", "bert_rec" in sys.modules)
'''


@pytest.fixture(scope="module")
def trained(tiny_ckpt, tmp_path_factory):
    items, histories = _dataset()
    u = "edge"  # unknown characters, an empty comment, more behaviours than max_history
    many = [Behavior(u, items[i % 20].item_id, "view", 1e9 + i, text=t)  # 4 items unseen
            for i, t in enumerate(["", "𠀀𠀁 zzqx", "   "] + [""] * 117)]
    histories[u] = many
    out = str(tmp_path_factory.mktemp("model") / "m")
    config = TrainConfig(epochs=2, batch_size=16, extra_negatives=8, k=5)
    train(tiny_ckpt, items, {k: v for k, v in histories.items() if k != u}, out, config)
    export_dir = str(tmp_path_factory.mktemp("export"))
    version = export(out, export_dir, name="recs")
    return items, histories, out, export_dir, version


def test_keras_files_load_with_plain_tf_keras(trained):
    items, histories, out, _, _ = trained
    rec = Recommender.load(out).index_items(items)
    assert rec.config.scoring.max_history < len(histories["edge"])
    item_encoder = keras.models.load_model(os.path.join(out, "item_encoder.h5"),
                                           custom_objects=bert_rec.custom_objects, compile=False)
    user_scorer = keras.models.load_model(os.path.join(out, "user_scorer.h5"),
                                          custom_objects=bert_rec.custom_objects, compile=False)
    texts = rec.encoder.pipeline.clean_many([i.full_text() for i in items[:5]])
    seqs = [rec.encoder.tokenizer.encode(t, maxlen=rec.config.item_max_len)[0] for t in texts]
    length = max(map(len, seqs))
    token_ids = np.array([s + [0] * (length - len(s)) for s in seqs], np.int32)
    id_rows = np.array([rec.id_vocab[i.item_id] for i in items[:5]], np.int32)
    got = item_encoder.predict([token_ids, np.zeros_like(token_ids), id_rows], verbose=0)
    np.testing.assert_allclose(got, rec.catalogue.vectors[:5], atol=1e-5)
    users = ["u0", "u1", "edge"]
    table, text_rows, opinion = rec._unit_table([histories[u] for u in users])
    units = [user_units(histories[u], rec.config.scoring, rec.catalogue.rows, text_rows, opinion)
             for u in users]
    rows, weights, features = pad_units(units)
    vectors = rec.catalogue.vectors
    candidates = np.broadcast_to(vectors, (3,) + vectors.shape)
    got = user_scorer.predict([table[rows], weights, features, candidates], verbose=0)
    np.testing.assert_allclose(got, rec.score([histories[u] for u in users]), atol=1e-5)


def test_export_layout_and_core_ops_only(trained):
    _, _, _, export_dir, version = trained
    assert version == os.path.join(export_dir, "recs", "1")
    config = open(os.path.join(export_dir, "models.config"), encoding="utf-8").read()
    assert 'name: "recs"' in config and 'base_path: "/models/recs"' in config
    assert "docker run" in open(os.path.join(export_dir, "README.md"), encoding="utf-8").read()
    assert sorted(os.listdir(os.path.join(version, "assets"))) == [
        "bert_config.json", "bert_rec.json", "item_vectors.ids", "stopwords.txt", "vocab.txt"]
    from tensorflow.core.protobuf import saved_model_pb2
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(version, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    graph = proto.meta_graphs[0].graph_def
    ops = {n.op for n in graph.node} | {n.op for fn in graph.library.function
                                        for n in fn.node_def}
    assert ops and all(hasattr(tf.raw_ops, op) for op in ops), sorted(
        op for op in ops if not hasattr(tf.raw_ops, op))
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--dir", version, "--all"], capture_output=True,
                           text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-1000:]
    for signature in ("serving_default", "recommend", "user_vector", "score", "item_vector"):
        assert f"signature_def['{signature}']" in shown.stdout
    assert re.search(r"inputs\['behavior_token_ids'\] tensor_info:\s+dtype: DT_INT32",
                     shown.stdout)


def test_models_config_keeps_every_exported_model(trained, tmp_path):
    """Defect: exporting a second model rewrote models.config with only that model."""
    _, _, out, _, _ = trained
    folder = str(tmp_path / "exports")
    export(out, folder, name="first")
    export(out, folder, name="second")
    config = open(os.path.join(folder, "models.config"), encoding="utf-8").read()
    assert config.count("config {") == 2
    assert 'name: "first"' in config and 'name: "second"' in config


def test_fresh_process_serves_what_recommend_gives(trained, tmp_path):
    items, histories, out, _, version = trained
    users = sorted(histories)
    by_id = {i.item_id: i for i in items}
    client = ServingClient(version)
    hist = [histories[u] for u in users]
    rec = Recommender.load(out).index_items(items)
    candidates = np.array([[i.item_id for i in items[:4]] + ["no-such-item"]] * len(users),
                          dtype=object)
    texts = rec.encoder.pipeline.clean_many([i.full_text() for i in items[:3]])
    seqs = [rec.encoder.tokenizer.encode(t, maxlen=rec.config.item_max_len)[0] for t in texts]
    length = max(map(len, seqs))
    token_ids = np.array([s + [0] * (length - len(s)) for s in seqs], np.int32)
    requests = {
        "recommend": rest_body(client.recommend_inputs(hist, by_id, k=5)),
        "user_vector": rest_body(client.user_inputs(hist, by_id), "user_vector"),
        "score": rest_body({**client.user_inputs(hist, by_id),
                            "candidate_item_ids": candidates}, "score"),
        "item_vector": rest_body({"token_ids": token_ids,
                                  "segment_ids": np.zeros_like(token_ids)}, "item_vector"),
    }
    (tmp_path / "requests.json").write_text(json.dumps(requests))
    env = {k: v for k, v in os.environ.items() if k not in ("TF_KERAS", "TF_USE_LEGACY_KERAS")}
    result = subprocess.run([sys.executable, "-c", SERVER, version, str(tmp_path / "requests.json"),
                             str(tmp_path / "out.json")], capture_output=True, text=True,
                            env=env, timeout=600, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "imported bert4keras: False bert_rec: False" in result.stdout
    served = json.loads((tmp_path / "out.json").read_text())

    expected = rec.recommend(dict(zip(users, hist)), k=5)
    for row, want in enumerate(expected):
        valid = served["recommend"]["num_valid"][row]
        got = list(zip(served["recommend"]["item_ids"][row][:valid],
                       served["recommend"]["scores"][row][:valid]))
        assert [i for i, _ in got] == [r.item_id for r in want.items]
        np.testing.assert_allclose([s for _, s in got], [r.score for r in want.items], atol=1e-5)
    edge = users.index("edge")  # only 4 unseen items left: a padded, finite tail
    assert served["recommend"]["num_valid"][edge] == 4
    assert np.isfinite(served["recommend"]["scores"]).all()
    assert served["recommend"]["scores"][edge][4] == PAD_SCORE
    assert served["recommend"]["item_ids"][edge][4] == ""
    [(_, _, _, interest, scores)] = list(rec._user_blocks(hist))
    np.testing.assert_allclose(served["user_vector"]["interest"], interest[:, 0], atol=1e-5)
    np.testing.assert_allclose(served["user_vector"]["dislike"], interest[:, 1], atol=1e-5)
    np.testing.assert_allclose(np.array(served["score"]["scores"])[:, :4], scores[:, :4],
                               atol=1e-5)
    assert all(s[4] == PAD_SCORE for s in served["score"]["scores"])  # unknown id
    raw = rec.encoder.encode([i.full_text() for i in items[:3]], max_len=rec.config.item_max_len)
    np.testing.assert_allclose(served["item_vector"]["vector"], rec.towers.project(raw),
                               atol=1e-5)


def test_request_command_and_grpc_request(trained, tmp_path, capsys):
    items, histories, _, export_dir, version = trained
    rows = [{"item_id": i.item_id, "title": i.title, "category": i.category} for i in items]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                  for r in rows), encoding="utf-8")
    beh = [{"user_id": b.user_id, "item_id": b.item_id, "behavior": b.behavior,
            "timestamp": b.timestamp, "text": b.text} for b in histories["edge"]]
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                              for r in beh), encoding="utf-8")
    assert main(["request", "--export", export_dir, "--items", str(tmp_path / "items.jsonl"),
                 "--behaviors", str(tmp_path / "b.jsonl"), "--user", "edge", "-k", "3"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["signature_name"] == "serving_default"
    assert set(body["inputs"]) == {"behavior_token_ids", "behavior_item_ids", "behavior_weights",
                                   "behavior_features",
                                   "exclude_item_ids", "k"}
    assert body["inputs"]["k"] == 3
    weights = np.array(body["inputs"]["behavior_weights"])
    assert weights.shape[1] <= 2 * 100 and (weights > 0).sum() >= 100  # latest 100 behaviours
    client = ServingClient(export_dir)
    by_id = {i.item_id: i for i in items}
    request = predict_request(client.recommend_inputs([histories["u0"]], by_id, k=3), "recs")
    assert request.model_spec.signature_name == "serving_default"
    assert request.inputs["behavior_token_ids"].dtype == tf.int32.as_datatype_enum
    assert request.inputs["behavior_item_ids"].dtype == tf.string.as_datatype_enum
