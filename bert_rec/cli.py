"""The ``bert-rec`` command line: one parser per command; the commands are in commands.py.

Parsing imports no TensorFlow; a command imports it only when it needs a model.
"""

import argparse
import sys

from . import commands
from .commands import UsageError
from .config import (BATCHING, CONTINUE_LEARNING_RATE, FROZEN_STATES, OBJECTIVES, POOLINGS,
                     PRECISIONS, SCRATCH_LEARNING_RATE, TRUNCATIONS, PretrainConfig,
                     SentimentConfig, TrainConfig)
from .data import DEFAULT_BEHAVIORS, InputError
from .retrieval import BACKENDS as INDEX_BACKENDS
from .utils.encode_cache import ENV_VAR as CACHE_ENV_VAR
from .utils.terminal import safe


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
        print(f"bert-rec: error: {safe(e)}", file=sys.stderr)  # ids, paths: inert
        return 2
    except KeyboardInterrupt:
        print("bert-rec: interrupted", file=sys.stderr)
        return 130


def build_parser():
    parser = argparse.ArgumentParser(
        prog="bert-rec",
        description="Understand users' behaviour with a Chinese BERT and recommend items.")
    sub = parser.add_subparsers(metavar="COMMAND")
    for add in (add_recommend_parser, add_train_parser, add_evaluate_parser,
                add_train_sentiment_parser, add_sentiment_parser, add_pretrain_parser,
                add_export_parser, add_request_parser, add_init_checkpoint_parser,
                add_config_parser, add_report_parser):
        add(sub)
    return parser


def add_recommend_parser(sub):
    rec = sub.add_parser("recommend", help="top-K explained recommendations per user",
                         description="Recommend items to users from their behaviour log.")
    _add_model_arg(rec)
    _add_data_args(rec)
    rec.add_argument("--user", nargs="+", metavar="ID", help="only these users (default: all)")
    rec.add_argument("-k", type=int, default=10, help="items per user (default 10)")
    rec.add_argument("--explain", type=int, default=3,
                     help="behaviours listed per recommendation (default 3)")
    _add_output_args(rec)
    rec.add_argument("--pooling", choices=POOLINGS,
                     help="override the pooling of a checkpoint or zero-shot model (default: "
                          "the model's, or mean)")
    rec.add_argument("--index", choices=INDEX_BACKENDS, default="exact",
                     help="top-k retrieval: exact (default: every item scored, by faiss's "
                          "exact inner-product kernel; the same top-k and scores as the Keras "
                          "cosine layer) or a faiss index (faiss-hnsw/-ivf: approximate, for "
                          "large catalogues)")
    rec.add_argument("--include-seen", action="store_true",
                     help="do not exclude items the user already interacted with")
    rec.add_argument("--precision", choices=PRECISIONS, default="float32",
                     help="the text encoder's compute precision (default float32). bfloat16 "
                          "runs its matmuls in bfloat16: faster on CPUs with AVX-512 BF16 or "
                          "AMX, scores differ slightly (README 'Speed')")
    scale = rec.add_argument_group(
        "scaling out", "--engine ray runs the same recommendation on Ray Data (README 'Scaling "
                       "out'): --items/--behaviors may be folders of part files (JSONL, CSV, "
                       "Parquet), --output is a folder of part files ending with _SUCCESS")
    scale.add_argument("--engine", choices=("single", "ray"), default="single",
                       help="single (default): this process; ray: a Ray cluster")
    scale.add_argument("--ray-address", metavar="ADDR",
                       help="an existing Ray cluster (e.g. 10.0.0.1:6379); default: start Ray "
                            "embedded on this machine")
    scale.add_argument("--num-actors", type=int, default=2,
                       help="actors that encode the catalogue and score users (default 2)")
    _add_settings_args(rec)
    _add_cache_args(rec)
    rec.set_defaults(func=commands.cmd_recommend)


def _add_encoder_training_args(parser, defaults):
    """train's options for how the encoder's layers run while training."""
    parser.add_argument("--frozen-states", choices=FROZEN_STATES,
                        help=f"with --train-layers N below the depth: keep the frozen layers' "
                             f"token states of every text (computed once) in float16 or float32, "
                             f"or 'off' to run those layers at every step (default "
                             f"{defaults.frozen_states})")
    parser.add_argument("--batching", choices=BATCHING,
                        help=f"user: each batch holds whole users' examples, which share their "
                             f"history texts, so trained encoder layers run once per shared "
                             f"text (README 'Speed'); random: examples shuffled across users; "
                             f"auto: user with --train-layers above 0, else random (default "
                             f"{defaults.batching})")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help=f"the text encoder's compute precision while training (default "
                             f"{defaults.precision}). bfloat16 runs the trained and frozen "
                             f"layers' matmuls in bfloat16 with float32 weights: faster on CPUs "
                             f"with AVX-512 BF16 or AMX (README 'Speed'); the model is saved, "
                             f"tested and served in float32")


