"""Configuration dataclasses, saved as JSON beside every model (``bert_rec.json``).

No TensorFlow here: the CLI reads and validates configs before paying for a TF import.
"""

import dataclasses
import json
import math

from .text import TextConfig

CONFIG_NAME = "bert_rec.json"
FORMAT_VERSION = 1
WHITENINGS = ("none", "center", "whiten")


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


@dataclasses.dataclass
class ScoringConfig:
    """How a user's behaviours are weighted into the interest vector.

    weight = behavior_weights[behavior] * rating factor * recency factor, where the rating
    factor is ``rating / rating_max`` for behaviours with a rating (1 otherwise) and the recency
    factor is ``0.5 ** (age_days / half_life_days)``, age measured from the user's latest
    behaviour (``half_life_days <= 0`` turns recency off). A behaviour with text adds a second
    vector, its text's, with ``text_weight`` times that weight. Only the latest ``max_history``
    behaviours are pooled; every seen item is still excluded when ``exclude_seen``.
    """
    behavior_weights: dict = dataclasses.field(default_factory=lambda: {
        "view": 1.0, "click": 2.0, "rate": 3.0, "comment": 3.0})
    default_behavior_weight: float = 1.0
    rating_max: float = 5.0
    half_life_days: float = 14.0
    text_weight: float = 1.0
    max_history: int = 100
    exclude_seen: bool = True

    def __post_init__(self):
        for name, weight in self.behavior_weights.items():
            if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
                raise ValueError(f"behavior_weights[{name!r}] = {weight!r}: weights must be "
                                 f"finite numbers >= 0")
        if self.rating_max <= 0:
            raise ValueError(f"rating_max must be > 0, got {self.rating_max}")
        if self.max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {self.max_history}")

    def behavior_weight(self, behavior):
        """The configured weight of a behaviour name (``default_behavior_weight`` if unlisted)."""
        return float(self.behavior_weights.get(behavior, self.default_behavior_weight))


@dataclasses.dataclass
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
        if self.pooling not in ("mean", "cls", "pooler"):
            raise ValueError(f"pooling must be mean, cls or pooler, got {self.pooling!r}")
        if self.whitening not in WHITENINGS:
            raise ValueError(f"whitening must be one of {', '.join(WHITENINGS)}, "
                             f"got {self.whitening!r}")
        for name in ("item_max_len", "text_max_len"):
            if getattr(self, name) < 3:
                raise ValueError(f"{name} must be >= 3 ([CLS] + a token + [SEP])")

    def to_dict(self):
        data = dataclasses.asdict(self)
        data["text"] = self.text.to_dict()
        return data

    @classmethod
    def from_dict(cls, data, where=CONFIG_NAME):
        data = dict(data)
        version = data.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(f"{where}: format_version {version}, but this bert_rec reads "
                             f"version {FORMAT_VERSION}; use the bert_rec version that saved it")
        text = TextConfig.from_dict(data.pop("text", {}))
        scoring = _from_dict(ScoringConfig, data.pop("scoring", {}), f"{where} [scoring]")
        return _from_dict(cls, {**data, "text": text, "scoring": scoring}, where)

    def save(self, path):
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
