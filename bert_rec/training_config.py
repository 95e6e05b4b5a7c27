"""Hyper-parameters of pretraining and fine-tuning, kept free of TensorFlow so the CLI can parse them cheaply."""

import dataclasses

OBJECTIVES = ("softmax", "click", "both")
SCRATCH_LEARNING_RATE = 1e-3   # bert-rec pretrain from scratch
CONTINUE_LEARNING_RATE = 5e-5  # bert-rec pretrain --init CKPT (domain-adaptive)


@dataclasses.dataclass
class TrainConfig:
    """Hyper-parameters of ``bert-rec train`` (saved in ``training/state.json``)."""
    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 3e-3
    encoder_learning_rate: float = 5e-5
    temperature: float = 0.1
    train_layers: int = 0
    extra_negatives: int = 256
    logq_correction: bool = True
    id_embeddings: bool = True
    attention_units: int = 64
    objective: str = "softmax"
    click_weight: float = 0.5
    patience: int = 4
    k: int = 10
    seed: int = 0

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, "
                             f"got {self.objective!r}")
        for name in ("epochs", "batch_size", "k", "attention_units"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.train_layers < 0 or self.extra_negatives < 0 or self.temperature <= 0:
            raise ValueError("train_layers and extra_negatives must be >= 0, temperature > 0")
