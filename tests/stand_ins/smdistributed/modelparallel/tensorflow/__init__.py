"""Stand-in for `smdistributed.modelparallel.tensorflow` (SMP v1), which exists only inside
SageMaker's TF 2.6 training container. It follows the documented API (sagemaker-python-sdk,
doc/api/training/smp_versions/latest/smd_model_parallel_{common_api,tensorflow}.rst):

- `init(config=None)`: the parameters come from `config`, else from SM_HP_MP_PARAMETERS
  (JSON, as SageMaker sets it); `partitions` is required, `microbatches` defaults to 1,
  `pipeline` is interleaved or simple;
- `DistributedModel`: a Keras Model whose call() may run only inside an `@smp.step`;
- `@smp.step` / `@smp.step(non_split_inputs=[...], input_split_axes={...})`: splits every
  tensor argument (and lists, tuples, dicts of them) along its batch axis into
  `microbatches` parts, runs the function once per microbatch in graph mode, and wraps every
  returned tensor in a `StepOutput` (`outputs`, `reduce_mean`, `reduce_sum`, `concat`,
  `stack`, `merge`, `accumulate`);
- `CheckpointManager(checkpoint, directory, max_to_keep, checkpoint_name)` with save() and
  restore(); ranks from the MPI launcher's OMPI_COMM_WORLD_* variables (default: one
  process standing for all `partitions`), rank r being mp_rank r % partitions of dp_rank
  r // partitions.

Not the real library: this one process executes every partition (no pipelining across
processes, no device placement), and only mp_rank 0 writes checkpoints, since it holds
every variable. `calls` records what happened, for tests.
"""

import inspect
import json
import os
from typing import Any, Dict, List, Optional

import tensorflow as tf

PIPELINES = ("interleaved", "simple")
_config: Dict[str, Any] = {}
calls: List[tuple] = []
_in_step = [False]


def init(config: Optional[Dict[str, Any]] = None) -> None:
    if config is None:
        raw = os.environ.get("SM_HP_MP_PARAMETERS")
        if raw is None:
            raise ValueError("smp.init(): no config given and SM_HP_MP_PARAMETERS is not set")
        config = json.loads(raw)
    config = dict(config)
    if "partitions" not in config:
        raise ValueError("smp.init(): 'partitions' is a required parameter")
    config.setdefault("microbatches", 1)
    config.setdefault("pipeline", "interleaved")
    if int(config["partitions"]) < 1 or int(config["microbatches"]) < 1:
        raise ValueError("smp.init(): partitions and microbatches must be positive")
    if config["pipeline"] not in PIPELINES:
        raise ValueError(f"smp.init(): pipeline must be one of {PIPELINES}")
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", config["partitions"])) % int(
        config["partitions"]
    ):
        raise ValueError("smp.init(): the number of processes must be a multiple of partitions")
    _config.clear()
    _config.update(config)
    calls.append(("init", dict(config)))


def _require_init() -> Dict[str, Any]:
    if not _config:
        raise RuntimeError("smp.init() must be called first")
    return _config


