"""How a config field becomes a command-line option, for every command.

The name, help and shown default of an option come from the pydantic field in config.py
(core/config.py, cloud/settings.py): a default lives in one place. The option's own default
is None ("not given"), so a `--config` file's value is only overridden by options the user
typed.

`enet train`, `enet launch` and `enet tune` take the same training options: they are the one
list TRAINING_OPTIONS below, turned into parameters by `training_parameters`. Commands whose
options are a whole settings model (launch, tune, deploy, ...) get their signature from
`command_with(...)` when the command module registers them, so an option added to a
settings model appears in `--help`, is validated and reaches the code with no second list.
"""

import enum
import inspect
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

import typer
from pydantic import BaseModel
from rich.markup import escape

from enet_cli.core.config import SECTIONS, PreprocessConfig, option_name, parse_size, sort_settings

PANEL_DATA, PANEL_MODEL, PANEL_TRAIN, PANEL_DIST = "Data", "Model", "Training", "Distributed"
PANEL_OUT = "Checkpoints and output"
PANEL_LAUNCH, PANEL_TUNE = "SageMaker job", "Tuning job"
PANEL_SERVE, PANEL_AWS = "Endpoint / transform", "AWS"

# The settings model of each section name an option may come from.
SETTINGS: Dict[str, Type[BaseModel]] = {**SECTIONS, "preprocess": PreprocessConfig}

MODEL_HELP = (
    "Run directory, SavedModel, checkpoints, a preset's name (enet models), or a SageMaker "
    "training job's name."
)

CONFIG_OPTION = typer.Option(
    None,
    "--config",
    "-c",
    help="YAML or JSON file with sections model, data, train, runtime.",
    exists=False,
    dir_okay=False,
)


# A flag takes no value: no type column beside it in --help (Typer >= 0.2x would print
# `<bool>`, which reads as if `--force true` were wanted).
FLAG_METAVAR = ""


def flag(default: bool, *decls: str, help: str) -> Any:
    """A hand-written flag option, shown as a flag."""
    return typer.Option(default, *decls, help=help, metavar=FLAG_METAVAR)


def config_option(
    section: str, field: str, panel: str, decls: Optional[Sequence[str]] = None, **kwargs: Any
) -> Any:
    """A Typer option for `section`'s `field`: its name, help and shown default from config."""
    info = SETTINGS[section].model_fields[field]
    default = info.get_default(call_default_factory=True) if not info.is_required() else ""
    if isinstance(default, enum.Enum):
        default = default.value
    if isinstance(default, tuple):  # as the option takes it: 360x480, 4,8,8,2,1
        default = ("x" if field == "image_size" else ",").join(str(v) for v in default)
    decls = list(decls or [option_name(field)])
    help_text = escape(info.description or "")
    if default is not None and default != "":
        if isinstance(default, bool) and len(decls[0].split("/")) == 2:
            default = decls[0].split("/")[0 if default else 1]
        help_text += f" [dim]\\[default: {escape(str(default))}][/dim]"
    if info.annotation is bool:
        kwargs.setdefault("metavar", FLAG_METAVAR)
    return typer.Option(
        None, *decls, help=help_text, show_default=False, rich_help_panel=panel, **kwargs
    )


def _annotation(field_annotation: Any) -> Any:
    """What Typer parses an option as: the field's enum, number or path; text otherwise
    (sizes and ranges, which the settings model parses), always Optional (None = not given)."""
    inner = [a for a in getattr(field_annotation, "__args__", ()) if a is not type(None)]
    base = inner[0] if len(inner) == 1 and field_annotation is not bool else field_annotation
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return Optional[base]
    for kind in (bool, int, float, Path):
        if base is kind:
            return Optional[kind]
    return Optional[str]


def _flag(field: str, both_ways: bool) -> List[str]:
    flag = option_name(field)
    return [f"{flag}/--no-{flag[2:]}"] if both_ways else [flag]


def field_parameter(section: str, field: str, panel: str, both_ways: bool = False):
    """A keyword parameter for `section`'s `field`, as `config_option` describes it."""
    info = SETTINGS[section].model_fields[field]
    decls = _flag(field, both_ways or info.default is True) if info.annotation is bool else None
    return inspect.Parameter(
        field,
        inspect.Parameter.KEYWORD_ONLY,
        default=config_option(section, field, panel, decls=decls),
        annotation=_annotation(info.annotation),
    )


def settings_parameters(
    model: Type[BaseModel], section: str, panel: str, only: Optional[Sequence[str]] = None
) -> List[inspect.Parameter]:
    """Keyword options for the fields of the flat settings `model` (all, or `only` these)."""
    SETTINGS.setdefault(section, model)
    names = [n for n in model.model_fields if only is None or n in only]
    return [field_parameter(section, name, panel) for name in names]


