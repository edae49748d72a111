"""mp on TensorFlow's own machinery: ENet split into K pipeline stages on K devices.

Model parallelism exists for ENet to train inputs and batches larger than one device's
memory. Without SageMaker's SMP library the engine does what SMP v1 does, by hand:

- the blocks (model/enet.py `enet_blocks`) are cut into K contiguous stages balanced by
  multiply-adds (`plan_stages`: the cut that minimises the most expensive stage), and stage
  k's blocks - their variables, activations and optimizer slots - live on device k: GPU k,
  or logical CPU device k when there are no GPUs (so the engine runs, and is tested, here);
- each batch is split into M microbatches that go through the stages one after the other;
  TensorFlow's executor overlaps microbatch m+1 on stage 1 with microbatch m on stage 2;
  `--pipeline` orders the backward passes as SMP's parameter does (see PipelineSchedule);
- gradients are accumulated over the microbatches and applied in one optimizer step; the
  loss is normalised by the non-void pixel count of the whole batch, so with M microbatches
  the step's gradient is the sum of the microbatches' gradients of their share of the loss;
- batch norm normalises each microbatch by its own statistics, as SMP does.
"""

from typing import List, NamedTuple, Sequence

from enet_cli.core import ui
from enet_cli.core.backend import keras, tf
from enet_cli.core.config import PipelineSchedule, RuntimeConfig
from enet_cli.core.errors import ConfigError, EnvironmentProblem
from enet_cli.model.enet import INPUT, build_enet, model_blocks, run_blocks
from enet_cli.model.summary import summarize
from enet_cli.train.engines.base import Engine
from enet_cli.train.step import objective


class Stage(NamedTuple):
    device: str
    blocks: List[str]
    params: int
    multiply_adds: int


def balanced_cuts(costs: Sequence[int], parts: int) -> List[int]:
    """Start index of each of `parts` contiguous groups minimising the largest group sum
    (dynamic programming over cut positions; 31 blocks, so exact is cheap)."""
    n = len(costs)
    if parts > n:
        raise ConfigError(f"--partitions {parts} is more than ENet's {n} blocks")
    prefix = [0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0
    for k in range(1, parts + 1):
        for end in range(k, n + 1):
            for start in range(k - 1, end):
                value = max(best[k - 1][start], prefix[end] - prefix[start])
                if value < best[k][end]:
                    best[k][end], cut[k][end] = value, start
    starts, end = [], n
    for k in range(parts, 0, -1):
        start = cut[k][end]
        starts.append(start)
        end = start
    return sorted(starts)


def plan_stages(model: keras.Model, devices: Sequence[str]) -> List[Stage]:
    """Stages for `model` on `devices`, balanced by the blocks' multiply-adds."""
    rows = {row.name: row for row in summarize(model)}
    blocks = model_blocks(model)
    costs = [rows[b.layer.name].multiply_adds if b.layer.name in rows else 0 for b in blocks]
    starts = [*balanced_cuts(costs, len(devices)), len(blocks)]
    stages = []
    for k, device in enumerate(devices):
        names = [b.layer.name for b in blocks[starts[k] : starts[k + 1]]]
        stages.append(
            Stage(
                device=device,
                blocks=names,
                params=sum(rows[n].params for n in names if n in rows),
                multiply_adds=sum(rows[n].multiply_adds for n in names if n in rows),
            )
        )
    return stages


def describe_plan(stages: Sequence[Stage]) -> str:
    total = sum(s.multiply_adds for s in stages) or 1
    lines = []
    for k, stage in enumerate(stages):
        first, last = stage.blocks[0], stage.blocks[-1]
        lines.append(
            f"  stage {k} on {stage.device}: {first} .. {last} ({len(stage.blocks)} blocks), "
            f"{stage.params:,} parameters, {stage.multiply_adds / 1e9:.2f} G multiply-adds "
            f"({100 * stage.multiply_adds / total:.0f}%)"
        )
    return "\n".join(lines)


def stage_devices(partitions: int) -> List[str]:
    """GPU k for stage k; without enough GPUs, `partitions` logical CPU devices.

    Logical devices can only be made before TensorFlow's runtime starts: the engine is
    created before anything else touches TensorFlow.
    """
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) >= partitions:
        return [f"/GPU:{k}" for k in range(partitions)]
    if gpus:
        raise ConfigError(
            f"--partitions {partitions} needs {partitions} GPUs; this machine has {len(gpus)}"
        )
    cpu = tf.config.list_physical_devices("CPU")[0]
    existing = tf.config.get_logical_device_configuration(cpu) or []
    if len(existing) < partitions:
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(partitions)]
            )
        except RuntimeError:
            raise EnvironmentProblem(
                f"--partitions {partitions}: TensorFlow started before the CPU could be split "
                f"into {partitions} logical devices; run enet train in a fresh process"
            ) from None
    return [f"/CPU:{k}" for k in range(partitions)]


