"""Every setting of enet-cli, with its default, in one place.

The same pydantic models read CLI options, a YAML/JSON `--config` file and (later) SageMaker
hyperparameters. Precedence: defaults < config file < CLI options. A CLI option is the field
name in kebab case (`train.batch_size` <-> `--batch-size`), so an error can always name the
option or the file key the user has to change.

This module must not import TensorFlow: `enet --help` and config errors stay fast.
"""

import contextlib
import enum
import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Type, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from enet_cli.core.errors import ConfigError
from enet_cli.core.processes import usable_cores

SIZE_MULTIPLE = 8  # ENet halves H and W three times, and unpools back exactly (model_size)
DEFAULT_IMAGE_SIZE = (360, 480)  # CamVid as SegNet and the ENet paper use it
# NumPy takes seeds below 2**32 and the pipeline adds the epoch to it: 2**31 - 1 leaves room,
# so a seed too large fails here, in one line, not after the model is built (or in a job).
MAX_SEED = 2**31 - 1


class Mode(str, enum.Enum):
    single = "single"
    ddp = "ddp"
    mp = "mp"


class EngineChoice(str, enum.Enum):
    """Who runs a distributed mode: SageMaker's library (smddp for ddp, smp for mp) or TF's own."""

    auto = "auto"
    tf = "tf"
    smddp = "smddp"
    smp = "smp"


class PipelineSchedule(str, enum.Enum):
    """SMP's `pipeline` parameter: the order in which microbatches run through the stages.

    interleaved: a microbatch's backward pass runs as soon as its forward pass is done, so
    at most a few microbatches' activations are alive at once; simple (GPipe): every
    forward pass first, then every backward pass. Same gradients, different peak memory.
    """

    interleaved = "interleaved"
    simple = "simple"


class Precision(str, enum.Enum):
    float32 = "float32"
    mixed_float16 = "mixed_float16"
    mixed_bfloat16 = "mixed_bfloat16"


class LRSchedule(str, enum.Enum):
    step = "step"
    cosine = "cosine"
    constant = "constant"


class LogFormat(str, enum.Enum):
    """How `enet train` reports an epoch on stdout (train/report.py)."""

    auto = "auto"
    table = "table"
    metrics = "metrics"


class ClassWeighting(str, enum.Enum):
    enet = "enet"
    median = "median"
    none = "none"


def model_size(height: int, width: int) -> Tuple[int, int]:
    """The size ENet runs an image of height x width at: each side rounded up to a multiple
    of 8, the image padded at the bottom and right (padding is void in training; the
    logits are cropped back to height x width)."""

    def up(n: int) -> int:
        return -(-n // SIZE_MULTIPLE) * SIZE_MULTIPLE

    return up(height), up(width)


def global_batch(batch_size: int, replicas: int) -> int:
    """Images per optimizer step over the whole job: `--batch-size` is per replica (the
    table in train/engines/table.py says what a replica is in each mode)."""
    return batch_size * replicas


MAX_SIDE = 16384


def check_image_size(height: int, width: int) -> None:
    """Raise ConfigError unless H and W are usable image sides (any positive size: ENet pads
    to its multiple of 8 inside, see model_size)."""
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        raise ConfigError(
            f"size {height}x{width} is not usable: height and width must be 1 to {MAX_SIDE}"
        )


def parse_size(value: Any) -> Tuple[int, int]:
    """Read a size given as "360x480", "360,480", [360, 480] or (360, 480) into (height, width)."""
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = []
    try:
        height, width = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"expected HEIGHTxWIDTH such as 360x480, got {value!r}") from None
    try:
        check_image_size(height, width)
    except ConfigError as err:
        raise ValueError(str(err)) from None
    return height, width


ModelT = TypeVar("ModelT", bound=BaseModel)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_enum_values=False)


# Bottlenecks in ENet's stages 1 to 5 besides each stage's down- or upsampling block (stage
# 3 has none of its own): the paper's Table 1.
PAPER_BOTTLENECKS: Tuple[int, int, int, int, int] = (4, 8, 8, 2, 1)