# enet train's options, in --help's order: (section, field, panel). Flags listed in
# BOTH_WAYS are offered as --x/--no-x whatever their default.
TRAINING_OPTIONS: Tuple[Tuple[str, str, str], ...] = (
    ("runtime", "mode", PANEL_DIST),
    ("runtime", "engine", PANEL_DIST),
    ("data", "image_size", PANEL_DATA),
    ("data", "augment", PANEL_DATA),
    ("data", "random_scale", PANEL_DATA),
    ("data", "color_jitter", PANEL_DATA),
    ("model", "dropout", PANEL_MODEL),
    ("model", "stage1_dropout", PANEL_MODEL),
    ("model", "bottlenecks", PANEL_MODEL),
    ("train", "epochs", PANEL_TRAIN),
    ("train", "steps", PANEL_TRAIN),
    ("train", "batch_size", PANEL_TRAIN),
    ("train", "learning_rate", PANEL_TRAIN),
    ("train", "weight_decay", PANEL_TRAIN),
    ("train", "clip_norm", PANEL_TRAIN),
    ("train", "lr_schedule", PANEL_TRAIN),
    ("train", "lr_decay_epochs", PANEL_TRAIN),
    ("train", "lr_decay_factor", PANEL_TRAIN),
    ("train", "class_weighting", PANEL_TRAIN),
    ("train", "precision", PANEL_TRAIN),
    ("train", "seed", PANEL_TRAIN),
    ("train", "init_from", PANEL_TRAIN),
    ("runtime", "partitions", PANEL_DIST),
    ("runtime", "microbatches", PANEL_DIST),
    ("runtime", "pipeline", PANEL_DIST),
    ("runtime", "local_workers", PANEL_DIST),
    ("runtime", "sync_batchnorm", PANEL_DIST),
    ("train", "scale_lr", PANEL_DIST),
    ("train", "val_every_steps", PANEL_TRAIN),
    ("train", "checkpoint_every_steps", PANEL_OUT),
    ("train", "keep_checkpoints", PANEL_OUT),
    ("runtime", "run_dir", PANEL_OUT),
    ("runtime", "resume", PANEL_OUT),
    ("runtime", "log_format", PANEL_OUT),
)
BOTH_WAYS = ("augment", "sync_batchnorm", "scale_lr", "resume")


def training_parameters(leave_out: Sequence[str] = ()) -> List[inspect.Parameter]:
    """enet train's options as parameters (minus `leave_out`): the one list train, launch
    and tune offer."""
    return [
        field_parameter(section, field, panel, both_ways=field in BOTH_WAYS)
        for section, field, panel in TRAINING_OPTIONS
        if field not in leave_out
    ]


def argument(name: str, help_text: str, annotation: Any = str, default: Any = ...):
    return inspect.Parameter(
        name,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=typer.Argument(default, help=help_text, show_default=False),
        annotation=annotation,
    )


def keyword(name: str, option: Any, annotation: Any) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation
    )


def command_with(function: Callable[..., None], parameters: List[inspect.Parameter]):
    """`function(**options)` with the signature `parameters`, which is what Typer reads."""
    function.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    function.__annotations__ = {p.name: p.annotation for p in parameters}
    return function


def overrides(given: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """A command's option values sorted into config sections by field name."""
    return sort_settings(given)


def pick(options: Dict[str, Any], model: Type[BaseModel]) -> Dict[str, Any]:
    """Take `model`'s fields out of `options`."""
    return {k: options.pop(k) for k in list(options) if k in model.model_fields}


def check_size(value: Optional[str]) -> Optional[str]:
    """Option callback: HEIGHTxWIDTH, refused as --option's own error (exit 2)."""
    if value is not None:
        try:
            parse_size(value)
        except ValueError as err:
            raise typer.BadParameter(str(err)) from None
    return value


def size_of(value: Optional[str]) -> Optional[Tuple[int, int]]:
    return None if value is None else parse_size(value)


def model_path(model: Path) -> Path:
    """MODEL as a local path: a preset's name becomes its directory in the package, a
    SageMaker training job's name its model, downloaded once (cloud/jobs.py); anything else
    is the path it names (artifacts/model_ref.py)."""
    from enet_cli.artifacts.model_ref import ModelRef, RefKind

    ref = ModelRef.parse(model)
    if ref.kind is RefKind.preset:
        from enet_cli.artifacts.presets import runnable

        return runnable(ref.value)
    if ref.kind is not RefKind.job:
        return model
    from enet_cli.cloud.jobs import model_of

    return model_of(model)
