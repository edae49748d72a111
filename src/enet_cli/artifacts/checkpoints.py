"""Where a run's checkpoints are, in either of the two layouts a run can have.

- **whole**: `checkpoints/ckpt-<step>` and `checkpoints/best/ckpt-<step>`, every variable in
  one checkpoint (tf.train.CheckpointManager; single, ddp and the tf mp engine).
- **partitioned**: `checkpoints/smp/mp_rank_<k>/ckpt-<n>` and `checkpoints/smp-best/...`,
  written by SageMaker's model parallel library (SMP v1), whose CheckpointManager saves each
  partition's variables into its own `mp_rank_<k>` directory (the library's
  v2/checkpoint.py). The whole state is the union of the partitions' checkpoints of one
  save. SMP's restore() walks *every* subdirectory of the directory it is given, so its
  best checkpoints must not sit inside it: hence `smp-best` beside `smp`, not under it.

Everything that reads a checkpoint (resume in any mode, evaluate, predict, export) finds it
through `find_checkpoint`, so an SMP run's checkpoints serve everywhere a whole one does.
"""

import re
from pathlib import Path
from typing import TYPE_CHECKING, List, NamedTuple, Optional, Set

if TYPE_CHECKING:
    from enet_cli.core.backend import tf

# TensorFlow is imported by the functions that read checkpoints: locating a TFLite or ONNX
# model (artifacts/model_ref.py) reads this module's names without it.

BEST = "best"
SMP = "smp"
SMP_BEST = "smp-best"
CHECKPOINT_SUBDIRS = (BEST, SMP, SMP_BEST)  # inside a run's checkpoints/, beside enet.json
_PARTITION = re.compile(r"mp_rank_(\d+)$")
_NUMBER = re.compile(r"-(\d+)$")


class FoundCheckpoint(NamedTuple):
    """One saved state: a single checkpoint prefix, or one prefix per partition."""

    prefixes: List[str]
    label: str  # how to name it to a user

    @property
    def partitioned(self) -> bool:
        return len(self.prefixes) > 1 or bool(_PARTITION.search(Path(self.prefixes[0]).parent.name))

    def __str__(self) -> str:
        return self.label


def partition_dirs(directory: Path) -> List[Path]:
    """`directory/mp_rank_<k>` directories in partition order."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _PARTITION.match(p.name))]
    return [p for _, p in sorted(found) if p.is_dir()]


def _complete(directory: Path) -> Set[str]:
    """Names of the checkpoints listed in `directory`'s state file whose index exists."""
    from enet_cli.core.backend import tf

    state = tf.train.get_checkpoint_state(str(directory))
    if state is None:
        return set()
    names = {Path(p).name for p in state.all_model_checkpoint_paths}
    return {n for n in names if (directory / f"{n}.index").is_file()}


def latest_partitioned(directory: Path) -> Optional[FoundCheckpoint]:
    """The newest save that every partition holds (a stop between two partitions' saves
    leaves the previous one the newest complete state)."""
    parts = partition_dirs(directory)
    if not parts:
        return None
    common = set.intersection(*(_complete(p) for p in parts))
    if not common:
        return None
    name = max(common, key=lambda n: int(_NUMBER.search(n).group(1)) if _NUMBER.search(n) else -1)
    label = f"{Path(directory) / 'mp_rank_*' / name} ({len(parts)} partitions)"
    return FoundCheckpoint([str(p / name) for p in parts], label)


def find_checkpoint(directory: Path, partitioned_first: bool = False) -> Optional[FoundCheckpoint]:
    """The newest checkpoint in a run's `checkpoints/` (or its `best/`), either layout.

    `directory` may also be an SMP directory itself (`.../smp` or `.../smp-best`). A whole
    checkpoint is preferred unless `partitioned_first` (the SMP engine resuming its own)."""
    from enet_cli.core.backend import tf

    directory = Path(directory)
    whole = tf.train.latest_checkpoint(str(directory))
    candidates = [directory]
    if directory.name == BEST:
        candidates.append(directory.parent / SMP_BEST)
    else:
        candidates.append(directory / SMP)
    split = next(filter(None, (latest_partitioned(c) for c in candidates)), None)
    order = [split, whole] if partitioned_first else [whole, split]
    for found in order:
        if isinstance(found, str):
            return FoundCheckpoint([found], found)
        if found is not None:
            return found
    return None


def restore(checkpoint: "tf.train.Checkpoint", found: FoundCheckpoint) -> None:
    """Restore every part of `found` into `checkpoint`, now (what SMP's own save_model does
    to assemble the whole model). Partial on purpose: each part holds only its variables,
    and the optimizer may own a learning-rate variable in one run and not in the next."""
    for prefix in found.prefixes:
        checkpoint.restore(prefix).expect_partial()
        adopt_newer_keras_slots(checkpoint, prefix)


_NEWER_SLOT = re.compile(r"^optimizer/(?:inner_optimizer/)?_variables/(\d+)/\.ATTRIBUTES/")


def adopt_newer_keras_slots(checkpoint: "tf.train.Checkpoint", prefix: str) -> None:
    """Adam's moments from a checkpoint of the newer Keras optimizer (what enet-cli trained
    with on Keras >= 2.11 before it used OptimizerV2 everywhere), copied into this run's
    OptimizerV2 slots. That optimizer lists its variables as `optimizer/_variables/<n>`:
    n = 0 its step (saved once, under the optimizer's own name for it), then m and v of each
    trainable variable in order (tf_keras
    optimizers/optimizer.py _create_iteration_variable, adam.py build). The restore
    matches nothing of them, so without this a resume would silently restart the moments.
    (A mixed_float16 run's loss scale restarts at its initial value and adapts again.)"""
    from enet_cli.core.backend import tf

    reader = tf.train.load_checkpoint(prefix)
    keys = {}
    for key in reader.get_variable_to_shape_map():
        match = _NEWER_SLOT.match(key)
        if match:
            keys[int(match.group(1))] = key
    optimizer = getattr(checkpoint, "optimizer", None)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    if not keys or not hasattr(optimizer, "get_slot"):  # nothing to adopt, or no V2 slots
        return
    variables = checkpoint.model.trainable_variables
    keys.pop(0, None)  # the step: restored as the optimizer's iterations already
    if sorted(keys) != list(range(1, 1 + 2 * len(variables))):
        raise ValueError(
            f"{prefix} holds {len(keys)} optimizer slots, not Adam's two moments of each of "
            f"the model's {len(variables)} trainable variables"
        )
    for k, variable in enumerate(variables):
        for index, slot in ((1 + 2 * k, "m"), (2 + 2 * k, "v")):
            try:
                target = optimizer.get_slot(variable, slot)
            except KeyError:  # a reader that made no slots (evaluate, predict) needs none
                return
            target.assign(reader.get_tensor(keys[index]))


def check_model_complete(found: FoundCheckpoint, num_variables: int) -> None:
    """Raise ValueError unless the parts together hold every model variable once (a
    truncated or missing partition fails here, not as a silently half-initialised model)."""
    from enet_cli.core.backend import tf

    keys: Set[str] = set()
    for prefix in found.prefixes:
        keys.update(
            name
            for name, _ in tf.train.list_variables(prefix)
            if name.startswith("model/") and ".OPTIMIZER_SLOT" not in name
        )
    if len(keys) != num_variables:
        raise ValueError(
            f"{found} holds {len(keys)} of the model's {num_variables} variables"
            + (" (a partition is missing)" if found.partitioned else "")
        )
