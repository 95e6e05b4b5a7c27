"""Private data: PII scrubbing on realistic Chinese text, --hash-user-ids, quiet logs, no pickle."""

import ast
import glob
import hashlib
import hmac
import json
import os

import pytest

from bert_rec.cli import build_parser, main
from bert_rec.commands import load_inputs
from bert_rec.utils.privacy import hash_user_id, user_id_hasher
from bert_rec.text import TextPipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SALT = "不要告诉别人-2024"
# Users identified by what real logs use: a phone number, an e-mail, a national ID number.
RAW_USERS = ["13912345678", "li.na@example.cn", "110101199003074514"]
ITEMS = [{"item_id": f"v{i}", "title": t} for i, t in enumerate(
    ["红烧肉 家常菜", "篮球 比赛", "小猫 小狗", "旅行 风景", "手机 评测", "搞笑 段子", "美妆 口红"])]
SECRET_TEXT = "我的微信是 zhangsan_88，电话 13800138000"


def _write_data(tmp_path):
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ITEMS),
                     encoding="utf-8")
    rows = []
    for u, user in enumerate(RAW_USERS):
        for j in range(5):
            rows.append({"user_id": user, "item_id": f"v{(u + j) % 7}",
                         "behavior": "comment" if j == 2 else "view",
                         "timestamp": 1709287200 + 3600 * j + u,
                         **({"text": SECRET_TEXT} if j == 2 else {})})
    behaviors = tmp_path / "behaviors.jsonl"
    behaviors.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                         encoding="utf-8")
    return ["--items", str(items), "--behaviors", str(behaviors)]


# --------------------------------------------------------------------------- PII scrubbing

REALISTIC = [
    ("有需要的加我微信：wxid_abc123 或者打 138-0013-8000", ["wxid_abc123", "138-0013-8000"], ["需要"]),
    ("联系电话+86 139 1234 5678，座机 (0755)86001234", ["139 1234 5678", "86001234"], ["联系电话"]),
    ("发邮件到 wang.fang@163.com 领取优惠券", ["wang.fang@163.com"], ["领取优惠券"]),
    ("身份证号 11010519491231002X 姓名 张三", ["11010519491231002X".lower()], ["身份证号"]),
    ("退款请打到工商银行卡 6222 0202 0001 2345 678", ["6222 0202 0001 2345 678", "0001"],
     ["退款"]),
    ("QQ号：123456789 扣扣 987654321 一起开黑", ["123456789", "987654321"], ["一起开黑"]),
    ("我的微信是 zhangsan_88，私聊", ["zhangsan_88"], ["私聊"]),
    ("收货地址电话 021-64381234 联系人王先生", ["64381234"], ["联系人王先生"]),
    ("寄到北京市朝阳区建国路88号3号楼501室，谢谢", ["建国路", "88号", "501室"], ["北京市朝阳区", "谢谢"]),
    ("我住阳光小区3栋2单元501 欢迎来玩", ["3栋2单元501"], ["阳光小区", "欢迎来玩"]),
    ("地铁2号线 第3集 5号选手 10号 真好看", [], ["2号线", "第3集", "5号选手", "10号"]),
    ("iPhone 15 Pro 才 7999 元，2024年3月买的", [], ["7999", "2024", "iphone 15 pro"]),
]


@pytest.mark.parametrize("text,secrets,kept", REALISTIC)
def test_pii_scrubbing_is_on_by_default(text, secrets, kept):
    clean = TextPipeline().normalize(text)
    for secret in secrets:
        assert secret not in clean, clean
    for word in kept:
        assert word in clean, clean


# --------------------------------------------------------------------------- --hash-user-ids


def test_hash_user_id_is_hmac_sha256_prefix():
    expected = "u_" + hmac.new(SALT.encode(), "13912345678".encode(),
                               hashlib.sha256).hexdigest()[:16]
    assert hash_user_id(SALT, "13912345678") == expected
    assert hash_user_id(SALT, "13912345678") != hash_user_id("other salt", "13912345678")
    with pytest.raises(ValueError, match="non-empty"):
        user_id_hasher("")


def test_load_inputs_hashes_user_ids_for_every_command(tmp_path, capsys):
    data = _write_data(tmp_path)
    for command in (["recommend", "--model", "m"], ["train", "--model", "m", "--out", "o"],
                    ["evaluate", "--model", "m"]):
        args = build_parser().parse_args([*command, *data, "--hash-user-ids", SALT])
        _, histories = load_inputs(args)
        assert set(histories) == {hash_user_id(SALT, u) for u in RAW_USERS}
        assert all(b.user_id in histories for h in histories.values() for b in h)
    err = capsys.readouterr().err
    assert not any(user in err for user in RAW_USERS)