def add_train_parser(sub):
    defaults = TrainConfig()
    train = sub.add_parser(
        "train", help="fine-tune a two-tower model on a behaviour log",
        description="Fine-tune on the behaviour log: each user's last distinct item is held out "
                    "for testing, the one before it for validation (early stopping on NDCG@K).")
    _add_model_arg(train)
    _add_data_args(train)
    train.add_argument("--out", required=True, help="model directory to write")
    # Defaults are None: a flag given overrides --config/--set, one left out does not.
    train.add_argument("--epochs", type=int, help=f"(default {defaults.epochs})")
    train.add_argument("--batch-size", type=int, help=f"(default {defaults.batch_size})")
    train.add_argument("--learning-rate", type=float,
                       help=f"(default {defaults.learning_rate:g})")
    train.add_argument("--temperature", type=float, help=f"(default {defaults.temperature:g})")
    train.add_argument("--train-layers", type=int,
                       help="fine-tune the top N encoder layers (default 0: frozen encoder, "
                            "fast on CPU)")
    _add_encoder_training_args(train, defaults)
    train.add_argument("--extra-negatives", type=int,
                       help=f"random negatives per batch besides the in-batch ones (default "
                            f"{defaults.extra_negatives})")
    train.add_argument("--no-logq", action="store_true",
                       help="turn off the log-q popularity correction")
    train.add_argument("--no-id-embeddings", action="store_true",
                       help="text only: no item-id embeddings (no collaborative signal)")
    train.add_argument("--objective", choices=OBJECTIVES,
                       help=f"softmax (two-tower retrieval), click (num_classes=2 click "
                            f"classifier) or both (default {defaults.objective})")
    train.add_argument("--patience", type=int,
                       help=f"epochs without validation gain before stopping (default "
                            f"{defaults.patience})")
    train.add_argument("-k", type=int, help=f"K of validation NDCG@K (default {defaults.k})")
    train.add_argument("--seed", type=int, help=f"(default {defaults.seed})")
    train.add_argument("--resume", action="store_true",
                       help="continue an interrupted run in --out from its last epoch")
    train.add_argument("--distributed", choices=("off", "multi-worker"), default="off",
                       help="off (default): this process; multi-worker: one of several "
                            "processes started alike, each with TF_CONFIG naming the cluster "
                            "and its task (tf.distribute.MultiWorkerMirroredStrategy; same "
                            "result as one process). Only the chief (worker 0) writes --out; "
                            "--resume restores every worker from it, so on several machines "
                            "--out must be on a shared file system")
    train.add_argument("--num-workers", type=int, metavar="N",
                       help="launch N workers on Ray (Ray Train's TensorflowTrainer sets "
                            "TF_CONFIG for each; they run --distributed multi-worker), on "
                            "--ray-address or on Ray started on this machine; a lost worker "
                            "restarts the job with --resume (up to 2 times)")
    train.add_argument("--ray-address", metavar="ADDR",
                       help="with --num-workers: the Ray cluster (host:port of its head, or "
                            "'auto'); default: start Ray on this machine")
    _add_settings_args(train)
    _add_cache_args(train)
    train.set_defaults(func=commands.cmd_train)


def add_evaluate_parser(sub):
    ev = sub.add_parser(
        "evaluate", help="compare the model with classic baselines on a time split",
        description="Leave-last-out evaluation: per user the last distinct item is the target, "
                    "every catalogue item outside the history a candidate.")
    _add_model_arg(ev)
    _add_data_args(ev)
    ev.add_argument("-k", type=int, default=10)
    _add_output_args(ev)
    ev.add_argument("--plot", metavar="FILE", help="also write a bar chart PNG")
    _add_dislikes_arg(ev)
    _add_settings_args(ev)
    _add_cache_args(ev)
    ev.set_defaults(func=commands.cmd_evaluate)


