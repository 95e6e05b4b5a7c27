"""The TF Serving request client (bert_rec.serving) on an export's assets, without a server."""

import json
import os
import shutil

import numpy as np
import pytest

from bert_rec.config import ModelConfig, ScoringConfig
from bert_rec.data import Behavior, Item
from bert_rec.serving import ServingClient, latest_version, rest_body, version_dir
from bert_rec.units import user_units

ITEMS = [Item("a", "红烧肉 家常菜"), Item("b", "篮球 比赛 精彩"), Item("c", "小猫 萌宠")]


@pytest.fixture()
def export_dir(tmp_path, tiny_ckpt):
    """An export folder holding two versions; the newest has the assets a client reads."""
    for version in ("1", "7"):
        assets = tmp_path / "recs" / version / "assets"
        assets.mkdir(parents=True)
        (tmp_path / "recs" / version / "saved_model.pb").write_bytes(b"")
    config = ModelConfig(text_max_len=8, scoring=ScoringConfig(max_history=3))
    config.save(str(assets / "bert_rec.json"))
    for name in ("vocab.txt", "bert_config.json"):
        shutil.copyfile(os.path.join(tiny_ckpt, name), assets / name)
    (assets / "stopwords.txt").write_text("的\n", encoding="utf-8")
    return tmp_path


def _b(item, day, text="", behavior="view"):
    return Behavior("u", item, behavior, day * 86400.0, text=text)


def test_version_folders(export_dir):
    assert latest_version(str(export_dir)) == os.path.join(str(export_dir), "recs", "7")
    assert version_dir(os.path.join(str(export_dir), "recs", "1")).endswith("recs/1")
    (export_dir / "other").mkdir()
    with pytest.raises(ValueError, match="expected one model folder, found other, recs"):
        latest_version(str(export_dir))
    with pytest.raises(ValueError, match="no numbered SavedModel version"):
        latest_version(str(export_dir), "other")


def test_inputs_are_the_recommenders_units(export_dir):
    client = ServingClient(str(export_dir / "recs"))
    by_id = {item.item_id: item for item in ITEMS}
    history = [_b("a", 0), _b("b", 1, "篮球 太 精彩 了", "comment"), _b("c", 2, "   "),
               _b("a", 3)]
    inputs = client.recommend_inputs([history], by_id, k=2)
    assert inputs["k"] == 2
    assert inputs["exclude_item_ids"].tolist() == [["a", "b", "c"]]
    weights, ids = inputs["behavior_weights"], inputs["behavior_item_ids"]
    # max_history 3: the first view is dropped; the comment adds a text unit (item id "")
    want = user_units(history, client.config.scoring, {"a": 0, "b": 1, "c": 2},
                      {"篮球 太 精彩 了": 3})
    np.testing.assert_allclose(weights[0, :len(want.weights)], want.weights)
    assert ids[0].tolist() == ["b", "", "c", "a"]
    tokens = inputs["behavior_token_ids"]
    assert tokens.shape[:2] == (1, 4) and tokens.dtype == np.int32
    text = client.encode([client.pipeline.clean("篮球 太 精彩 了")], 8)[0]
    assert tokens[0, 1, :len(text)].tolist() == text and len(text) <= 8
    body = rest_body(inputs)
    assert body["signature_name"] == "serving_default"
    assert json.loads(json.dumps(body, ensure_ascii=False)) == body  # plain JSON


def test_unknown_items_need_the_catalogue(export_dir):
    client = ServingClient(str(export_dir))
    with pytest.raises(ValueError, match="item\\(s\\) ghost .*not in the items file"):
        client.user_inputs([[_b("ghost", 0)]], {item.item_id: item for item in ITEMS})