class ModelConfig(Section):
    """The ENet graph (model/enet.py): its free choices. The blocks, channels, kernels and
    skips are the paper's; only how many bottlenecks each stage repeats may be fewer, as
    keras-hub's backbones take their depth per stage: a shallower ENet for a small device
    or a quick experiment, made of the same blocks."""

    num_classes: int = Field(11, ge=2, le=255, description="Output classes, void excluded.")
    stage1_dropout: float = Field(0.01, ge=0, lt=1, description="Spatial dropout in stage 1.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Spatial dropout from stage 2 on.")
    bottlenecks: Tuple[int, int, int, int, int] = Field(
        PAPER_BOTTLENECKS,
        description="Bottlenecks per stage 1-5 besides its down/upsampling block: the "
        "paper's 4,8,8,2,1; fewer make a shallower, faster ENet (stages 2-3 keep their "
        "dilation plan's first ones).",
    )

    @field_validator("bottlenecks", mode="before")
    @classmethod
    def _bottlenecks(cls, value: Any) -> Any:
        counts = list(value) if isinstance(value, (list, tuple)) else []
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                counts = [int(v) for v in value.split(",")]
        paper = ",".join(map(str, PAPER_BOTTLENECKS))
        if len(counts) != len(PAPER_BOTTLENECKS) or not all(
            isinstance(n, int) and 0 <= n <= most for n, most in zip(counts, PAPER_BOTTLENECKS)
        ):
            raise ValueError(
                f"expected five counts, each from 0 to the paper's ({paper}), got {value!r}"
            )
        return tuple(counts)


