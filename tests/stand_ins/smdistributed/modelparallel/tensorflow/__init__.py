"""Stand-in for `smdistributed.modelparallel.tensorflow` (SMP v1), which exists only inside
SageMaker's TF 2.6 training container. It follows the documented API (sagemaker-python-sdk,
doc/api/training/smp_versions/latest/smd_model_parallel_{common_api,tensorflow}.rst) and,
for checkpoints, the library's published source
(smdistributed/modelparallel/tensorflow/v2/checkpoint.py and v2/model.py):

- `init(config=None)`: the parameters come from `config`, else from SM_HP_MP_PARAMETERS
  (JSON, as SageMaker sets it); `partitions` is required, `microbatches` defaults to 1,
  `pipeline` is interleaved or simple;
- `DistributedModel`: a Keras Model whose call() may run only inside an `@smp.step`;
- `@smp.step` / `@smp.step(non_split_inputs=[...], input_split_axes={...})`: splits every
  tensor argument (and lists, tuples, dicts of them) along its batch axis into
  `microbatches` parts, runs the function once per microbatch in graph mode, and wraps every
  returned tensor in a `StepOutput` (`outputs`, `reduce_mean`, `reduce_sum`, `concat`,
  `stack`, `merge`, `accumulate`). The first call partitions the model, then runs the
  hooks registered with `register_post_partition_hook`, then the first forward pass;
- `CheckpointManager(checkpoint, directory, max_to_keep, checkpoint_name)`, as in
  checkpoint.py: a `tf.train.CheckpointManager` on `<directory>/mp_rank_<pp_rank>`, so every
  partition saves its own checkpoint there; `restore()` called before the first step is
  deferred to a post-partition hook (so nothing is restored until the first step runs), and
  restores, in `tf.io.gfile.walk` order, the latest checkpoint of *every* subdirectory of
  `<directory>` (its own: the latest when the manager was made) with expect_partial();
- ranks from the MPI launcher's OMPI_COMM_WORLD_* variables (default: one process standing
  for all `partitions`), rank r being mp_rank (= pp_rank) r % partitions of dp_rank
  r // partitions.

What a partition holds: in the library each process creates and saves only the variables of
its partition (model.py's save_model restores every `mp_rank_*` checkpoint to assemble the
whole model). Here one process computes everything, so a checkpoint written for partition
k is cut down to what partition k owns: the DistributedModel's variables are split into
`partitions` contiguous runs in creation order (the library decides by cost; nothing may
depend on which rule), each with its optimizer slots; what lies outside the model
(optimizer step, the loop's own variables) is in every partition's checkpoint, as
operations outside `DistributedModel.call()` run on every device. A process standing for all
partitions writes all of their directories.

Not the real library: no pipelining across processes, no device placement. `calls` records
what happened, for tests.
"""

import functools
import inspect
import json
import os
from typing import Any, Callable, Dict, List, Optional

import tensorflow as tf

PIPELINES = ("interleaved", "simple")
_config: Dict[str, Any] = {}
calls: List[tuple] = []
_in_step = [False]
_partitioned = [False]  # the first smp.step has partitioned the model
_post_partition: List[Callable[[], Any]] = []
_models: List["DistributedModel"] = []
_init_args: Dict[int, tuple] = {}


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
    _partitioned[0] = False
    _post_partition.clear()
    _models.clear()
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


def pp_rank() -> int:
    """The pipeline-parallel rank; in SMP v1 for TensorFlow the same as mp_rank()."""
    return mp_rank()


def _held_partitions() -> List[int]:
    if "OMPI_COMM_WORLD_SIZE" in os.environ:
        return [pp_rank()]
    return list(range(mp_size()))  # one process standing for every partition


def dp_rank() -> int:
    return rank() // mp_size()


def num_microbatches() -> int:
    return int(_require_init()["microbatches"])


def barrier() -> None:
    """One process: nothing to wait for."""


