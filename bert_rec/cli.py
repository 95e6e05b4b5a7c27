"""The ``bert-rec`` command line. TensorFlow is imported only by commands that need it."""

import argparse
import datetime
import json
import os
import sys
import time

from . import atomic
from .data import DEFAULT_BEHAVIORS, InputError, group_by_user, read_behaviors, read_items
from .encode_cache import ENV_VAR as CACHE_ENV_VAR
from .encode_cache import default_cache_dir
from .index import BACKENDS as INDEX_BACKENDS
from .privacy import user_id_hasher
from .training_config import (CONTINUE_LEARNING_RATE, OBJECTIVES, SCRATCH_LEARNING_RATE,
                              TrainConfig)

TRAIN_DEFAULTS = TrainConfig()
RECOMMEND_CHUNK = 2048  # users recommended (and their results held) at a time


class UsageError(ValueError):
    """A problem with the command-line arguments themselves."""


def main(argv=None):
    """Entry point of ``bert-rec``; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except (InputError, UsageError, ValueError, OSError) as e:
        # CheckpointError and config errors are ValueErrors with a what-to-do message;
        # OSError: a file that can't be read or written (missing, permissions, disk full).
        print(f"bert-rec: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bert-rec: interrupted", file=sys.stderr)
        return 130


def build_parser():
    parser = argparse.ArgumentParser(
        prog="bert-rec",
        description="Understand users' behaviour with a Chinese BERT and recommend items.")
    sub = parser.add_subparsers(metavar="COMMAND")

    rec = sub.add_parser("recommend", help="top-K explained recommendations per user",
                         description="Recommend items to users from their behaviour log.")
    rec.add_argument("--model", required=True,
                     help="Google-format BERT checkpoint directory (zero-shot) or a bert_rec "
                          "model directory")
    _add_data_args(rec)
    rec.add_argument("--user", nargs="+", metavar="ID", help="only these users (default: all)")
    rec.add_argument("-k", type=int, default=10, help="items per user (default 10)")
    rec.add_argument("--explain", type=int, default=3,
                     help="behaviours listed per recommendation (default 3)")
    rec.add_argument("--format", choices=("table", "json"), default="table")
    rec.add_argument("--output", metavar="FILE", help="write here (atomically) instead of stdout")
    rec.add_argument("--pooling", choices=("mean", "cls", "pooler"),
                     help="override the model's pooling (default: the model's, or mean)")
    rec.add_argument("--index", choices=INDEX_BACKENDS,
                     default="exact",
                     help="top-k retrieval: exact (default: every item scored by the cosine "
                          "layer) or a faiss index (faiss-hnsw/-ivf: approximate, for large "
                          "catalogues)")
    rec.add_argument("--include-seen", action="store_true",
                     help="do not exclude items the user already interacted with")
    _add_cache_args(rec)
    rec.set_defaults(func=cmd_recommend)

    train = sub.add_parser(
        "train", help="fine-tune a two-tower model on a behaviour log",
        description="Fine-tune on the behaviour log: each user's last distinct item is held out "
                    "for testing, the one before it for validation (early stopping on NDCG@K).")
    train.add_argument("--model", required=True,
                       help="Google-format checkpoint directory or bert_rec model directory")
    _add_data_args(train)
    train.add_argument("--out", required=True, help="model directory to write")
    train.add_argument("--epochs", type=int, default=TRAIN_DEFAULTS.epochs)
    train.add_argument("--batch-size", type=int, default=TRAIN_DEFAULTS.batch_size)
    train.add_argument("--learning-rate", type=float, default=TRAIN_DEFAULTS.learning_rate)
    train.add_argument("--temperature", type=float, default=TRAIN_DEFAULTS.temperature)
    train.add_argument("--train-layers", type=int, default=TRAIN_DEFAULTS.train_layers,
                       help="fine-tune the top N encoder layers (default 0: frozen encoder, "
                            "fast on CPU)")
    train.add_argument("--extra-negatives", type=int, default=TRAIN_DEFAULTS.extra_negatives,
                       help="random negatives per batch besides the in-batch ones")
    train.add_argument("--no-logq", action="store_true",
                       help="turn off the log-q popularity correction")
    train.add_argument("--no-id-embeddings", action="store_true",
                       help="text only: no item-id embeddings (no collaborative signal)")
    train.add_argument("--objective", choices=OBJECTIVES, default=TRAIN_DEFAULTS.objective,
                       help="softmax (two-tower retrieval), click (num_classes=2 click "
                            "classifier) or both")
    train.add_argument("--patience", type=int, default=TRAIN_DEFAULTS.patience,
                       help="epochs without validation gain before stopping")
    train.add_argument("-k", type=int, default=TRAIN_DEFAULTS.k, help="K of validation NDCG@K")
    train.add_argument("--seed", type=int, default=TRAIN_DEFAULTS.seed)
    train.add_argument("--resume", action="store_true",
                       help="continue an interrupted run in --out from its last epoch")
    _add_cache_args(train)
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser(
        "evaluate", help="compare the model with classic baselines on a time split",
        description="Leave-last-out evaluation: per user the last distinct item is the target, "
                    "every catalogue item outside the history a candidate.")
    ev.add_argument("--model", required=True,
                    help="bert_rec model directory or Google-format checkpoint directory")
    _add_data_args(ev)
    ev.add_argument("-k", type=int, default=10)
    ev.add_argument("--format", choices=("table", "json"), default="table")
    ev.add_argument("--output", metavar="FILE", help="write here (atomically) instead of stdout")
    ev.add_argument("--plot", metavar="FILE", help="also write a bar chart PNG")
    _add_cache_args(ev)
    ev.set_defaults(func=cmd_evaluate)

    add_pretrain_parser(sub)

    exp = sub.add_parser(
        "export", help="write a TF Serving SavedModel (+ models.config) from a model directory",
        description="Export a bert_rec model directory as EXPORT_DIR/<name>/<version>/ "
                    "(SavedModel with explicit signatures, core TF ops only) plus models.config "
                    "and a README with the docker command.")
    exp.add_argument("--model", required=True, help="bert_rec model directory (bert-rec train)")
    exp.add_argument("--out", required=True, metavar="EXPORT_DIR")
    exp.add_argument("--name", default="bert_rec", help="model name in the server (default "
                                                         "bert_rec)")
    exp.add_argument("--version", type=int, help="version number (default: next free)")
    exp.set_defaults(func=cmd_export)

    req = sub.add_parser(
        "request", help="print the TF Serving REST body for a user",
        description="Build the REST predict body (columnar inputs) for one user with the "
                    "export's own preprocessing assets; pipe it to curl -d @- "
                    "http://HOST:8501/v1/models/NAME:predict")
    req.add_argument("--export", required=True, metavar="EXPORT_DIR",
                     help="export folder (or one <name>/<version> folder inside it)")
    _add_data_args(req)
    req.add_argument("--user", required=True, metavar="ID")
    req.add_argument("-k", type=int, default=10)
    req.add_argument("--signature", default="serving_default",
                     choices=("serving_default", "recommend", "user_vector"))
    req.set_defaults(func=cmd_request)

    init = sub.add_parser(
        "init-checkpoint",
        help="write a small randomly initialised Google-format BERT checkpoint",
        description="Write a randomly initialised (NOT pretrained) Google-format BERT checkpoint "
                    "whose character vocabulary comes from your item and behaviour texts. For "
                    "tests, demos and pretraining from scratch.")
    init.add_argument("--items", required=True)
    init.add_argument("--behaviors", help="behaviour log whose texts join the vocabulary")
    init.add_argument("--out", required=True, help="output checkpoint directory")
    init.add_argument("--hidden-size", type=int, default=128)
    init.add_argument("--layers", type=int, default=2)
    init.add_argument("--heads", type=int, default=2)
    init.add_argument("--max-position", type=int, default=128)
    init.add_argument("--min-count", type=int, default=2,
                      help="drop characters seen fewer times (default 2)")
    init.add_argument("--seed", type=int, default=0)
    init.set_defaults(func=cmd_init_checkpoint)
    return parser


def add_pretrain_parser(subparsers):
    """Register the ``pretrain`` command on an argparse subparsers object."""
    p = subparsers.add_parser(
        "pretrain", help="masked-LM (+ NSP) pretraining on your item and behaviour texts",
        description="Pretrain a BERT with whole-word masked LM (and optionally next-sentence "
                    "prediction) on the items' feature texts and the behaviour texts, from "
                    "scratch or continuing a checkpoint that holds its MLM head; writes a "
                    "Google-format checkpoint directory plus pretraining.json.")
    p.add_argument("--items", required=True, help="item catalogue (.jsonl/.csv[.gz])")
    p.add_argument("--behaviors", help="behaviour log: its texts join the corpus, its sequences "
                                       "give the NSP pairs")
    p.add_argument("--out", required=True, help="output checkpoint directory (replaced)")
    p.add_argument("--init", metavar="CKPT_DIR",
                   help="continue this checkpoint (needs cls/predictions/*); default: from "
                        "scratch with a vocabulary built from the corpus")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=64, help="tokens per sequence (default 64)")
    p.add_argument("--hidden-size", type=int, default=128, help="from scratch only")
    p.add_argument("--layers", type=int, default=2, help="from scratch only")
    p.add_argument("--heads", type=int, default=2, help="from scratch only")
    p.add_argument("--learning-rate", type=float,
                   help=f"peak learning rate (default {SCRATCH_LEARNING_RATE:g} from scratch, "
                        f"{CONTINUE_LEARNING_RATE:g} with --init)")
    p.add_argument("--nsp", action="store_true", help="add next-sentence prediction")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-count", type=int, default=2,
                   help="vocabulary: drop characters/words seen fewer times (default 2)")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="bad input rows: stop with a message (default) or skip and count")
    p.add_argument("--behavior-names", nargs="+", metavar="NAME",
                   help="extra behaviour names allowed besides the defaults")
    p.set_defaults(func=_cmd_pretrain)
    return p


def _cmd_pretrain(args):
    from .pretraining import cmd_pretrain  # noqa: PLC0415  (TensorFlow loads only here)
    return cmd_pretrain(args)


def _add_data_args(parser):
    parser.add_argument("--items", required=True, help="item catalogue (.jsonl/.csv[.gz])")
    parser.add_argument("--behaviors", required=True, help="behaviour log (.jsonl/.csv[.gz])")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                        help="bad input rows: stop with a message (default) or skip and count")
    parser.add_argument("--behavior-names", nargs="+", metavar="NAME",
                        help=f"extra behaviour names allowed besides {', '.join(DEFAULT_BEHAVIORS)}")
    parser.add_argument("--hash-user-ids", metavar="SALT",
                        help="pseudonymise user ids in everything written and printed: "
                             "'u_' + 16 hex digits of HMAC-SHA256(SALT, id); --user takes raw ids")
    parser.add_argument("--verbose", action="store_true",
                        help="show bad values of personal fields (user_id, text) in error "
                             "messages and list the first skipped rows")


def _add_cache_args(parser):
    """--cache-dir / --no-cache, for the commands that encode texts with the BERT."""
    group = parser.add_argument_group(
        "encode cache", "Text vectors are kept between runs, keyed by the text and a fingerprint "
                        "of the model files, so unchanged texts are not encoded again. The cache "
                        "directory is safe to delete at any time.")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--cache-dir", metavar="DIR",
                        help=f"the cache directory (default: ${CACHE_ENV_VAR}, else "
                             f"~/.cache/bert_rec/encodings)")
    choice.add_argument("--no-cache", action="store_true",
                        help="neither read nor write the encode cache")


def cache_dir(args):
    """The encode cache directory the arguments ask for; None under --no-cache."""
    if getattr(args, "no_cache", False):
        return None
    return getattr(args, "cache_dir", None) or default_cache_dir()


def load_inputs(args):
    """Read and validate items and behaviours; returns (items, {user: behaviours})."""
    verbose = getattr(args, "verbose", False)
    salt = getattr(args, "hash_user_ids", None)
    items, item_report = read_items(args.items, on_error=args.on_error)
    names = tuple(DEFAULT_BEHAVIORS) + tuple(args.behavior_names or ())
    behaviors, behavior_report = read_behaviors(
        args.behaviors, on_error=args.on_error, behaviors=names,
        item_ids={item.item_id for item in items}, verbose=verbose,
        map_user_id=user_id_hasher(salt) if salt is not None else None)
    for report in (item_report, behavior_report):
        print(report.summary(), file=sys.stderr)
        for example in report.examples if verbose else ():
            print(f"  skipped: {example}", file=sys.stderr)
    return items, group_by_user(behaviors)


def selected_users(args, histories):
    """The user ids --user names, as keys of ``histories`` (hashed under --hash-user-ids).

    A pseudonym already in ``histories`` is taken as it is, so the owner of the salt may pass
    either form.
    """
    salt = getattr(args, "hash_user_ids", None)
    if salt is None:
        return list(args.user)
    hasher = user_id_hasher(salt)
    return [user if user in histories else hasher(user) for user in args.user]


def cmd_recommend(args):
    if args.k < 1:
        raise UsageError(f"-k must be >= 1, got {args.k}")
    items, histories = load_inputs(args)
    if args.user:
        wanted = selected_users(args, histories)
        unknown = [u for u, key in zip(args.user, wanted) if key not in histories]
        if unknown:
            some = ", ".join(sorted(histories)[:5])
            raise UsageError(f"no behaviours for user(s) {', '.join(unknown)} in "
                             f"{args.behaviors}; users there include {some}")
        histories = {u: histories[u] for u in wanted}
    if not histories:
        raise UsageError(f"{args.behaviors}: no behaviours to recommend from")

    from .recommend import Recommender  # noqa: PLC0415  (TensorFlow loads only here)
    started = time.time()
    recommender = Recommender.load(args.model, pooling=args.pooling, cache_dir=cache_dir(args))
    if args.include_seen:
        recommender.config.scoring.exclude_seen = False
    recommender.index_items(items)
    if args.index != "exact":
        recommender.use_index(args.index)
    titles = {item.item_id: item.title for item in items}
    served = []

    def blocks():
        """The output, RECOMMEND_CHUNK users at a time: memory is bounded for any user count."""
        users = list(histories)
        for start in range(0, len(users), RECOMMEND_CHUNK):
            chunk = {u: histories[u] for u in users[start:start + RECOMMEND_CHUNK]}
            results = recommender.recommend(chunk, k=args.k, explain=args.explain)
            served.append(len(results))
            if args.format == "json":
                yield "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in results)
            else:
                yield ("\n" if start else "") + format_table(results, histories, titles)

    write_output(blocks(), args.output)
    print(f"recommended for {sum(served)} user(s) from {len(items)} items in "
          f"{time.time() - started:.1f} s", file=sys.stderr)


def format_table(results, histories, titles):
    """Readable per-user blocks: rank, score, item, title, and the behaviours behind it."""
    verbs = {"view": "viewed", "click": "clicked", "rate": "rated", "comment": "commented on"}
    lines = []
    for result in results:
        history = histories[result.user_id]
        latest = datetime.datetime.fromtimestamp(history[-1].timestamp, datetime.timezone.utc)
        lines.append(f"user {result.user_id}: {len(history)} behaviours, latest "
                     f"{latest:%Y-%m-%d %H:%M} UTC")
        for rank, rec in enumerate(result.items, 1):
            lines.append(f"  {rank:>2}. {rec.score:6.3f}  {rec.item_id:<10} {_short(rec.title, 30)}")
            for why in rec.because:
                said = f" \"{_short(why.text, 24)}\"" if why.text else ""
                verb = verbs.get(why.behavior, why.behavior)
                lines.append(f"          {why.share:6.1%}  {verb} {why.item_id} "
                             f"{_short(titles.get(why.item_id, ''), 20)}{said}")
        lines.append("")
    return "\n".join(lines)


def _short(text, width):
    """Single-line text cut to ``width`` characters with an ellipsis."""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 1] + "…"


def write_output(text, path):
    """Print to stdout, or write ``path`` via a temporary file and an atomic rename.

    ``text`` is a string or an iterable of strings (written as they come).
    """
    if not path:
        for piece in [text] if isinstance(text, str) else text:
            sys.stdout.write(piece)
        return
    if os.path.isdir(path):
        raise UsageError(f"--output {path} is a directory; give a file name")
    atomic.write_text(path, text)
    print(f"wrote {path}", file=sys.stderr)


def cmd_train(args):
    items, histories = load_inputs(args)
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        temperature=args.temperature, train_layers=args.train_layers,
        extra_negatives=args.extra_negatives, logq_correction=not args.no_logq,
        id_embeddings=not args.no_id_embeddings, objective=args.objective,
        patience=args.patience, k=args.k, seed=args.seed)
    from .training import CURVES_NAME, STATE_DIR, train  # noqa: PLC0415
    started = time.time()
    history, _ = train(args.model, items, histories, args.out, config, resume=args.resume,
                       cache_dir=cache_dir(args))
    best = max(history, key=lambda h: h["val_ndcg"])
    print(f"best epoch {best['epoch']}: validation NDCG@{args.k} {best['val_ndcg']:.4f}, "
          f"HR@{args.k} {best['val_hr']:.4f}; {time.time() - started:.0f} s in all", file=sys.stderr)
    print(f"wrote the model to {args.out} (curves: "
          f"{os.path.join(args.out, STATE_DIR, CURVES_NAME)})", file=sys.stderr)


def cmd_evaluate(args):
    items, histories = load_inputs(args)
    from .evaluation import format_table, leave_last_out  # noqa: PLC0415
    cases, skipped = leave_last_out(histories)
    if not cases:
        raise UsageError(f"{args.behaviors}: no user has 2 distinct items; nothing to evaluate")
    from .comparison import evaluate_all, plot_results  # noqa: PLC0415
    results = evaluate_all(args.model, items, cases, k=args.k, cache_dir=cache_dir(args))
    report = {"k": args.k, "users_evaluated": len(cases), "users_skipped": skipped,
              "results": results}
    if args.format == "json":
        text = json.dumps(report, indent=2) + "\n"
    else:
        text = (f"{len(cases)} users evaluated ({skipped} skipped: fewer than 2 distinct items), "
                f"{len(items)} candidate items\n" + format_table(results, args.k) + "\n")
    write_output(text, args.output)
    if args.plot:
        plot_results(report, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)


def cmd_export(args):
    from .export import export  # noqa: PLC0415
    path = export(args.model, args.out, name=args.name, version=args.version)
    print(f"wrote {path} and {os.path.join(args.out, 'models.config')}", file=sys.stderr)


def cmd_request(args):
    items, histories = load_inputs(args)
    user = selected_users(argparse.Namespace(**{**vars(args), "user": [args.user]}),
                          histories)[0]
    if user not in histories:
        raise UsageError(f"no behaviours for user {args.user} in {args.behaviors}")
    from .serving import ServingClient, rest_body  # noqa: PLC0415
    client = ServingClient(args.export)
    by_id = {item.item_id: item for item in items}
    history = [histories[user]]
    if args.signature == "user_vector":
        inputs = client.user_inputs(history, by_id)
    else:
        inputs = client.recommend_inputs(history, by_id, k=args.k)
    sys.stdout.write(json.dumps(rest_body(inputs, args.signature), ensure_ascii=False) + "\n")


def cmd_init_checkpoint(args):
    items, _ = read_items(args.items)
    texts = [item.full_text() for item in items]
    if args.behaviors:
        behaviors, _ = read_behaviors(args.behaviors, on_error="skip")
        texts += [b.text for b in behaviors if b.text]
    from .checkpoint import create_random_checkpoint  # noqa: PLC0415
    from .text import TextPipeline  # noqa: PLC0415
    from .tokenization import build_char_vocab  # noqa: PLC0415
    pipeline = TextPipeline()
    vocab = build_char_vocab((pipeline.normalize(t) for t in texts), min_count=args.min_count)
    out = create_random_checkpoint(
        args.out, vocab, seed=args.seed, hidden_size=args.hidden_size,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        max_position_embeddings=args.max_position)
    print(f"wrote a randomly initialised checkpoint ({len(vocab)} tokens, {args.layers} layers, "
          f"hidden {args.hidden_size}) to {out}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