def add_train_sentiment_parser(sub):
    defaults = SentimentConfig()
    p = sub.add_parser(
        "train-sentiment", help="fine-tune the 2-class sentiment head (num_classes=2)",
        description="Fine-tune a positive/negative classifier on the model's encoder (its own "
                    "copy of the top --train-layers layers) from labelled files and/or the "
                    "behaviour log's rated comments; writes a model directory holding the head "
                    "(used by recommend and train to give behaviour texts their polarity).")
    _add_model_arg(p)
    p.add_argument("--data", nargs="+", metavar="FILE",
                   help="JSON Lines (.jsonl[.gz]) with text and label (1 positive, 0 negative)")
    p.add_argument("--behaviors", help="behaviour log: a comment on an item its writer rated "
                                       ">= --positive-rating is positive, <= "
                                       "--negative-rating negative")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--train-layers", type=int, default=defaults.train_layers,
                   help=f"top encoder layers fine-tuned (default {defaults.train_layers}; "
                        f"-1: all)")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    p.add_argument("--max-len", type=int, default=defaults.max_len)
    p.add_argument("--truncation", choices=TRUNCATIONS, default=defaults.truncation,
                   help="a text over --max-len tokens keeps its start (head) or its first "
                        "quarter and its end (head_tail)")
    p.add_argument("--ngrams", action="store_true",
                   help="stack BERT on a TF-IDF word n-gram logistic regression: the two are "
                        "trained alone and blended by weights learned on the validation texts")
    p.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                   help="compute precision of the fine-tuning matmuls (default float32); "
                        "bfloat16 is faster on CPUs with AVX-512 BF16 or AMX, and the head is "
                        "saved in float32 either way")
    p.add_argument("--positive-rating", type=float, default=defaults.positive_rating)
    p.add_argument("--negative-rating", type=float, default=defaults.negative_rating)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="bad behaviour rows: stop with a message (default) or skip and count")
    p.set_defaults(func=commands.cmd_train_sentiment)


def add_sentiment_parser(sub):
    p = sub.add_parser(
        "sentiment", help="how positive texts are, with a model's sentiment head",
        description="P(positive) of each text with the sentiment head of a model directory "
                    "(bert-rec train-sentiment).")
    _add_model_arg(p)
    p.add_argument("--input", required=True, metavar="FILE",
                   help="JSON Lines with a text field (.jsonl[.gz]), or .txt: one text per line")
    _add_output_args(p)
    p.set_defaults(func=commands.cmd_sentiment)


def add_pretrain_parser(subparsers):
    """Register the ``pretrain`` command on an argparse subparsers object."""
    defaults = PretrainConfig()
    p = subparsers.add_parser(
        "pretrain", help="masked-LM (+ NSP) pretraining on your item and behaviour texts",
        description="Pretrain a BERT with whole-word masked LM (and optionally next-sentence "
                    "prediction) on the items' feature texts, the behaviour texts and plain-text "
                    "corpus files, from scratch or continuing a checkpoint that holds its MLM "
                    "head; writes a Google-format checkpoint directory plus pretraining.json.")
    p.add_argument("--items", help="item catalogue (.jsonl/.csv[.gz])")
    p.add_argument("--behaviors", help="behaviour log: its texts join the corpus, its sequences "
                                       "give the NSP pairs (needs --items)")
    p.add_argument("--corpus", nargs="+", metavar="FILE",
                   help="plain-text files (.txt/.txt.gz, UTF-8), one text per line")
    p.add_argument("--out", required=True, help="output checkpoint directory (replaced)")
    p.add_argument("--init", metavar="CKPT_DIR",
                   help="continue this checkpoint (needs cls/predictions/*); default: from "
                        "scratch with a vocabulary built from the corpus")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--max-len", type=int, default=defaults.max_len,
                   help=f"tokens per sequence (default {defaults.max_len})")
    p.add_argument("--max-position", type=int,
                   help="from scratch: size of the position table (default: --max-len)")
    p.add_argument("--max-vocab", type=int, help="from scratch: at most this many tokens")
    p.add_argument("--hidden-size", type=int, default=defaults.hidden_size,
                   help="from scratch only")
    p.add_argument("--layers", type=int, default=defaults.num_layers, help="from scratch only")
    p.add_argument("--heads", type=int, default=defaults.num_heads, help="from scratch only")
    p.add_argument("--learning-rate", type=float,
                   help=f"peak learning rate (default {SCRATCH_LEARNING_RATE:g} from scratch, "
                        f"{CONTINUE_LEARNING_RATE:g} with --init)")
    p.add_argument("--nsp", action="store_true", help="add next-sentence prediction")
    p.add_argument("--holdout", type=int, default=0, metavar="N",
                   help="keep N corpus/behaviour texts out of training and report the masked-LM "
                        "accuracy on them after every epoch")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--min-count", type=int, default=defaults.min_count,
                   help="vocabulary: drop characters/words seen fewer times (default 2)")
    p.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                   help="compute precision of the matmuls (default float32). bfloat16 keeps "
                        "float32 weights and optimizer and writes a float32 checkpoint: faster "
                        "on CPUs with AVX-512 BF16 or AMX (README 'Speed')")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="bad input rows: stop with a message (default) or skip and count")
    p.add_argument("--behavior-names", nargs="+", metavar="NAME",
                   help="extra behaviour names allowed besides the defaults")
    p.set_defaults(func=commands.cmd_pretrain)
    return p


def add_export_parser(sub):
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
    exp.set_defaults(func=commands.cmd_export)


