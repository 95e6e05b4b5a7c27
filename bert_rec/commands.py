"""What each ``bert-rec`` command does (the parsers are in cli.py).

Inputs are read and validated before any model loads; TensorFlow is imported inside the
commands that need it.
"""

import functools
import json
import os
import sys
import time

from . import settings
from .config import PretrainConfig, SentimentConfig, TrainConfig
from .data import DEFAULT_BEHAVIORS, group_by_user, read_behaviors, read_items
from .explain import format_recommendations
from .utils import atomic
from .utils.encode_cache import default_cache_dir
from .utils.privacy import user_id_hasher
from .utils.terminal import safe, safe_json

RECOMMEND_CHUNK = 2048  # users recommended (and their results held) at a time


class UsageError(ValueError):
    """A problem with the command-line arguments themselves."""


# -- shared steps -------------------------------------------------------------------------------
def cache_dir(args):
    """The encode cache directory the arguments ask for; None under --no-cache."""
    if getattr(args, "no_cache", False):
        return None
    return getattr(args, "cache_dir", None) or default_cache_dir()


def load_inputs(args, known_item_ids=()):
    """Read and validate items and behaviours; returns (items, {user: behaviours}).

    Behaviours may refer to the items file's items and ``known_item_ids`` (an export's);
    without --items, ``known_item_ids=None`` leaves their item ids unchecked here."""
    verbose = getattr(args, "verbose", False)
    salt = getattr(args, "hash_user_ids", None)
    items, reports = [], []
    if args.items:
        items, item_report = read_items(args.items, on_error=args.on_error)
        reports.append(item_report)
    names = tuple(DEFAULT_BEHAVIORS) + tuple(args.behavior_names or ())
    behaviors, behavior_report = read_behaviors(
        args.behaviors, on_error=args.on_error, behaviors=names,
        item_ids=None if known_item_ids is None and not args.items else
        {item.item_id for item in items} | set(known_item_ids or ()), verbose=verbose,
        map_user_id=user_id_hasher(salt) if salt is not None else None)
    for report in reports + [behavior_report]:
        print(safe(report.summary()), file=sys.stderr)
        for example in report.examples if verbose else ():
            print(f"  skipped: {safe(example)}", file=sys.stderr)
    return items, group_by_user(behaviors)


def requested_settings(args, flags=None):
    """The setting changes of --config FILE, --set and the command's own ``flags`` (nested,
    later layers winning), checked before any data or model is read."""
    changes = settings.merge(
        settings.load_file(args.config) if getattr(args, "config", None) else {},
        settings.parse_assignments(getattr(args, "set", None)), flags)
    settings.check(changes, "the command-line flags")
    return changes


def model_overrides(args, changes):
    """``Recommender.load`` overrides that apply ``changes`` to the model's saved settings."""
    from .model_dir import read_config  # noqa: PLC0415  (TensorFlow loads here)
    return settings.model_overrides(read_config(args.model), changes)


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


# -- commands -----------------------------------------------------------------------------------
def cmd_recommend(args):
    if args.k < 1:
        raise UsageError(f"-k must be >= 1, got {args.k}")
    changes = requested_settings(args, _recommend_flags(args))
    if args.engine == "ray":
        return _recommend_on_ray(args, changes)
    items, histories = load_inputs(args)
    histories = _only_selected(args, histories)
    from .recommend import Recommender  # noqa: PLC0415  (TensorFlow loads only here)
    started = time.time()
    _warn_if_emulated(args.precision)
    recommender = Recommender.load(args.model, cache_dir=cache_dir(args),
                                   overrides=model_overrides(args, changes),
                                   precision=args.precision)
    recommender.index_items(items).use_index(args.index)
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
                yield "".join(safe_json(r.to_dict()) + "\n" for r in results)
            else:
                yield ("\n" if start else "") + format_recommendations(results, histories, titles)

    write_output(blocks(), args.output)
    print(f"recommended for {sum(served)} user(s) from {len(items)} items in "
          f"{time.time() - started:.1f} s", file=sys.stderr)


