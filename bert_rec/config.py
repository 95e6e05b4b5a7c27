"""Configuration dataclasses, saved as JSON beside every model (``bert_rec.json``).

``ModelConfig`` (with ``TextConfig`` and ``ScoringConfig``) describes a model; ``TrainConfig``
and ``PretrainConfig`` the two training commands. No TensorFlow here: the CLI reads and
validates configs before paying for a TF import.
"""

import dataclasses
import json
import math

from .text import TextConfig

MODEL_CONFIG_NAME = "bert_rec.json"
FORMAT_VERSION = 1
WHITENINGS = ("none", "center", "whiten")
POOLINGS = ("mean", "cls", "pooler")  # how a text's token states become one vector
TRUNCATIONS = ("head", "head_tail")  # how a text longer than max_len is cut (tokenization.py)
FROZEN_STATES = ("float16", "float32", "off")  # TrainConfig.frozen_states
BATCHING = ("auto", "user", "random")  # TrainConfig.batching
# The text encoder's compute precision at inference and in training (encoder.py): float32, or
# Keras's mixed_bfloat16 policy (bfloat16 matmuls; worth it on CPUs with AVX-512 BF16 or AMX).
PRECISIONS = ("float32", "bfloat16")
# Weight of each behaviour type in the user's interest (and in the baselines' profiles).
DEFAULT_BEHAVIOR_WEIGHTS = {"view": 1.0, "click": 2.0, "rate": 3.0, "comment": 3.0}


def _from_dict(cls, data, where):
    """Build dataclass ``cls`` from a dict, rejecting keys it doesn't know."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys are "
                         f"{', '.join(sorted(names))}")
    return cls(**data)


POLARITIES = ("signed", "off")


def _check_choice(config, name, choices):
    """ValueError unless ``config.<name>`` is one of ``choices`` (the settings' enumerations)."""
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ScoringConfig:
    """How a user's behaviours are weighted into the interest (and dislike) vectors.

    weight = behavior_weights[behavior] * rating factor * recency factor, where the rating
    factor is ``rating / rating_max`` for behaviours with a rating (1 otherwise) and the recency
    factor is ``0.5 ** (age_days / half_life_days)``, age measured from the user's latest
    behaviour (``half_life_days <= 0`` turns recency off). A behaviour with text adds a second
    vector, its text's, with ``text_weight`` times that weight. Only the latest ``max_history``
    behaviours are pooled; every seen item is still excluded when ``exclude_seen``.

    Polarity (``polarity="signed"``, the default; ``"off"`` weighs every behaviour as interest):
    a rating says ``(rating - midpoint) / (rating_max - midpoint)`` (midpoint: ``rating_midpoint``,
    default half of ``rating_max``), a text the sentiment head's ``2 P(positive) - 1``. An item
    whose mean stated opinion is below ``-neutral_margin`` is disliked: every behaviour on it
    weighs ``-type * recency * |opinion|`` and goes into the dislike vector, whose similarity is
    subtracted with ``dislike_weight`` (units.py, layers.InterestScore).
    """
    behavior_weights: dict = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_BEHAVIOR_WEIGHTS))
    default_behavior_weight: float = 1.0
    rating_max: float = 5.0
    half_life_days: float = 14.0
    text_weight: float = 1.0
    max_history: int = 100
    exclude_seen: bool = True
    polarity: str = "signed"
    rating_midpoint: float | None = None
    neutral_margin: float = 0.1
    dislike_weight: float = 0.5

    def __post_init__(self):
        _check_choice(self, "polarity", POLARITIES)
        if self.dislike_weight < 0 or self.neutral_margin < 0:
            raise ValueError("dislike_weight and neutral_margin must be >= 0")
        for name, weight in self.behavior_weights.items():
            if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
                raise ValueError(f"behavior_weights[{name!r}] = {weight!r}: weights must be "
                                 f"finite numbers >= 0")
        if self.rating_max <= 0:
            raise ValueError(f"rating_max must be > 0, got {self.rating_max}")
        if self.rating_midpoint is not None and not 0 <= self.rating_midpoint < self.rating_max:
            raise ValueError(f"rating_midpoint must be in [0, rating_max), got "
                             f"{self.rating_midpoint}")
        if self.max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {self.max_history}")
        # Behaviour names match ignoring case, as the readers match them.
        object.__setattr__(self, "_folded", {name.casefold(): float(weight)
                                             for name, weight in self.behavior_weights.items()})

    @property
    def midpoint(self):
        """The rating that says neither like nor dislike."""
        return self.rating_max / 2 if self.rating_midpoint is None else self.rating_midpoint

    def behavior_weight(self, behavior):
        """The configured weight of a behaviour name, ignoring case
        (``default_behavior_weight`` if unlisted)."""
        return self._folded.get(behavior.casefold(), float(self.default_behavior_weight))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a bert_rec model besides its weights and vocab.

    ``whitening`` post-processes every vector before cosine scoring (BERT-whitening, Su et al.
    2021): raw BERT vectors share a large common direction, so all cosines come out near 1.
    ``center`` subtracts the catalogue's mean item vector; ``whiten`` also decorrelates and
    rescales the dimensions (keeping the top ``whitening_dim`` if set), fitted on the items.
    """
    pooling: str = "mean"
    item_max_len: int = 64
    text_max_len: int = 48
    batch_size: int = 64
    whitening: str = "whiten"
    whitening_dim: int | None = None
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    scoring: ScoringConfig = dataclasses.field(default_factory=ScoringConfig)
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        _check_choice(self, "pooling", POOLINGS)
        _check_choice(self, "whitening", WHITENINGS)
        for name in ("item_max_len", "text_max_len"):
            if getattr(self, name) < 3:
                raise ValueError(f"{name} must be >= 3 ([CLS] + a token + [SEP])")

    def to_dict(self):
        data = dataclasses.asdict(self)
        data["text"] = self.text.to_dict()
        return data

    def replace(self, **changes):
        """A copy with ``changes``; ``text`` and ``scoring`` may be dicts of their own changes."""
        for name in ("text", "scoring"):
            if isinstance(changes.get(name), dict):
                changes[name] = dataclasses.replace(getattr(self, name), **changes[name])
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data, where=MODEL_CONFIG_NAME):
        data = dict(data)
        version = data.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(f"{where}: format_version {version}, but this bert_rec reads "
                             f"version {FORMAT_VERSION}; use the bert_rec version that saved it")
        text = TextConfig.from_dict(data.pop("text", {}))
        scoring = _from_dict(ScoringConfig, data.pop("scoring", {}), f"{where} [scoring]")
        return _from_dict(cls, {**data, "text": text, "scoring": scoring}, where)

    def save(self, path):
        """Write the config as JSON (into a staging directory, or atomically by the caller)."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, ensure_ascii=False, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def load(cls, path):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except ValueError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(data, where=path)


