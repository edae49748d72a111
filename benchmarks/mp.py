"""What the TF pipeline (--mode mp) buys and costs on this machine: memory per device, and
throughput.

Memory (--what memory): model parallelism exists so that inputs too large for one device
train anyway. For each input size of a ladder, at batch 1, this measures the memory one
training step needs on one device (single) and on each of the 2 stages of the pipeline
plan `enet train --mode mp --partitions 2` uses, then reports the largest size of the
ladder that fits a per-device cap. A device's need = its variables with Adam's two slots
(counted exactly) + the inputs it receives + the peak of TensorFlow's allocator above what
was allocated before, while its forward pass, backward pass and update run
(`tf.config.experimental.get_memory_info`; logical CPU devices share one allocator, so each
stage is run alone, from the activations the earlier stages hand it, with a random
gradient standing for the one the later stage sends back).

Throughput (--what throughput): one training step at 360x480, batch 4, on one device and
as a 2-stage pipeline with 1 and 2 microbatches; medians after warm-up.

Run: python benchmarks/mp.py [--what all] [--cap-mb 1024] [--steps 5] [--write]  (TF >= 2.13:
the CPU allocator statistics are not available in older TensorFlow; --write: also
docs/results/mp_memory.{json,md} and mp_throughput.{json,md}, the distributed guide's tables)
"""

import argparse
import os
import statistics
import time

# TensorFlow keeps allocator statistics on the CPU only with its BFC allocator there: without
# it, reset_memory_stats("CPU:0") is refused. Set before TensorFlow starts.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

from _common import machine, publish

from enet_cli.core.config import RuntimeConfig
from enet_cli.train.engines.pipeline import PipelineEngine

# Logical devices must exist before TensorFlow starts: make them first.
PIPELINE = PipelineEngine(RuntimeConfig(mode="mp", partitions=2, microbatches=1))

from enet_cli.core.backend import keras, tf  # noqa: E402

tf.get_logger().setLevel("ERROR")  # retracing warnings: every size traces anew, on purpose
from enet_cli.core.config import ModelConfig, TrainConfig  # noqa: E402
from enet_cli.model import build_enet  # noqa: E402
from enet_cli.model.enet import INPUT, model_blocks, run_blocks  # noqa: E402
from enet_cli.train.engines.pipeline import plan_stages  # noqa: E402
from enet_cli.train.engines.single import SingleEngine  # noqa: E402
from enet_cli.train.optim import build_update  # noqa: E402
from enet_cli.train.task import SegmentationTask  # noqa: E402

TASK = SegmentationTask(11, 11, tuple([1.0] * 11))
LADDER = [(360, 480), (720, 960), (1080, 1440), (1440, 1920), (2160, 2880)]
MB = 2**20


def _update(model):
    return build_update(TrainConfig(), model.trainable_variables)


def _batch(size, batch):
    images = tf.random.uniform((batch, *size, 3))
    labels = tf.random.uniform((batch, *size), maxval=11, dtype=tf.int32)
    return images, labels


# ---- throughput ---------------------------------------------------------------------------
def _step(engine, size, batch):
    cfg = ModelConfig(num_classes=11)
    if engine is None:
        with tf.device("/CPU:0"):
            model = build_enet(cfg, size)
        step = SingleEngine().make_train_step(model, _update(model), TASK)
    else:
        model = engine.build_model(cfg, size)
        step = engine.make_train_step(model, _update(model), TASK)
    return step, _batch(size, batch)


def rate(engine, steps: int) -> float:
    step, batch = _step(engine, (360, 480), 4)
    with tf.device("/CPU:0"):
        for _ in range(2):
            step(batch)["loss"].numpy()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step(batch)["loss"].numpy()
            times.append(time.perf_counter() - start)
    return 4 / statistics.median(times)


def throughput(steps: int) -> list:
    base = rate(None, steps)
    print(f"360x480 batch 4, single: {base:.2f} images/s")
    rows = [("single, 1 device", f"{base:.2f}", "1.00x")]
    for microbatches in (1, 2):
        PIPELINE.microbatches = microbatches
        r = rate(PIPELINE, steps)
        print(
            f"360x480 batch 4, mp 2 stages x {microbatches} microbatch(es): {r:.2f} images/s "
            f"({r / base:.2f}x single)"
        )
        name = f"mp, 2 stages x {microbatches} microbatch(es)"
        rows.append((name, f"{r:.2f}", f"{r / base:.2f}x"))
    return rows


# ---- memory -------------------------------------------------------------------------------
def _bytes(tensors) -> int:
    return sum(int(t.shape.num_elements()) * t.dtype.size for t in tensors)


def _transient(fn, *args) -> int:
    """Peak allocator bytes above the current ones while fn runs (traced beforehand)."""
    fn(*args)
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    fn(*args)
    return tf.config.experimental.get_memory_info("CPU:0")["peak"] - before