def _recommend_on_ray(args, changes):
    """bert-rec recommend --engine ray: the same job on Ray Data (ray_engine.py)."""
    if not args.output:
        raise UsageError("--engine ray writes a folder of part files: give --output DIR")
    if args.format != "json":
        raise UsageError("--engine ray writes JSON part files: add --format json")
    if args.num_actors < 1:
        raise UsageError(f"--num-actors must be >= 1, got {args.num_actors}")
    if not args.items:
        raise UsageError("--engine ray needs --items")
    users = None
    if args.user:
        salt = args.hash_user_ids
        users = list(args.user) if salt is None else [user_id_hasher(salt)(u) for u in args.user]
    from . import ray_engine  # noqa: PLC0415  (Ray loads only here)
    ray_engine.run(args.model, args.items, args.behaviors, args.output, k=args.k,
                   explain=args.explain, index=args.index,
                   overrides=model_overrides(args, changes), precision=args.precision,
                   on_error=args.on_error, behavior_names=args.behavior_names or (),
                   hash_user_ids=args.hash_user_ids, users=users, num_actors=args.num_actors,
                   address=args.ray_address, cache_dir=cache_dir(args))


def _recommend_flags(args):
    """The settings recommend's own flags set (they override --config and --set)."""
    flags = {}
    if args.pooling:
        flags["pooling"] = args.pooling
    if args.include_seen:
        flags["scoring"] = {"exclude_seen": False}
    return flags


def _only_selected(args, histories):
    """The histories of the users --user names (all without it); unknown ones are an error."""
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
    return histories


def _warn_if_emulated(precision):
    """Warn that bfloat16 is emulated (slower than float32) on a CPU without BF16 instructions."""
    if precision == "bfloat16":
        from .encoder import cpu_has_bf16  # noqa: PLC0415
        if not cpu_has_bf16():
            print("bert-rec: warning: this CPU has no bfloat16 instructions (avx512_bf16 or "
                  "amx_bf16 in /proc/cpuinfo): --precision bfloat16 is emulated here and "
                  "slower than float32", file=sys.stderr)


def cmd_train(args):
    if args.num_workers is not None:
        from .ray_train import launch  # noqa: PLC0415  (Ray Train starts the workers)
        return launch(args)
    if args.ray_address:
        raise UsageError("--ray-address needs --num-workers N (the Ray Train workers to start)")
    changes = requested_settings(args, {"train": _train_flags(args)})
    config = settings.train_config(changes)
    cluster = None
    if args.distributed == "multi-worker":
        from . import distributed  # noqa: PLC0415  (TensorFlow loads here)
        cluster = distributed.Cluster(distributed.read_tf_config())  # before any other TF op
    items, histories = load_inputs(args)
    _warn_if_emulated(config.precision)
    from .training import CURVES_NAME, STATE_DIR, train  # noqa: PLC0415
    started = time.time()
    history, _ = train(args.model, items, histories, args.out, config, resume=args.resume,
                       cache_dir=cache_dir(args), overrides=model_overrides(args, changes),
                       cluster=cluster)
    if cluster is not None and not cluster.is_chief:
        return
    best = max(history, key=lambda h: h["val_ndcg"])
    print(f"best epoch {best['epoch']}: validation NDCG@{config.k} {best['val_ndcg']:.4f}, "
          f"HR@{config.k} {best['val_hr']:.4f}; {time.time() - started:.0f} s in all",
          file=sys.stderr)
    print(f"wrote the model to {args.out} (curves: "
          f"{os.path.join(args.out, STATE_DIR, CURVES_NAME)})", file=sys.stderr)


_TRAIN_FLAGS = ("epochs", "batch_size", "learning_rate", "temperature", "train_layers",
                "frozen_states", "batching", "precision", "extra_negatives", "objective", "patience", "k",
                "seed")