class DataConfig(Section):
    """Where the data is and how it is fed."""

    data_dir: Optional[Path] = Field(None, description="Preprocessed directory (manifest.json).")
    image_size: Optional[Tuple[int, int]] = Field(
        None,
        description="HEIGHTxWIDTH the data was preprocessed at; default: the manifest's.",
    )
    augment: bool = Field(
        False,
        description="Augment train data: random flips, plus the two options below (the "
        "reference recipe has none).",
    )
    random_scale: Optional[Tuple[float, float]] = Field(
        None, description="Random scale range before cropping back to image_size, e.g. 0.75,1.5."
    )
    color_jitter: float = Field(0.0, ge=0, le=1, description="Brightness/contrast/saturation.")

    @field_validator("image_size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Optional[Tuple[int, int]]:
        return None if value is None else parse_size(value)

    @field_validator("random_scale", mode="before")
    @classmethod
    def _scale(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [float(v) for v in value.split(",")]
        if value is not None and (len(value) != 2 or not 0 < value[0] <= value[1]):
            raise ValueError(f"expected MIN,MAX with 0 < MIN <= MAX, got {value!r}")
        return value


class TrainConfig(Section):
    """The optimisation recipe; defaults are the reference port's published CamVid recipe."""

    epochs: int = Field(300, gt=0, description="Passes over the train split.")
    steps: Optional[int] = Field(None, gt=0, description="Stop after this many steps instead.")
    batch_size: int = Field(
        10, gt=0, description="Images per replica (ddp: per GPU or worker; mp: per pipeline)."
    )
    learning_rate: float = Field(5e-4, gt=0, description="Adam's learning rate at step 0.")
    weight_decay: float = Field(
        2e-4, ge=0, description="L2 penalty on every weight, added to the gradients (as Adam's)."
    )
    clip_norm: Optional[float] = Field(
        None, gt=0, description="Clip the gradient to this global norm (off by default)."
    )
    lr_schedule: LRSchedule = Field(
        LRSchedule.step,
        description="step: x lr-decay-factor every lr-decay-epochs; cosine: to 0 at the end.",
    )
    lr_decay_epochs: int = Field(100, gt=0, description="Step schedule: epochs between decays.")
    lr_decay_factor: float = Field(
        0.1, gt=0, le=1, description="Step schedule: the learning rate's factor at each decay."
    )
    class_weighting: ClassWeighting = Field(
        ClassWeighting.enet,
        description="Loss weight per class: enet 1/ln(1.02+p) (the paper's), median "
        "frequency, or none.",
    )
    precision: Precision = Field(
        Precision.float32,
        description="mixed_float16 (GPUs with tensor cores) or mixed_bfloat16 computes in "
        "16 bits, keeps weights in float32.",
    )
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seeds initial weights, data order and augmentation."
    )
    val_every_steps: Optional[int] = Field(
        None, gt=0, description="Also validate every N steps (always at each epoch's end)."
    )
    checkpoint_every_steps: Optional[int] = Field(
        None, gt=0, description="Also checkpoint every N steps (always at each epoch's end)."
    )
    keep_checkpoints: int = Field(3, ge=1, description="Recent checkpoints kept (+ the best).")
    scale_lr: bool = Field(
        False, description="Multiply the learning rate by the number of data-parallel replicas."
    )
    init_from: Optional[str] = Field(
        None,
        description="Start from this model's weights: a preset (enet models), run, "
        "checkpoints or SavedModel; the classifier is re-initialised for other classes.",
    )


class RuntimeConfig(Section):
    """How and where training runs: the engine choice and its knobs."""

    mode: Mode = Field(
        Mode.single,
        description="single: one device; ddp: data parallel; mp: model parallel (pipeline).",
    )
    engine: EngineChoice = Field(
        EngineChoice.auto,
        description="ddp: smddp|tf, mp: smp|tf; auto = SageMaker's library when it imports.",
    )
    sync_batchnorm: bool = Field(
        False,
        description="ddp (tf engine): batch-norm statistics over the global batch.",
    )
    partitions: int = Field(2, ge=1, description="mp: pipeline stages.")
    microbatches: int = Field(1, ge=1, description="mp: microbatches per batch.")
    pipeline: PipelineSchedule = Field(
        PipelineSchedule.interleaved,
        description="mp: interleaved (backward as soon as possible) or simple (GPipe).",
    )
    local_workers: int = Field(
        1, ge=1, description="ddp: worker processes on this machine (at most one per core)."
    )

    @field_validator("local_workers")
    @classmethod
    def _one_per_core(cls, value: int) -> int:
        # Each worker is a whole TensorFlow process with its own threads; more than the
        # cores only slows every step, and the global batch grows with the workers, so the
        # count is refused rather than quietly lowered.
        cores = usable_cores()
        if value > cores:
            raise ValueError(f"{value} workers on {cores} CPU core(s); use {cores} or fewer")
        return value

    run_dir: Path = Field(
        Path("runs/enet"),
        description="Checkpoints, logs, model and metrics; rerunning with it resumes.",
    )
    resume: bool = Field(True, description="Continue from the run directory's last checkpoint.")
    log_format: LogFormat = Field(
        LogFormat.auto,
        description="table: a row per epoch; metrics: the enet-metrics: lines SageMaker's "
        "regexes read; auto: table on a terminal, metrics elsewhere and in SageMaker.",
    )


class Interpolation(str, enum.Enum):
    area = "area"
    bilinear = "bilinear"


class PreprocessConfig(Section):
    """`enet preprocess`: a dataset on disk -> TFRecord shards + manifest.json."""

    input_dir: Path = Field(..., description="The dataset's root folder.")
    output_dir: Path = Field(..., description="Directory to create with shards + manifest.")
    layout: Optional[str] = Field(
        None,
        description="camvid-kaggle, camvid-segnet, cityscapes, voc or folders (default: "
        "detected from the folders).",
    )
    classes: Optional[str] = Field(
        None,
        description="camvid11 or camvid32 (CamVid), cityscapes or cityscapes-categories, voc, "
        "or a classes file (CSV name,r,g,b or name,value; JSON; YAML). Default: the "
        "layout's own (camvid11, cityscapes, voc, the mask values).",
    )
    ignore_index: int = Field(
        255, ge=0, le=255, description="Mask value that is void (folders layout)."
    )
    val_fraction: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="Share of images held out for val when a folders dataset has no split folders.",
    )
    split_seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the --val-fraction split.")
    image_size: Tuple[int, int] = Field(
        DEFAULT_IMAGE_SIZE, description="HEIGHTxWIDTH the images are resized to."
    )
    interpolation: Interpolation = Field(
        Interpolation.area, description="Image resizing (labels always use nearest)."
    )
    shards: Optional[int] = Field(
        None, gt=0, description="Shards per split (default: about 32 records per shard)."
    )
    workers: Optional[int] = Field(
        None,
        gt=0,
        description="Processes that decode and convert images (default: one per CPU core, "
        "at most 4).",
    )
    force: bool = Field(False, description="Replace an existing output directory.")

    @field_validator("image_size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Tuple[int, int]:
        return parse_size(value)


class EnetConfig(Section):
    """The whole configuration; a `--config` file has these four sections as top-level keys."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)


# Settings that describe this machine, not a SageMaker job: `enet launch` neither offers nor
# passes them (the container decides: its channel, /opt/ml, its processes, its log format,
# and it always resumes from /opt/ml/checkpoints). `enet tune` does not vary them either.
LOCAL_SETTINGS = ("data_dir", "run_dir", "local_workers", "log_format", "resume")

# Fields whose CLI option is not simply their kebab-case name (shorter, as users expect).
OPTION_ALIASES = {"num_classes": "--classes", "image_size": "--size"}


def option_name(field: str) -> str:
    """The CLI option for a config field: `batch_size` -> `--batch-size`."""
    return OPTION_ALIASES.get(field, "--" + field.replace("_", "-"))


def read_text_file(path: Path, what: str) -> str:
    """A settings file a user wrote (config, ranges), as UTF-8 text, or one line saying why
    it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{what} {path} is not UTF-8 text (byte {err.start}); save it as UTF-8"
        ) from None