def _single_need(model, size) -> int:
    step = SingleEngine().make_train_step(model, _update(model), TASK)
    batch = _batch(size, 1)
    return 3 * _bytes(model.trainable_variables) + _bytes(batch) + _transient(step, batch)


def _stage_needs(model, size):
    """Memory each pipeline stage needs, each run alone on what the earlier stages send."""
    blocks = {b.layer.name: b for b in model_blocks(model)}
    stages = plan_stages(model, ["/CPU:0", "/CPU:1"])
    images, _ = _batch(size, 1)
    tensors = {INPUT: images}
    needs = []
    for k, stage in enumerate(stages):
        own = [blocks[n] for n in stage.blocks]
        produced = {b.layer.name for b in own}
        inputs = sorted({n for b in own for n in b.inputs} - produced)
        later = {n for s in stages[k + 1 :] for n in s.blocks}
        sent = [n for n in stage.blocks if n == stage.blocks[-1] or _consumed(blocks, n, later)]
        received = {n: tensors[n] for n in inputs}
        variables = [v for b in own for v in b.layer.trainable_variables]
        optimizer = keras.optimizers.Adam(1e-3)
        outputs = run_blocks(own, received, training=False)
        upstream = [tf.random.normal(tf.shape(outputs[n])) for n in sent]

        @tf.function(autograph=False)
        def stage_step(received, upstream, own=own, variables=variables, sent=sent, opt=optimizer):
            with tf.GradientTape() as tape:
                tape.watch(list(received.values()))
                out = run_blocks(own, received, training=True)
                loss = tf.add_n([tf.reduce_sum(out[n] * g) for n, g in zip(sent, upstream)])
            grads = tape.gradient(loss, variables + list(received.values()))
            opt.apply_gradients(zip(grads[: len(variables)], variables))
            return grads[len(variables) :]  # what goes back to the earlier stage

        transient = _transient(stage_step, received, upstream)
        received_bytes = _bytes(received.values()) + _bytes(upstream)
        needs.append(3 * _bytes(variables) + received_bytes + transient)
        tensors.update(outputs)
    return needs


def _consumed(blocks, name, later) -> bool:
    return any(name in blocks[n].inputs for n in later)


def memory(cap_mb: float) -> tuple:
    """Prints and returns the table rows and the sentence saying what fits under the cap."""
    fits = {"single": None, "mp": None}
    rows, said = [], []
    for size in LADDER:
        model = build_enet(ModelConfig(num_classes=11, dropout=0, stage1_dropout=0), size)
        single = _single_need(model, size)
        needs = _stage_needs(model, size)
        worst = max(needs)
        print(
            f"{size[0]}x{size[1]} batch 1: single {single / MB:.0f} MB; mp 2 stages "
            + " + ".join(f"{n / MB:.0f}" for n in needs)
            + f" MB (largest stage {worst / single:.2f}x single)"
        )
        rows.append(
            (
                f"{size[0]}x{size[1]}",
                f"{single / MB:,.0f} MB",
                *(f"{n / MB:,.0f} MB" for n in needs),
                f"{worst / single:.2f}",
            )
        )
        if single <= cap_mb * MB:
            fits["single"] = size
        if worst <= cap_mb * MB:
            fits["mp"] = size
        keras.backend.clear_session()
    for name, size in fits.items():
        text = f"{size[0]}x{size[1]}" if size else f"none (smallest {LADDER[0]})"
        said.append(f"{name}: {text}")
        print(
            f"largest input of the ladder that trains within {cap_mb:.0f} MB/device, {name}: {text}"
        )
    return rows, f"Largest input of the ladder within {cap_mb:.0f} MB per device: " + "; ".join(
        said
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--what", choices=["memory", "throughput", "all"], default="all")
    parser.add_argument("--cap-mb", type=float, default=1024)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="write docs/results/mp_*")
    args = parser.parse_args()
    at_start = machine()
    print(f"machine: {at_start}; TensorFlow {tf.__version__}")
    if args.what in ("memory", "all"):
        rows, fits = memory(args.cap_mb)
        if args.write:
            command = f"python benchmarks/mp.py --what memory --cap-mb {args.cap_mb:g} --write"
            header = ("input", "single", "mp stage 0", "mp stage 1", "largest stage / single")
            note = (
                "Batch 1; a device's need is its variables with Adam's two slots, what it "
                "receives, and the allocator's peak while its forward, backward and update run, "
                f"each stage measured alone. {fits}."
            )
            print(f"wrote {publish('mp_memory', command, header, rows, note, at_start)}")
    if args.what in ("throughput", "all"):
        rows = throughput(args.steps)
        if args.write:
            command = f"python benchmarks/mp.py --what throughput --steps {args.steps} --write"
            header = ("run", "images/s", "vs single")
            note = (
                f"360x480, batch 4, median of {args.steps} steps after warm-up; the two "
                "logical devices share this machine's cores."
            )
            print(f"wrote {publish('mp_throughput', command, header, rows, note, at_start)}")


if __name__ == "__main__":
    main()