def _train_flags(args):
    """The training settings train's own flags set (flags left out are None)."""
    flags = {name: getattr(args, name) for name in _TRAIN_FLAGS
             if getattr(args, name) is not None}
    if args.no_logq:
        flags["logq_correction"] = False
    if args.no_id_embeddings:
        flags["id_embeddings"] = False
    return flags


def cmd_evaluate(args):
    changes = requested_settings(args)
    items, histories = load_inputs(args)
    from .evaluation import format_metrics, leave_last_out  # noqa: PLC0415
    cases, skipped = leave_last_out(histories)
    if not cases:
        raise UsageError(f"{args.behaviors}: no user has 2 distinct items; nothing to evaluate")
    from .comparison import evaluate_all, plot_results  # noqa: PLC0415
    truth = read_dislikes(args.dislikes, args) if args.dislikes else None
    results = evaluate_all(args.model, items, cases, k=args.k, cache_dir=cache_dir(args),
                           overrides=model_overrides(args, changes), truth=truth)
    report = {"k": args.k, "users_evaluated": len(cases), "users_skipped": skipped,
              "results": results}
    if args.format == "json":
        text = json.dumps(report, indent=2) + "\n"
    else:
        text = (f"{len(cases)} users evaluated ({skipped} skipped: fewer than 2 distinct items), "
                f"{len(items)} candidate items\n" + format_metrics(results, args.k) + "\n")
    write_output(text, args.output)
    if args.plot:
        plot_results(report, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)


def read_dislikes(path, args):
    """(user, item) pairs of a JSON Lines file of known dislikes (``user_id``, ``item_id``)."""
    from .data import InputError, iter_records  # noqa: PLC0415
    salt = getattr(args, "hash_user_ids", None)
    hasher = user_id_hasher(salt) if salt is not None else (lambda user: user)
    pairs = []
    for line, record in iter_records(path, required=("user_id", "item_id")):
        user, item = record.get("user_id"), record.get("item_id")
        if not isinstance(user, (str, int)) or not isinstance(item, (str, int)):
            raise InputError(path, line, "user_id" if not isinstance(user, (str, int))
                             else "item_id", "expected a string")
        pairs.append((hasher(str(user)), str(item)))
    return pairs


def cmd_train_sentiment(args):
    if not (args.data or args.behaviors):
        raise UsageError("train-sentiment needs labelled texts: pass --data FILE ... and/or "
                         "--behaviors FILE (rated comments)")
    config = SentimentConfig(
        train_layers=args.train_layers, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, max_len=args.max_len, truncation=args.truncation,
        ngrams=args.ngrams,
        positive_rating=args.positive_rating, negative_rating=args.negative_rating,
        seed=args.seed, precision=args.precision)
    _warn_if_emulated(config.precision)
    from .sentiment import log_labels, read_labelled, train_sentiment  # noqa: PLC0415
    texts, labels = read_labelled(args.data or ())
    sources = {"files": list(args.data or ()), "file_examples": len(texts)}
    if args.behaviors:
        behaviors, report = read_behaviors(args.behaviors, on_error=args.on_error)
        print(report.summary(), file=sys.stderr)
        log_texts, log_label = log_labels(behaviors, config.positive_rating,
                                          config.negative_rating)
        texts, labels = texts + log_texts, labels + log_label
        sources.update(behaviors=args.behaviors, log_examples=len(log_texts))
    print(f"training the sentiment head on {len(texts)} labelled texts "
          f"({sum(labels)} positive)", file=sys.stderr)
    clf = train_sentiment(args.model, texts, labels, args.out, config, sources, log=sys.stderr)
    best = clf.meta["validation"]
    print(f"best epoch {best['epoch']}: validation accuracy {best['accuracy']:.3f}, AUC "
          f"{best['auc']:.3f}; wrote {args.out}", file=sys.stderr)