def read_config_file(path: Path) -> Dict[str, Any]:
    """Load a YAML or JSON config file into a plain dict, with one-line errors."""
    import yaml  # JSON is YAML, so one parser reads both

    text = read_text_file(path, "config file")
    try:
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML/JSON: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must be a mapping with sections model, data, train, runtime"
        )
    return data


def _merge(base: Dict[str, Any], top: Dict[str, Any]) -> Dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: Dict[str, Any], overrides: Dict[str, Any], path: Optional[Path]) -> str:
    loc = [str(part) for part in error["loc"]]
    if len(loc) == 1 or loc[0] not in overrides:  # a flat model: options are its fields
        section_and_field = ["", loc[0]]
        overrides = {"": overrides}
    else:
        section_and_field = loc[:2]
    from_cli = section_and_field[1] in overrides.get(section_and_field[0], {})
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    given = error.get("input")
    shown = isinstance(given, dict) or "got " in message or str(given) in message
    got = "" if shown else f" (got {given!r})"
    if error["type"] == "extra_forbidden":
        where = f"in {path}" if path else "in the configuration"
        return f"unknown setting {'.'.join(loc)} {where}; check the spelling (see enet --help)"
    if from_cli:
        return f"invalid value for {option_name(section_and_field[1])}: {message}{got}"
    where = f" in {path}" if path else ""
    return f"invalid value for {'.'.join(loc)}{where}: {message}{got}"


SECTIONS: Dict[str, Type[BaseModel]] = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "runtime": RuntimeConfig,
}


def sort_settings(flat: Dict[str, Any], source: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
    """Sort flat settings (CLI options, SageMaker hyperparameters) into sections by field name.

    Field names are unique across sections, so `batch_size` can only mean `train.batch_size`.
    With `source` set, an unknown key is an error naming it; without, it is ignored.
    """
    out: Dict[str, Dict[str, Any]] = {name: {} for name in SECTIONS}
    owner = {field: name for name, model in SECTIONS.items() for field in model.model_fields}
    for key, value in flat.items():
        if key in owner:
            out[owner[key]][key] = value
        elif source is not None:
            raise ConfigError(
                f"unknown {source} {key!r}; enet settings are: " + ", ".join(sorted(owner))
            )
    return out


def read_settings(
    path: Optional[Path] = None,
    overrides: Optional[Dict[str, Dict[str, Any]]] = None,
    hyperparameters: Optional[Dict[str, Any]] = None,
) -> EnetConfig:
    """Build the configuration: defaults < the file at `path` < SageMaker `hyperparameters`
    (flat) < `overrides` (CLI options).

    `overrides` maps section -> field -> value; None values mean "not given" and are dropped,
    so a CLI option left unset never hides the file's value.
    """
    overrides = {
        section: {k: v for k, v in fields.items() if v is not None}
        for section, fields in (overrides or {}).items()
    }
    data = read_config_file(path) if path is not None else {}
    if hyperparameters:
        data = _merge(data, sort_settings(hyperparameters, "hyperparameter"))
    try:
        cfg = EnetConfig.model_validate(_merge(data, overrides))
    except ValidationError as err:
        raise ConfigError(_describe(err.errors()[0], overrides, path)) from None
    return cfg


def make_options(cls: Type[ModelT], values: Dict[str, Any]) -> ModelT:
    """Validate a flat options model (e.g. PreprocessConfig) from CLI values; None = default."""
    given = {k: v for k, v in values.items() if v is not None}
    try:
        return cls.model_validate(given)
    except ValidationError as err:
        raise ConfigError(_describe(err.errors()[0], given, None)) from None