class DistributedModel(tf.keras.Model):
    """The model SMP partitions; its call() is traced inside smp.step only.

    As v2/model.py does, the first step builds a second copy of the model for partitioning
    by calling the subclass's constructor again with the arguments it was given, and
    refuses layers the two copies share (layers must be created in __init__)."""

    _duplicating = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__init__

        @functools.wraps(init)
        def recorded(self, *args, **kw):
            _init_args.setdefault(id(self), (args, kw))  # the outermost subclass's call
            init(self, *args, **kw)

        cls.__init__ = recorded

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not DistributedModel._duplicating:
            _models.append(self)

    def __call__(self, *args, **kwargs):
        if not _in_step[0]:
            raise RuntimeError("smp.DistributedModel can only be called inside an smp.step")
        return super().__call__(*args, **kwargs)


def _partition() -> None:
    """What the first smp.step does before anything runs: the CPU copy of the model."""
    for model in _models:
        args, kwargs = _init_args[id(model)]
        DistributedModel._duplicating = True
        try:
            copy = type(model)(*args, **kwargs)
        finally:
            DistributedModel._duplicating = False
        ours = {
            id(layer): layer
            for layer in model.submodules
            if isinstance(layer, tf.keras.layers.Layer)
        }
        shared = [layer.name for layer in copy.submodules if id(layer) in ours]
        if shared:
            raise ValueError(
                "Layers that have a build() method implemented must be created in the __init__ "
                "methods of an enclosing Layer or a smp.DistributedModel object. The following "
                f"layers are found to be in violation of this: {shared[:5]}."
            )


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
        if not _partitioned[0]:
            # Usually while a tf.function calling this step is traced; the library runs
            # its hooks "through eager context" (the register_post_partition_hook docs).
            with tf.init_scope():
                _partition()
                _partitioned[0] = True
                calls.append(("partition",))
                while _post_partition:
                    _post_partition.pop(0)()
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


def register_post_partition_hook(hook):
    """Documented: `hook` runs after the model is partitioned during the first smp.step,
    before its first forward pass. As the library's checkpoint.py uses it: the returned
    function, called before that, queues the call; called after it, runs at once."""

    def deferred(*args, **kwargs):
        if _partitioned[0]:
            return hook(*args, **kwargs)
        _post_partition.append(lambda: hook(*args, **kwargs))
        return None

    return deferred