def cmd_sentiment(args):
    from .sentiment import SentimentClassifier  # noqa: PLC0415
    from . import model_dir  # noqa: PLC0415
    if not SentimentClassifier.present(args.model):
        raise UsageError(f"{args.model} has no sentiment head (sentiment.npz): train one with "
                         f"bert-rec train-sentiment --model {args.model} --data FILE --out DIR")
    texts = read_texts(args.input)
    clf = SentimentClassifier.load(args.model, model_dir.read_config(args.model).text)
    positive = clf.predict(texts)
    cleaned = clf.pipeline.clean_many(texts)
    rows = [{"text": c, "positive": round(float(p), 6),
             "label": "positive" if p >= 0.5 else "negative"} for c, p in zip(cleaned, positive)]
    if args.format == "json":
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    else:
        text = "".join(f"{row['positive']:6.3f}  {row['label']:<8}  {row['text']}\n"
                       for row in rows)
    write_output(text, args.output)


def read_texts(path):
    """Texts to classify: JSON Lines with a ``text`` field, or a .txt file (one per line)."""
    name = path[:-3] if path.endswith(".gz") else path
    if name.endswith(".txt"):
        import gzip  # noqa: PLC0415
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            return [line.rstrip("\r\n") for line in f if line.strip()]
    from .data import InputError, iter_records  # noqa: PLC0415
    texts = []
    for line, record in iter_records(path, required=("text",)):
        if not isinstance(record.get("text"), str):
            raise InputError(path, line, "text", f"expected a string, found "
                                                 f"{record.get('text')!r}")
        texts.append(record["text"])
    return texts


def pretrain_config(args):
    """The PretrainConfig the ``pretrain`` arguments ask for."""
    return PretrainConfig(
        init_checkpoint=args.init, hidden_size=args.hidden_size, num_layers=args.layers,
        num_heads=args.heads, max_len=args.max_len, max_position=args.max_position,
        max_vocab=args.max_vocab, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, nsp=args.nsp, seed=args.seed,
        min_count=args.min_count, holdout_texts=args.holdout, precision=args.precision)


def cmd_pretrain(args):
    """Read the inputs and run pretraining with the parsed arguments."""
    if not (args.items or args.corpus):
        raise UsageError("pretrain needs text: pass --items FILE and/or --corpus FILE ...")
    if args.behaviors and not args.items:
        raise UsageError("--behaviors needs --items (behaviours refer to the catalogue's items)")
    config = pretrain_config(args)
    _warn_if_emulated(config.precision)
    items, behaviors = [], []
    if args.items:
        items, report = read_items(args.items, on_error=args.on_error)
        print(report.summary(), file=sys.stderr)
    if args.behaviors:
        names = tuple(DEFAULT_BEHAVIORS) + tuple(args.behavior_names or ())
        behaviors, report = read_behaviors(args.behaviors, on_error=args.on_error,
                                           behaviors=names,
                                           item_ids={item.item_id for item in items})
        print(report.summary(), file=sys.stderr)
    from .pretraining import pretrain, read_corpus  # noqa: PLC0415  (TensorFlow loads here)
    corpus = read_corpus(args.corpus or ())
    command = {k: v for k, v in vars(args).items() if k != "func" and not callable(v)}
    command["argv"] = sys.argv[1:]
    pretrain(items, behaviors, args.out, config, corpus=corpus, command=command)


def cmd_export(args):
    from .export import export  # noqa: PLC0415
    path = export(args.model, args.out, name=args.name, version=args.version)
    print(f"wrote {path} and {os.path.join(args.out, 'models.config')}", file=sys.stderr)