def _env(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def rank() -> int:
    return _env("OMPI_COMM_WORLD_RANK", 0)


def size() -> int:
    """Without an MPI launcher this one process stands for the whole model-parallel group."""
    return _env("OMPI_COMM_WORLD_SIZE", mp_size())


def local_rank() -> int:
    return _env("OMPI_COMM_WORLD_LOCAL_RANK", rank())


def local_size() -> int:
    return _env("OMPI_COMM_WORLD_LOCAL_SIZE", size())


def mp_size() -> int:
    return int(_require_init()["partitions"])


def dp_size() -> int:
    return size() // mp_size()


def mp_rank() -> int:
    return rank() % mp_size()


def dp_rank() -> int:
    return rank() // mp_size()


def num_microbatches() -> int:
    return int(_require_init()["microbatches"])


def barrier() -> None:
    """One process: nothing to wait for."""


class DistributedModel(tf.keras.Model):
    """The model SMP partitions; its call() is traced inside smp.step only."""

    def __call__(self, *args, **kwargs):
        if not _in_step[0]:
            raise RuntimeError("smp.DistributedModel can only be called inside an smp.step")
        return super().__call__(*args, **kwargs)


class StepOutput:
    """Every microbatch's version of one tensor returned from an smp.step."""

    def __init__(self, outputs: List[tf.Tensor]):
        self.outputs = list(outputs)

    def reduce_mean(self) -> tf.Tensor:
        return tf.add_n(self.outputs) / len(self.outputs)

    def reduce_sum(self) -> tf.Tensor:
        return tf.add_n(self.outputs)

    def concat(self) -> tf.Tensor:
        return tf.concat(self.outputs, axis=0)

    def stack(self) -> tf.Tensor:
        return tf.stack(self.outputs)

    def merge(self) -> tf.Tensor:
        return tf.concat(self.outputs, axis=0)

    def accumulate(self, method: str = "variable", var=None) -> tf.Tensor:
        if method not in ("variable", "add_n", "accumulate_n"):
            raise ValueError(f"StepOutput.accumulate(): unknown method {method!r}")
        return self.reduce_mean()


def _slice(value, parts: int, index: int, axis: int):
    if hasattr(value, "smp_slice"):
        return value.smp_slice(parts, index, axis)
    if isinstance(value, dict):
        return {k: _slice(v, parts, index, axis) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return type(value)(_slice(v, parts, index, axis) for v in value)
    if not tf.is_tensor(value):
        return value  # Python values are given to every microbatch as they are
    length = value.shape[axis]
    if length is not None and length % parts:
        raise ValueError(
            f"smp.step: batch dimension {length} is not divisible by {parts} microbatches"
        )
    return tf.split(value, parts, axis=axis)[index]


class _Step:
    def __init__(self, fn, non_split_inputs=None, input_split_axes=None, **function_kwargs):
        self._fn = fn
        self._signature = inspect.signature(fn)
        self._non_split = set(non_split_inputs or ())
        self._axes = dict(input_split_axes or {})
        self._graph = tf.function(self._microbatch, **function_kwargs)

    def _microbatch(self, arguments: Dict[str, Any]):
        _in_step[0] = True
        try:
            return self._fn(**arguments)
        finally:
            _in_step[0] = False

    def __call__(self, *args, **kwargs):
        parts = int(_require_init()["microbatches"])
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        results = []
        for index in range(parts):
            arguments = {
                name: value
                if name in self._non_split
                else _slice(value, parts, index, self._axes.get(name, 0))
                for name, value in bound.arguments.items()
            }
            results.append(self._graph(arguments))
        calls.append(("step", self._fn.__name__, parts))
        return tf.nest.map_structure(
            lambda *xs: StepOutput(list(xs)) if tf.is_tensor(xs[0]) else xs[0], *results
        )


def step(fn=None, non_split_inputs=None, input_split_axes=None, **function_kwargs):
    """`@smp.step` or `@smp.step(non_split_inputs=..., input_split_axes=..., **tf.function)`."""
    if fn is None:
        return lambda f: _Step(f, non_split_inputs, input_split_axes, **function_kwargs)
    return _Step(fn, non_split_inputs, input_split_axes, **function_kwargs)


class CheckpointManager(tf.train.CheckpointManager):
    def __init__(
        self, checkpoint, directory="/opt/ml/checkpoints", max_to_keep=None, checkpoint_name="ckpt"
    ):
        super().__init__(
            checkpoint, str(directory), max_to_keep=max_to_keep, checkpoint_name=checkpoint_name
        )
        self._smp_checkpoint = checkpoint

    def save(self):
        if mp_rank() != 0:
            return None
        path = super().save()
        calls.append(("save", path))
        return path

    def restore(self):
        path = self.latest_checkpoint
        calls.append(("restore", path))
        if path is None:
            return None
        return self._smp_checkpoint.restore(path)
