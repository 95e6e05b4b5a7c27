"""The ``bert-rec`` command line. TensorFlow is imported only by commands that need it."""

import argparse
import datetime
import json
import os
import sys
import tempfile
import time

from .data import DEFAULT_BEHAVIORS, InputError, group_by_user, read_behaviors, read_items
from .training_config import (CONTINUE_LEARNING_RATE, OBJECTIVES, SCRATCH_LEARNING_RATE,
                              TrainConfig)

TRAIN_DEFAULTS = TrainConfig()


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
    except (InputError, UsageError, ValueError, FileNotFoundError) as e:
        # CheckpointError and config errors are ValueErrors with a what-to-do message.
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
    rec.add_argument("--include-seen", action="store_true",
                     help="do not exclude items the user already interacted with")
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
    ev.set_defaults(func=cmd_evaluate)

    add_pretrain_parser(sub)

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


def load_inputs(args):
    """Read and validate items and behaviours; returns (items, {user: behaviours})."""
    items, item_report = read_items(args.items, on_error=args.on_error)
    names = tuple(DEFAULT_BEHAVIORS) + tuple(args.behavior_names or ())
    behaviors, behavior_report = read_behaviors(
        args.behaviors, on_error=args.on_error, behaviors=names,
        item_ids={item.item_id for item in items})
    for report in (item_report, behavior_report):
        print(report.summary(), file=sys.stderr)
    return items, group_by_user(behaviors)


def cmd_recommend(args):
    if args.k < 1:
        raise UsageError(f"-k must be >= 1, got {args.k}")
    items, histories = load_inputs(args)
    if args.user:
        unknown = [u for u in args.user if u not in histories]
        if unknown:
            some = ", ".join(sorted(histories)[:5])
            raise UsageError(f"no behaviours for user(s) {', '.join(unknown)} in "
                             f"{args.behaviors}; users there include {some}")
        histories = {u: histories[u] for u in args.user}
    if not histories:
        raise UsageError(f"{args.behaviors}: no behaviours to recommend from")

    from .recommend import Recommender  # noqa: PLC0415  (TensorFlow loads only here)
    started = time.time()
    recommender = Recommender.load(args.model, pooling=args.pooling)
    if args.include_seen:
        recommender.config.scoring.exclude_seen = False
    recommender.index_items(items)
    results = recommender.recommend(histories, k=args.k, explain=args.explain)
    print(f"recommended for {len(results)} user(s) from {len(items)} items in "
          f"{time.time() - started:.1f} s", file=sys.stderr)

    titles = {item.item_id: item.title for item in items}
    if args.format == "json":
        text = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in results)
    else:
        text = format_table(results, histories, titles)
    write_output(text, args.output)


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
    """Print to stdout, or write ``path`` via a temporary file and an atomic rename."""
    if not path:
        sys.stdout.write(text)
        return
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
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
    history, _ = train(args.model, items, histories, args.out, config, resume=args.resume)
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
    results = evaluate_all(args.model, items, cases, k=args.k)
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