def cmd_request(args):
    """One REST body for the chosen users (all, by id, without --user)."""
    from .serving import ServingClient, rest_body  # noqa: PLC0415  (no TensorFlow yet)
    client = ServingClient(args.export)
    if not args.items and client.export_items is None:
        raise UsageError(f"{client.path} lists no item ids (exported by an older bert_rec): "
                         f"pass --items FILE, or export the model again")
    # without --items, an item the export lacks is reported by the client, with what to do
    items, histories = load_inputs(args, client.export_items if args.items else None)
    histories = _only_selected(args, histories) if args.user else dict(sorted(histories.items()))
    by_id = {item.item_id: item for item in items}
    chosen = list(histories.values())
    if args.signature == "user_vector":
        inputs = client.user_inputs(chosen, by_id)
    else:
        inputs = client.recommend_inputs(chosen, by_id, k=args.k)
    sys.stdout.write(safe_json(rest_body(inputs, args.signature)) + "\n")
    users = list(histories)
    print(safe(f"request for {len(users)} user(s), rows in this order: {', '.join(users[:5])}"
               f"{' ...' if len(users) > 5 else ''}"), file=sys.stderr)


def cmd_report(args):
    """Recommend for the chosen users, evaluate, and write the HTML report atomically."""
    if args.k < 1 or args.users < 1:
        raise UsageError(f"-k and --users must be >= 1, got {args.k} and {args.users}")
    changes = requested_settings(args)
    items, histories = load_inputs(args)
    chosen = (_only_selected(args, histories) if args.user else
              {u: histories[u] for u in sorted(histories)[:args.users]})
    if os.path.isdir(args.out):
        raise UsageError(f"--out {args.out} is a directory; give a file name (report.html)")
    from .recommend import Recommender  # noqa: PLC0415  (TensorFlow loads here)
    from .report import ReportData, UserView, dataset_counts, render, training_history  # noqa
    overrides = model_overrides(args, changes)
    recommender = Recommender.load(args.model, cache_dir=cache_dir(args), overrides=overrides)
    recommender.index_items(items)
    results = recommender.recommend(chosen, k=args.k, explain=args.explain)
    evaluation, note = _report_evaluation(args, items, histories, overrides)
    normalize = functools.lru_cache(maxsize=None)(recommender.encoder.pipeline.normalize)
    data = ReportData(
        users=[UserView(r.user_id, histories[r.user_id], r.items) for r in results],
        titles={item.item_id: item.title for item in items}, clean=normalize,
        counts=dataset_counts(items, histories), evaluation=evaluation,
        evaluation_note=note, training=training_history(args.model), k=args.k,
        sources=[("model", _name(args.model)), ("items", _name(args.items)),
                 ("behaviours", _name(args.behaviors))])
    write_output(render(data), args.out)


def _name(path):
    """A path's last part: reports travel, so they don't carry the folders of their inputs."""
    return os.path.basename(os.path.normpath(path))


def _report_evaluation(args, items, histories, overrides):
    """(the evaluate --format json report or None, why there is none)."""
    if args.no_evaluation:
        return None, "Left out (--no-evaluation)."
    from .evaluation import leave_last_out  # noqa: PLC0415
    cases, skipped = leave_last_out(histories)
    if not cases:
        return None, "No user has 2 distinct items: no leave-last-out evaluation is possible."
    from .comparison import evaluate_all  # noqa: PLC0415
    truth = read_dislikes(args.dislikes, args) if args.dislikes else None
    results = evaluate_all(args.model, items, cases, k=args.k, cache_dir=cache_dir(args),
                           overrides=overrides, truth=truth)
    return {"k": args.k, "users_evaluated": len(cases), "users_skipped": skipped,
            "results": results}, ""


def cmd_config_show(args):
    """Print the model's settings (+ --config/--set) as JSON: a valid --config file."""
    changes = requested_settings(args)
    from .model_dir import read_config  # noqa: PLC0415  (TensorFlow loads here)
    from .training import STATE_DIR  # noqa: PLC0415
    base = read_config(args.model)
    model_config = base.replace(**settings.model_overrides(base, changes))
    saved = os.path.join(args.model, STATE_DIR, "config.json")
    trained = None
    if os.path.isfile(saved):
        with open(saved, encoding="utf-8") as f:
            trained = settings.apply(TrainConfig(), json.load(f), saved)
    train = settings.train_config(changes, base=trained) if trained or changes.get(
        settings.TRAIN_SECTION) else None
    sys.stdout.write(settings.show(model_config, train))


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