class PipelineEngine(Engine):
    name = "tf"

    def __init__(self, runtime: RuntimeConfig):
        self.partitions = runtime.partitions
        self.microbatches = runtime.microbatches
        self.schedule = runtime.pipeline
        self.devices = stage_devices(self.partitions)
        self.stages: List[Stage] = []

    def describe(self) -> str:
        return (
            f"tf engine, pipeline of {self.partitions} stages on {', '.join(self.devices)}, "
            f"{self.microbatches} microbatch(es) per batch, {self.schedule.value} schedule"
        )

    def build_model(self, cfg, image_size):
        """Build on the stage devices: each block's variables (and later its optimizer
        slots) are created on the device of its stage."""
        measured = build_enet(cfg, image_size)  # to measure the blocks
        self.stages = plan_stages(measured, self.devices)
        device_of = {name: s.device for s in self.stages for name in s.blocks}
        model = build_enet(cfg, image_size, placement=device_of.get)
        # The first build drew the initial weights from the seeded generators: keep those,
        # so a run starts from the same weights in every mode.
        model.set_weights(measured.get_weights())
        ui.info("pipeline stages:\n" + describe_plan(self.stages))
        return model

    def distribute_dataset(self, dataset_fn):
        return dataset_fn(None)

    def _forward(self, model, images, training):
        blocks = {b.layer.name: b for b in model_blocks(model)}
        tensors = {INPUT: images}
        for stage in self.stages:
            with tf.device(stage.device):
                tensors = run_blocks([blocks[n] for n in stage.blocks], tensors, training)
        return tensors[self.stages[-1].blocks[-1]]

    def make_train_step(self, model, update, task):
        m = self.microbatches

        def forward(x, y, total_weight):
            """One microbatch: its share of the batch loss, and its confusion matrix."""
            logits = self._forward(model, x, True)
            return objective(task, logits, y, total_weight), task.confusion(logits, y)

        def interleaved(parts, total_weight):
            """A tape per microbatch: its backward pass frees its activations before the
            next microbatch's forward pass needs memory."""
            grads, losses, confusions = None, [], []
            for x, y in parts:
                with tf.GradientTape() as tape:
                    loss, confusion = forward(x, y, total_weight)
                part = update.gradients(tape, loss)
                grads = part if grads is None else [a + b for a, b in zip(grads, part)]
                losses.append(loss)
                confusions.append(confusion)
            return grads, tf.add_n(losses), tf.add_n(confusions)

        def simple(parts, total_weight):
            """GPipe: every forward pass, then one backward pass over all of them (every
            microbatch's activations alive at once)."""
            with tf.GradientTape() as tape:
                results = [forward(x, y, total_weight) for x, y in parts]
                loss = tf.add_n([r[0] for r in results])
            return update.gradients(tape, loss), loss, tf.add_n([r[1] for r in results])

        schedule = simple if self.schedule == PipelineSchedule.simple else interleaved

        @tf.function(autograph=False)
        def step(batch):
            images, labels = batch
            parts = list(zip(tf.split(images, m), tf.split(labels, m)))
            total_weight = tf.add_n([task.weight_sum(y) for _, y in parts])
            grads, loss, confusion = schedule(parts, total_weight)
            update.apply(grads)
            return {"loss": loss, "confusion": confusion}

        return step

    def make_eval_step(self, model, task):
        @tf.function(autograph=False)
        def step(batch):
            images, labels = batch
            return task.eval_terms(self._forward(model, images, False), labels)

        return step