# ---------------------------------------------------------------------------------------
# Checkpoints: one directory per partition, each holding that partition's part
# ---------------------------------------------------------------------------------------
_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def _owners() -> Dict[str, int]:
    """Variable name -> the partition that holds it (contiguous runs in creation order)."""
    if not _models:
        return {}
    variables = _models[-1].variables
    count, parts = len(variables), mp_size()
    return {v.name.split(":")[0]: i * parts // count for i, v in enumerate(variables)}


def _keep_partition(prefix: str, partition: int) -> None:
    """Rewrite the checkpoint at `prefix` to hold only what `partition` owns: its model
    variables and their optimizer slots, and everything outside the model."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    owners = _owners()
    foreign = {name for name, owner in owners.items() if owner != partition}
    reader = tf.train.load_checkpoint(prefix)
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(_GRAPH_KEY))

    def slot_of_foreign(full_name: str) -> bool:  # Keras >= 2.11 optimizers: "Adam/m/<var>"
        return any(full_name.endswith("/" + name) for name in foreign)

    dropped_nodes = set()
    for node_id, node in enumerate(graph.nodes):
        if any(a.full_name in foreign or slot_of_foreign(a.full_name) for a in node.attributes):
            dropped_nodes.add(node_id)
    for node in graph.nodes:  # Keras < 2.11 optimizers: slots listed by original variable
        for slot in node.slot_variables:
            if slot.original_variable_node_id in dropped_nodes:
                dropped_nodes.add(slot.slot_variable_node_id)
    dropped_keys = set()
    for node_id in dropped_nodes:
        node = graph.nodes[node_id]
        dropped_keys.update(a.checkpoint_key for a in node.attributes)
        del node.attributes[:]
    names = [
        n for n in reader.get_variable_to_dtype_map() if n != _GRAPH_KEY and n not in dropped_keys
    ]
    tensors = [tf.constant(reader.get_tensor(n)) for n in names]
    names.append(_GRAPH_KEY)
    tensors.append(tf.constant(graph.SerializeToString()))
    staged = prefix + ".partition-tmp"
    tf.raw_ops.SaveV2(
        prefix=staged, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors
    )
    directory = os.path.dirname(prefix)
    base = os.path.basename(prefix)
    for name in os.listdir(directory):
        if name.startswith(base + ".data-") or name == base + ".index":
            os.remove(os.path.join(directory, name))
    for name in os.listdir(directory):
        if name.startswith(os.path.basename(staged) + "."):
            os.replace(
                os.path.join(directory, name),
                os.path.join(directory, base + name[len(os.path.basename(staged)) :]),
            )


class CheckpointManager(tf.train.CheckpointManager):
    """checkpoint.py's CheckpointManager: `<directory>/mp_rank_<pp_rank>`, deferred restore."""

    def __init__(
        self, checkpoint, directory="/opt/ml/checkpoints", max_to_keep=None, checkpoint_name="ckpt"
    ):
        directory = str(directory)
        smp_directory = os.path.join(directory, "mp_rank_" + str(pp_rank()))
        super().__init__(
            checkpoint, smp_directory, max_to_keep=max_to_keep, checkpoint_name=checkpoint_name
        )
        self._base_directory = directory
        latest = tf.train.latest_checkpoint(smp_directory)
        self._ckpt_latest_prefix = latest.rsplit("/", 1)[1] if latest is not None else None
        # The other partitions this process stands for (none under an MPI launcher).
        self._others = {
            k: tf.train.CheckpointManager(
                checkpoint,
                os.path.join(directory, f"mp_rank_{k}"),
                max_to_keep=max_to_keep,
                checkpoint_name=checkpoint_name,
            )
            for k in _held_partitions()
            if k != pp_rank()
        }

    def save(self, *args, **kwargs):
        counter = self.checkpoint.save_counter
        start = int(counter.numpy())
        path = super().save(*args, **kwargs)
        _keep_partition(path, pp_rank())
        for partition, manager in self._others.items():
            counter.assign(start)  # one save, numbered alike in every partition's directory
            _keep_partition(manager.save(*args, **kwargs), partition)
        calls.append(("save", path))
        return path

    def restore(self, restore_path=None, restore_prefix=None):
        if not _partitioned[0]:
            calls.append(("restore deferred", self._base_directory))
            register_post_partition_hook(self._restore)(restore_path, restore_prefix)
        else:
            self._restore(restore_path, restore_prefix)

    def _restore(self, restore_path=None, restore_prefix=None):
        restore_path = self._base_directory if restore_path is None else restore_path
        rank_dirs = []
        for root, dirs, _ in tf.io.gfile.walk(restore_path):
            rank_dirs.extend(os.path.join(root, name) for name in dirs)
        for rank_dir in rank_dirs:
            restore_ckpt = None
            if restore_prefix:
                restore_ckpt = os.path.join(rank_dir, restore_prefix)
            elif os.path.join(restore_path, "mp_rank_" + str(pp_rank())) == self.directory:
                if self._ckpt_latest_prefix:
                    restore_ckpt = os.path.join(rank_dir, self._ckpt_latest_prefix)
            else:
                restore_ckpt = tf.train.latest_checkpoint(rank_dir)
            if restore_ckpt and os.path.exists(restore_ckpt + ".index"):
                self.checkpoint.restore(restore_ckpt).expect_partial()
                calls.append(("restore", restore_ckpt))