# -- training commands -----------------------------------------------------------------------
OBJECTIVES = ("softmax", "click", "both")
USER_TOWERS = ("attention", "sequence")  # the trained user towers (models.user_tower)
SCRATCH_LEARNING_RATE = 1e-3   # bert-rec pretrain from scratch
CONTINUE_LEARNING_RATE = 5e-5  # bert-rec pretrain --init CKPT (domain-adaptive)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of ``bert-rec train`` (saved in ``training/config.json``)."""
    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 3e-3
    encoder_learning_rate: float = 5e-5
    temperature: float = 0.1
    train_layers: int = 0
    # With 0 < train_layers < depth, the frozen lower layers' token states of every text are
    # computed once and kept (float16 or float32); "off" runs them at every step (training.py).
    frozen_states: str = "float16"
    # The text encoder's compute precision while training (PRECISIONS): bfloat16 runs its
    # matmuls in bfloat16 (Keras's mixed_bfloat16: float32 master weights and optimizer), worth
    # it on CPUs with AVX-512 BF16 or AMX; the model is saved and tested in float32 either way.
    precision: str = "float32"
    # How examples form batches (training.epoch_order): "user" keeps each user's examples
    # together (users in random order), so a batch's examples share their history texts and
    # trained encoder layers run once per distinct text; "random" shuffles examples across
    # users; "auto": user when encoder layers train (where it pays), else random (on
    # data/heldout, frozen encoder, user batches ended 0.012 NDCG@10 lower over 3 seeds).
    batching: str = "auto"
    extra_negatives: int = 256
    logq_correction: bool = True
    id_embeddings: bool = True
    attention_units: int = 64
    user_tower: str = "attention"
    sequence_heads: int = 2
    objective: str = "softmax"
    click_weight: float = 0.5
    patience: int = 4
    k: int = 10
    seed: int = 0

    def __post_init__(self):
        _check_choice(self, "objective", OBJECTIVES)
        for name in ("epochs", "batch_size", "k", "attention_units"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.train_layers < 0 or self.extra_negatives < 0 or self.temperature <= 0:
            raise ValueError("train_layers and extra_negatives must be >= 0, temperature > 0")
        _check_choice(self, "user_tower", USER_TOWERS)
        _check_choice(self, "frozen_states", FROZEN_STATES)
        _check_choice(self, "precision", PRECISIONS)
        _check_choice(self, "batching", BATCHING)


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Hyper-parameters of ``bert-rec pretrain`` (saved in ``pretraining.json``).

    ``init_checkpoint``: continue that checkpoint (its vocabulary and architecture are kept, so
    the size settings are ignored); None trains a ``num_layers`` x ``hidden_size`` BERT from
    scratch with a vocabulary built from the corpus (characters and ASCII words seen
    ``min_count`` times, at most ``max_vocab`` tokens). ``max_position`` (default ``max_len``)
    is the model's position table; sequences are cut to ``max_len`` tokens. ``holdout_texts``
    single texts (corpus lines, else behaviour texts) are kept out of training, and the
    masked-LM loss and accuracy on them are reported after every epoch.
    ``learning_rate`` defaults to 1e-3 from scratch and 5e-5 when continuing. ``precision``
    (PRECISIONS): bfloat16 runs the matmuls in bfloat16 with float32 weights and optimizer;
    the checkpoint written is float32 either way.
    """
    init_checkpoint: str | None = None
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    max_len: int = 64
    max_position: int | None = None
    max_vocab: int | None = None
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float | None = None
    nsp: bool = False
    seed: int = 0
    min_count: int = 2
    holdout_texts: int = 0
    precision: str = "float32"

    def __post_init__(self):
        _check_choice(self, "precision", PRECISIONS)
        for name, low in (("epochs", 1), ("batch_size", 1), ("max_len", 8), ("min_count", 1),
                          ("hidden_size", 1), ("num_layers", 1), ("num_heads", 1),
                          ("holdout_texts", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of num_heads "
                             f"{self.num_heads}")
        if self.max_position is not None and self.max_position < self.max_len:
            raise ValueError(f"max_position {self.max_position} must be >= max_len "
                             f"{self.max_len}")
        if self.max_vocab is not None and self.max_vocab < 100:
            raise ValueError(f"max_vocab must be >= 100, got {self.max_vocab}")

    @property
    def peak_learning_rate(self):
        if self.learning_rate:
            return self.learning_rate
        return CONTINUE_LEARNING_RATE if self.init_checkpoint else SCRATCH_LEARNING_RATE


@dataclasses.dataclass(frozen=True)
class SentimentConfig:
    """Hyper-parameters of ``bert-rec train-sentiment`` (saved in ``sentiment.json``).

    ``train_layers``: top transformer layers fine-tuned (-1: all). ``truncation``: how a
    text longer than ``max_len`` tokens is cut (``head``: its start; ``head_tail``: its first
    quarter and its end, see ``tokenization.encode_texts``). ``ngrams``: stack BERT on a
    TF-IDF n-gram logistic regression (ngrams.py): their log-odds blended with weights learned
    on the validation examples. ``precision`` (PRECISIONS): bfloat16 fine-tunes with bfloat16
    matmuls (float32 weights; the head is saved and reloaded in float32).
    Labels from the log: a text on an item its writer rated ``>= positive_rating`` is
    positive, ``<= negative_rating`` negative. ``validation_fraction`` of the examples
    (seeded) pick the best epoch (AUC).
    """
    train_layers: int = 2
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 5e-5
    max_len: int = 128
    truncation: str = "head"
    ngrams: bool = False
    validation_fraction: float = 0.1
    positive_rating: float = 4.0
    negative_rating: float = 2.0
    seed: int = 0
    precision: str = "float32"

    def __post_init__(self):
        _check_choice(self, "precision", PRECISIONS)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_len < 8:
            raise ValueError(f"max_len must be >= 8, got {self.max_len}")
        _check_choice(self, "truncation", TRUNCATIONS)
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got "
                             f"{self.validation_fraction}")
        if self.negative_rating >= self.positive_rating:
            raise ValueError(f"negative_rating {self.negative_rating} must be below "
                             f"positive_rating {self.positive_rating}")