def test_recommend_output_is_pseudonymous_and_user_selects_by_raw_id(tiny_ckpt, tmp_path, capsys):
    data = _write_data(tmp_path)
    out = tmp_path / "recs.jsonl"
    code = main(["recommend", "--model", tiny_ckpt, *data, "--hash-user-ids", SALT, "-k", "2",
                 "--format", "json", "--output", str(out), "--user", RAW_USERS[0],
                 hash_user_id(SALT, RAW_USERS[1])])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    written = out.read_text(encoding="utf-8")
    assert [json.loads(line)["user_id"] for line in written.splitlines()] == [
        hash_user_id(SALT, RAW_USERS[0]), hash_user_id(SALT, RAW_USERS[1])]
    for raw in RAW_USERS + ["zhangsan_88", "13800138000"]:
        assert raw not in written + captured.out + captured.err
    code = main(["recommend", "--model", tiny_ckpt, *data, "--hash-user-ids", SALT,
                 "--user", "nobody"])
    err = capsys.readouterr().err
    assert code == 2 and "no behaviours for user(s) nobody" in err
    assert hash_user_id(SALT, RAW_USERS[0]) in err or hash_user_id(SALT, RAW_USERS[2]) in err
    assert not any(raw in err for raw in RAW_USERS)


def test_trained_model_and_logs_hold_no_raw_user_id(tiny_ckpt, tmp_path, capsys):
    data = _write_data(tmp_path)
    out = tmp_path / "model"
    code = main(["train", "--model", tiny_ckpt, *data, "--out", str(out), "--epochs", "1",
                 "--batch-size", "8", "--extra-negatives", "4", "-k", "3",
                 "--hash-user-ids", SALT])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    blobs = [captured.out.encode(), captured.err.encode()]
    for path in glob.glob(os.path.join(out, "**", "*"), recursive=True):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                blobs.append(f.read())
    for raw in RAW_USERS + ["zhangsan_88", "13800138000"]:
        assert not any(raw.encode() in blob for blob in blobs), raw


# --------------------------------------------------------------------------- logs


def test_error_messages_hide_personal_values_unless_verbose(tmp_path, capsys):
    data = _write_data(tmp_path)
    behaviors = tmp_path / "bad.jsonl"
    behaviors.write_text(json.dumps({"user_id": "u1", "item_id": "v0", "behavior": "comment",
                                     "timestamp": 1709287200, "text": [SECRET_TEXT]},
                                    ensure_ascii=False) + "\n" +
                         json.dumps({"user_id": ["13912345678"], "item_id": "v0",
                                     "behavior": "view", "timestamp": 1709287200}) + "\n",
                         encoding="utf-8")
    args = ["recommend", "--model", "unused", data[0], data[1], "--behaviors", str(behaviors)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "line 1, field 'text'" in err and "rerun with --verbose to show it" in err
    assert "13800138000" not in err and "zhangsan" not in err
    assert main(args + ["--verbose"]) == 2
    assert "zhangsan_88" in capsys.readouterr().err
    # skipped rows: counted without values; --verbose lists them (the second row: user_id)
    assert main(args + ["--on-error", "skip"]) == 2  # nothing left to recommend from
    err = capsys.readouterr().err
    assert "skipped 2 (2 wrong type)" in err and "13912345678" not in err
    assert main(args + ["--on-error", "skip", "--verbose"]) == 2
    err = capsys.readouterr().err
    assert "skipped: " in err and "13912345678" in err


# --------------------------------------------------------------------------- no pickle / eval


def test_no_pickle_or_eval_on_user_files():
    """Nothing in bert_rec unpickles or evaluates: no pickle/eval/exec, np.load never pickles."""
    for path in glob.glob(os.path.join(ROOT, "bert_rec", "*.py")):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in ("pickle", "dill", "joblib", "marshal",
                                                   "shelve") for n in names), path
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                assert name not in ("eval", "exec"), f"{path}:{node.lineno}"
                if name == "load" and getattr(node.func.value, "id", None) == "np":
                    keywords = {k.arg: k.value for k in node.keywords}
                    assert isinstance(keywords.get("allow_pickle"), ast.Constant) and \
                        keywords["allow_pickle"].value is False, f"{path}:{node.lineno}"