def add_request_parser(sub):
    req = sub.add_parser(
        "request", help="print the TF Serving REST body for some users (one batched request)",
        description="Build the REST predict body (columnar inputs) for the chosen users in one "
                    "batch, with the export's own preprocessing assets; pipe it to curl -d @- "
                    "http://HOST:8501/v1/models/NAME:predict. Items in the export's catalogue "
                    "are sent as ids only; --items is needed only for items it lacks.")
    req.add_argument("--export", required=True, metavar="EXPORT_DIR",
                     help="export folder (or one <name>/<version> folder inside it)")
    _add_data_args(req, items_required=False)
    req.add_argument("--user", nargs="+", metavar="ID",
                     help="these users, rows in this order (default: every user, by id)")
    req.add_argument("-k", type=int, default=10)
    req.add_argument("--signature", default="serving_default",
                     choices=("serving_default", "recommend", "user_vector"))
    req.set_defaults(func=commands.cmd_request)


def add_init_checkpoint_parser(sub):
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
    init.set_defaults(func=commands.cmd_init_checkpoint)


def _add_dislikes_arg(p):
    p.add_argument("--dislikes", metavar="FILE",
                   help="JSON Lines of known (user_id, item_id) dislikes for the disliked-items "
                        "rate (default: the items a user rated below the scale's midpoint)")


def add_report_parser(sub):
    rep = sub.add_parser(
        "report", help="write one self-contained HTML report (data, evaluation, users)",
        description="One HTML file that opens offline: data set counts, the evaluation "
                    "against the baselines with a chart, the training curves (if any), and "
                    "per user the behaviour timeline and the top-K items with each "
                    "behaviour's share as bars; filter the users by id in the page (or open "
                    "REPORT.html#q=ID).")
    _add_model_arg(rep)
    _add_data_args(rep)
    rep.add_argument("--out", required=True, metavar="FILE", help="the HTML file to write")
    who = rep.add_mutually_exclusive_group()
    who.add_argument("--users", type=int, default=100, metavar="N",
                     help="the first N users by id (default 100)")
    who.add_argument("--user", nargs="+", metavar="ID", help="these users")
    rep.add_argument("-k", type=int, default=10, help="items per user (default 10)")
    rep.add_argument("--explain", type=int, default=5,
                     help="behaviours shown per recommendation (default 5)")
    rep.add_argument("--no-evaluation", action="store_true",
                     help="leave out the evaluation against the baselines (faster)")
    _add_dislikes_arg(rep)
    _add_settings_args(rep)
    _add_cache_args(rep)
    rep.set_defaults(func=commands.cmd_report)


def add_config_parser(sub):
    config = sub.add_parser(
        "config", help="show a model's settings",
        description="Settings without Python: see --config FILE and --set KEY=VALUE of "
                    "recommend, train, evaluate and report.")
    config.set_defaults(func=lambda _: config.print_help() or 2)
    actions = config.add_subparsers(metavar="ACTION")
    show = actions.add_parser(
        "show", help="print a model's effective settings as JSON (a valid --config file)",
        description="Print the settings a model directory was saved with (defaults for a "
                    "checkpoint): the model's text, scoring and tower settings, and under "
                    "'train' what it was trained with; with --config/--set, those applied.")
    _add_model_arg(show)
    _add_settings_args(show)
    show.set_defaults(func=commands.cmd_config_show)


def _add_settings_args(parser):
    """--config FILE and --set KEY=VALUE (see bert_rec/settings.py)."""
    group = parser.add_argument_group(
        "settings", "Layers, each overriding the one before: the model's saved settings "
                    "(defaults for a checkpoint), --config FILE, --set, the flags above. "
                    "`bert-rec config show --model DIR` prints them.")
    group.add_argument("--config", metavar="FILE",
                       help="JSON settings file: scoring (behaviour weights, half-life, rating "
                            "scale, text weight, history length), text (stopwords, user "
                            "dictionary), whitening, and a 'train' section")
    group.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                       help="one setting, e.g. scoring.half_life_days=7 or train.epochs=5 "
                            "(VALUE is JSON, else text)")


def _add_model_arg(parser):
    parser.add_argument("--model", required=True,
                        help="Google-format BERT checkpoint directory (zero-shot) or a bert_rec "
                             "model directory")


def _add_output_args(parser):
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--output", metavar="FILE",
                        help="write here (atomically) instead of stdout")


def _add_data_args(parser, items_required=True):
    parser.add_argument("--items", required=items_required,
                        help="item catalogue (.jsonl/.csv[.gz])")
    parser.add_argument("--behaviors", required=True, help="behaviour log (.jsonl/.csv[.gz])")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                        help="bad input rows: stop with a message (default) or skip and count")
    parser.add_argument("--behavior-names", nargs="+", metavar="NAME",
                        help="extra behaviour names allowed besides "
                             f"{', '.join(DEFAULT_BEHAVIORS)}")
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


if __name__ == "__main__":
    sys.exit(main())
