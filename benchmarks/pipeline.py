"""Input pipeline throughput vs what a training step consumes, measured in one run.

Steady state over epochs of 192 records (the sample's 24 train images, each 8 times).

The pipeline (decode + flip + random scale-and-crop + colour jitter + batch, at 360x480)
must deliver at least 10x the images/s of an ENet training step (batch 4, float32, Adam),
so that data never stalls the model. Run: python benchmarks/pipeline.py [--write]
(--write: also docs/results/pipeline.{json,md}, the table the datasets guide shows)
"""

import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from _common import FIXTURES, Timer, describe, machine, publish

from enet_cli.core.backend import keras, tf
from enet_cli.core.config import DataConfig, ModelConfig, PreprocessConfig
from enet_cli.data.dataset import make_dataset
from enet_cli.data.manifest import load_manifest
from enet_cli.data.preprocess import preprocess
from enet_cli.model import build_enet

BATCH = 4
COPIES = 8  # 24 sample images x 8 = 192 per epoch, about half of CamVid's 367
EPOCHS = 2


def enlarged_sample(dest: Path) -> Path:
    """The SegNet sample with each train image repeated COPIES times under new names."""
    src = FIXTURES / "camvid-segnet-mini"
    for split, annot in (("train", "trainannot"), ("val", "valannot")):
        (dest / split).mkdir(parents=True)
        (dest / annot).mkdir()
        copies = COPIES if split == "train" else 1
        for image in sorted((src / split).glob("*.png")):
            for k in range(copies):
                shutil.copy(image, dest / split / f"{image.stem}_{k}.png")
                shutil.copy(src / annot / image.name, dest / annot / f"{image.stem}_{k}.png")
    return dest


def pipeline_rate(cfg: DataConfig, manifest) -> float:
    images = 0
    with Timer() as t:
        for epoch in range(EPOCHS):
            for batch, _ in make_dataset(cfg, manifest, "train", BATCH, True, epoch=epoch):
                images += int(batch.shape[0])
    return images / t.seconds


def train_rate(steps: int = 6) -> float:
    model = build_enet(ModelConfig(num_classes=11), (360, 480))
    optimizer = keras.optimizers.Adam(5e-4)
    images = tf.random.uniform((BATCH, 360, 480, 3))
    labels = tf.random.uniform((BATCH, 360, 480), maxval=11, dtype=tf.int32)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            )
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    step()  # trace and warm up
    with Timer() as t:
        for _ in range(steps):
            step().numpy()
    return steps * BATCH / t.seconds


def main() -> None:
    at_start = machine()
    print(f"machine: {at_start}; TensorFlow {tf.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        raw = enlarged_sample(Path(tmp) / "raw")
        preprocess(PreprocessConfig(input_dir=raw, output_dir=data_dir, workers=2))
        manifest = load_manifest(data_dir)
        variants = {
            "decode (the recipe: no augmentation)": DataConfig(data_dir=data_dir),
            "decode + flip (--augment)": DataConfig(data_dir=data_dir, augment=True),
            "decode + flip + scale-and-crop + colour jitter": DataConfig(
                data_dir=data_dir, augment=True, random_scale=(0.5, 2.0), color_jitter=0.2
            ),
        }
        results = {}
        for name, cfg in variants.items():
            pipeline_rate(cfg, manifest)  # warm-up: page cache, tracing
            rates = [pipeline_rate(cfg, manifest) for _ in range(3)]
            results[name] = rates
            print(f"pipeline {name}, batch {BATCH}: images/s {describe(rates)}")
        train = [train_rate() for _ in range(2)]
        print(f"training step, batch {BATCH}, 360x480, float32: images/s {describe(train)}")
        step = statistics.median(train)
        slowest = min(statistics.median(r) for r in results.values())
        verdict = f"pipeline / training ratio (slowest variant): {slowest / step:.1f}x"
        print(verdict)
        if "--write" in sys.argv:
            header = ("pipeline", "images/s", f"vs. a training step ({step:.1f} images/s)")
            rows = [
                (name, describe(r), f"{statistics.median(r) / step:.0f}x")
                for name, r in results.items()
            ]
            note = (
                f"192 records per epoch, batch {BATCH}, 360x480; the training step: ENet, "
                f"float32, Adam, {describe(train)} images/s. Target: the slowest pipeline at "
                f"least 10x the step ({verdict.split(': ')[1]})."
            )
            command = "python benchmarks/pipeline.py --write"
            print(f"wrote {publish('pipeline', command, header, rows, note, at_start)}")


if __name__ == "__main__":
    main()
