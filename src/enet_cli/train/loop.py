"""The ONE training loop. Every mode runs this; what differs by mode is the engine it is given.

`fit()` builds the model and optimizer in the engine's scope, resumes from the run's last
checkpoint, trains epoch by epoch with validation, writes one metrics line per epoch,
TensorBoard scalars and checkpoints (recent + best by val mean IoU), stops cleanly on
SIGTERM/SIGINT after saving, and exports a SavedModel with metrics.json at the end. Only
the chief engine process writes into the run (workers whose saving is a collective save
too, into scratch directories the engine removes).
"""

import json
import math
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from enet_cli import outputs, ui
from enet_cli.backend import keras, tf
from enet_cli.config import EnetConfig, Precision
from enet_cli.data.manifest import Manifest, check_batch_size, load_manifest
from enet_cli.data.pipeline import check_data, make_dataset, reading_shards
from enet_cli.errors import Interrupted, PeerLost, TrainingError
from enet_cli.model import fused
from enet_cli.sagemaker.contract import RunPaths
from enet_cli.train.checkpoints import find_checkpoint
from enet_cli.train.engines.base import Engine
from enet_cli.train.engines.table import check_microbatches
from enet_cli.train.metrics import format_metrics_line, segmentation_metrics
from enet_cli.train.optim import (
    build_lr_schedule,
    build_optimizer,
    build_update,
    learning_rate_at,
    seed_everything,
)
from enet_cli.train.state import RunMeta, TrainState, check_compatible
from enet_cli.train.task import build_task


def _warn_without_kernel(engine: Engine) -> None:
    """Say so when the fused PReLU kernel could not be built (not when turned off or on GPU)."""
    reason = fused.unavailable_reason()
    if reason and engine.is_chief:
        ui.warn(
            f"no fused PReLU kernel ({reason}): training runs TensorFlow's composed ops "
            "instead, the same numbers about 1.2x slower"
        )


def _finite(value: float) -> bool:
    return not (math.isnan(value) or math.isinf(value))


class _Logger:
    """Metrics lines on stdout and TensorBoard scalars, on the chief only."""

    def __init__(self, engine: Engine, logs: Path):
        self.chief = engine.is_chief
        self.writers = {}
        if self.chief:
            for split in ("train", "val"):
                self.writers[split] = tf.summary.create_file_writer(str(logs / split))

    def scalars(self, split: str, step: int, values: Dict[str, float]) -> None:
        if not self.chief:
            return
        with self.writers[split].as_default():
            for name, value in values.items():
                if value is not None and _finite(float(value)):
                    tf.summary.scalar(name, float(value), step=step)
            self.writers[split].flush()

    def line(self, values: Dict[str, float]) -> None:
        if self.chief:
            print(format_metrics_line(values), flush=True)


def _evaluate(eval_step, dataset, task, engine: Engine) -> Dict[str, object]:
    totals = {
        "loss_sum": np.zeros([], np.float64),
        "weight_sum": np.zeros([], np.float64),
        "confusion": np.zeros((task.num_classes, task.num_classes), np.int64),
    }
    for batch in dataset:
        out = eval_step(batch)
        for key in totals:
            totals[key] = totals[key] + out[key].numpy().astype(totals[key].dtype)
    totals = engine.sum_over_workers(totals)
    confusion = np.asarray(totals["confusion"]).astype(np.int64)
    weight_sum = float(totals["weight_sum"])
    metrics = segmentation_metrics(confusion)
    metrics["loss"] = float(totals["loss_sum"]) / weight_sum if weight_sum else float("nan")
    metrics["confusion"] = confusion
    return metrics


def fit(cfg: EnetConfig, paths: RunPaths, engine: Engine) -> Dict[str, object]:
    """Train according to `cfg`, writing under `paths`; returns the final metrics."""
    manifest = load_manifest(cfg.data.data_dir, True, splits=["train", "val"])
    check_data(cfg.data, manifest)
    per_replica_batch = cfg.train.batch_size  # the batch's meaning: engines/table.py
    check_batch_size(manifest, "train", per_replica_batch, engine.num_replicas)
    check_microbatches(per_replica_batch, engine.microbatches)
    global_batch = per_replica_batch * engine.num_replicas
    if engine.is_chief:  # refused now, not after hours of training
        outputs.check_replaceable(paths.export, "export", True, "the run's model directory")
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(cfg.train.precision.value)
    try:
        # From here on SIGTERM/SIGINT ask for a clean stop (after the step in flight, with a
        # checkpoint), also while the model is built and traced.
        with reading_shards(cfg.data.data_dir), ui.StopRequest().installed() as stop:
            return _fit(cfg, paths, engine, manifest, global_batch, per_replica_batch, stop)
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, without saving
        last = find_checkpoint(paths.checkpoints) or "none yet"
        raise Interrupted(
            f"stopped at once by a second Ctrl-C, nothing saved; the last checkpoint is {last}: "
            f"run the same command again to resume from it"
        ) from None
    except (tf.errors.UnavailableError, tf.errors.CancelledError) as err:
        first = str(getattr(err, "message", err)).strip().splitlines()[0][:160]
        raise PeerLost(
            f"lost contact with another worker ({first}); run the same command again to "
            f"resume from the last checkpoint"
        ) from None
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
        engine.close()


def _fit(
    cfg,
    paths: RunPaths,
    engine: Engine,
    manifest: Manifest,
    global_batch: int,
    per_replica_batch: int,
    stop: ui.StopRequest,
) -> Dict[str, object]:
    tcfg = cfg.train
    task = build_task(manifest, tcfg.class_weighting)
    model_cfg = cfg.model.model_copy(update={"num_classes": manifest.num_classes})
    meta = RunMeta.from_manifest(model_cfg, manifest)
    if cfg.runtime.resume:
        check_compatible(paths.checkpoints, meta)
    steps_per_epoch = manifest.splits["train"].records // global_batch
    total_steps = min(tcfg.steps or 10**12, tcfg.epochs * steps_per_epoch)
    epochs = min(tcfg.epochs, -(-total_steps // steps_per_epoch))
    if tcfg.scale_lr:  # the linear scaling rule: N replicas, N times the batch, N times the lr
        tcfg = tcfg.model_copy(update={"learning_rate": tcfg.learning_rate * engine.num_replicas})
    schedule = build_lr_schedule(tcfg, steps_per_epoch, total_steps)

    seed_everything(tcfg.seed)
    with engine.scope():
        model = engine.build_model(model_cfg, manifest.image_size)
        optimizer = build_optimizer(tcfg, schedule)
        state = TrainState(
            model,
            optimizer,
            task.num_classes,
            paths.checkpoints,
            tcfg.keep_checkpoints,
            write_directory=engine.checkpoint_dir(paths.checkpoints),
            backend=engine.checkpoints,
        )
        resumed = state.restore_latest() if cfg.runtime.resume else None
    if engine.is_chief:
        # Everything is checked and built: only now do old checkpoints make way (kept aside).
        if not cfg.runtime.resume:
            moved = outputs.set_aside(paths.checkpoints)
            if moved is not None:
                ui.info(f"--no-resume: the previous checkpoints were moved to {moved}")
        paths.checkpoints.mkdir(parents=True, exist_ok=True)
        state.remove_partial_writes()
        meta.write(paths.checkpoints)
        outputs.write_atomic(
            paths.outputs / "config.json",
            cfg.model_copy(update={"model": model_cfg}).model_dump_json(indent=2) + "\n",
        )
    step = int(optimizer.iterations.numpy())
    start_epoch = int(state.epoch.numpy())
    if tcfg.precision == Precision.float32 and fused.prelu() is None:
        _warn_without_kernel(engine)
    ui.info(
        f"{engine.describe()}; global batch {global_batch} ({per_replica_batch} per replica); "
        f"{steps_per_epoch} steps/epoch; "
        + (
            f"resuming from {resumed} (epoch {start_epoch + 1}, step {step})"
            if resumed
            else "starting from scratch"
        )
    )

    update = build_update(tcfg, model.trainable_variables, optimizer)
    train_step = engine.make_train_step(model, update, task)
    eval_step = engine.make_eval_step(model, task)
    logger = _Logger(engine, paths.logs)
    progress = ui.StepProgress(enabled=engine.is_chief)
    history = History(paths.checkpoints if engine.is_chief else None, start_epoch)
    last_val: Optional[Dict[str, object]] = None

    def datasets(split: str, epoch: int, skip_batches: int = 0):
        training = split == "train"

        def dataset_fn(input_context):
            return make_dataset(
                cfg.data,
                manifest,
                split,
                per_replica_batch,
                training,
                seed=tcfg.seed,
                epoch=epoch,
                input_context=input_context,
                skip_batches=skip_batches,
            )

        return engine.distribute_dataset(dataset_fn)

    def validate(epoch: int) -> Dict[str, object]:
        metrics = _evaluate(eval_step, datasets("val", epoch), task, engine)
        logger.scalars(
            "val",
            step,
            {
                "loss": metrics["loss"],
                "mean_iou": metrics["mean_iou"],
                "pixel_accuracy": metrics["pixel_accuracy"],
                "class_accuracy": metrics["class_accuracy"],
                **{f"iou/{n}": v for n, v in zip(manifest.class_names, metrics["iou"].values())},
            },
        )
        return metrics

    stopping = ""
    for epoch in range(start_epoch, epochs):
        done = int(state.step_in_epoch.numpy())
        todo = min(steps_per_epoch, total_steps - step + done)
        progress.start_epoch(epoch, epochs, todo, done)
        started, images = time.monotonic(), 0
        warm = epoch > start_epoch  # a process's first step traces the graph: not timed
        for batch in datasets("train", epoch, skip_batches=done):
            if done >= todo:
                break
            out = train_step(batch)
            loss = float(out["loss"])
            if not _finite(loss):
                progress.close()
                last = state.latest() or "none yet"
                raise TrainingError(
                    f"loss became {loss} at step {step + 1} (epoch {epoch + 1}); stopped "
                    f"without saving it. Last good checkpoint: {last}. Lower "
                    f"--learning-rate or use --precision float32"
                )
            step += 1
            done += 1
            if warm:
                images += global_batch
            else:
                started, warm = time.monotonic(), True
            state.step_in_epoch.assign(done)
            state.epoch_loss_sum.assign_add(loss)
            state.epoch_confusion.assign_add(tf.cast(out["confusion"], tf.int64))
            rate = images / max(time.monotonic() - started, 1e-9)
            progress.advance(loss, rate)
            # ckpt-N is a pure function of N: after an epoch's last step it is the state
            # after that epoch's validation and bookkeeping, saved below, never this one.
            epoch_ends = done == steps_per_epoch
            every = tcfg.checkpoint_every_steps
            if every and step % every == 0 and not epoch_ends:
                state.save()
            if tcfg.val_every_steps and step % tcfg.val_every_steps == 0 and done < todo:
                mid = validate(epoch)
                logger.line(
                    {
                        "epoch": epoch + 1,
                        "step": step,
                        "val_loss": mid["loss"],
                        "val_mean_iou": mid["mean_iou"],
                    }
                )
            if engine.any_worker(stop.requested):
                stopping = stop.signal_name or "another worker was stopped"
                if epoch_ends:  # finish the epoch (validation, best, ckpt), then stop
                    break
                progress.close()
                state.save()
                raise _interrupted(stopping, step, epoch, state)
        progress.close()
        if done < steps_per_epoch:  # --steps ended training inside this epoch
            state.save()
            last_val = validate(epoch)
            logger.line(
                {
                    "epoch": epoch + 1,
                    "step": step,
                    "val_loss": last_val["loss"],
                    "val_mean_iou": last_val["mean_iou"],
                }
            )
            break
        seconds = time.monotonic() - started
        train_metrics = segmentation_metrics(state.epoch_confusion.numpy())
        train_loss = float(state.epoch_loss_sum.numpy()) / max(done, 1)
        last_val = validate(epoch)
        values = {
            "epoch": epoch + 1,
            "step": step,
            "loss": train_loss,
            "mean_iou": train_metrics["mean_iou"],
            "pixel_accuracy": train_metrics["pixel_accuracy"],
            "class_accuracy": train_metrics["class_accuracy"],
            "val_loss": last_val["loss"],
            "val_mean_iou": last_val["mean_iou"],
            "val_pixel_accuracy": last_val["pixel_accuracy"],
            "val_class_accuracy": last_val["class_accuracy"],
            "lr": learning_rate_at(schedule, step),
            "images_per_sec": images / seconds if images else None,
        }
        history.add(epoch, values)
        logger.line(values)
        logger.scalars(
            "train",
            step,
            {
                k: v
                for k, v in values.items()
                if k in ("loss", "mean_iou", "pixel_accuracy", "lr", "images_per_sec")
            },
        )
        state.epoch.assign(epoch + 1)
        state.step_in_epoch.assign(0)
        state.epoch_loss_sum.assign(0.0)
        state.epoch_confusion.assign(tf.zeros_like(state.epoch_confusion))
        improved = _finite(last_val["mean_iou"]) and (
            last_val["mean_iou"] > float(state.best_val_miou.numpy())
        )
        if improved:
            state.best_val_miou.assign(last_val["mean_iou"])
            state.save_best()  # before the regular one: a kill between the two redoes both
        state.save()
        if stopping:
            raise _interrupted(stopping, step, epoch, state)
        if step >= total_steps:
            break

    return _finish(cfg, paths, engine, state, meta, history.epochs, last_val, manifest)


def _interrupted(reason: str, step: int, epoch: int, state: TrainState) -> Interrupted:
    return Interrupted(
        f"{reason}: stopped at step {step} (epoch {epoch + 1}); checkpoint "
        f"{state.latest()} saved; run the same command again to resume"
    )


class History:
    """Each finished epoch's metrics, kept beside the checkpoints (the chief's) so that a
    resumed run's metrics.json still holds every epoch. Keyed by epoch: an epoch redone
    after a kill (its checkpoint never written) replaces its own entry with equal values."""

    NAME = "history.json"

    def __init__(self, directory: Optional[Path], start_epoch: int):
        self.path = None if directory is None else Path(directory) / self.NAME
        self.epochs: List[Dict[str, float]] = []
        if self.path is not None and self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
            except (OSError, ValueError):
                saved = []
            self.epochs = [e for e in saved if int(e.get("epoch", 0)) <= start_epoch]

    def add(self, epoch: int, values: Dict[str, float]) -> None:
        self.epochs = [e for e in self.epochs if int(e["epoch"]) <= epoch] + [values]
        if self.path is not None:
            outputs.write_atomic(self.path, outputs.json_text(self.epochs, indent=None))


def _finish(cfg, paths, engine, state, meta, history, last_val, manifest) -> Dict[str, object]:
    """Export the best weights as a SavedModel and write metrics.json and classes.json."""
    from enet_cli.export import export_saved_model

    summary: Dict[str, object] = {
        "epochs_completed": int(state.epoch.numpy()),
        "steps": int(state.checkpoint.optimizer.iterations.numpy()),
        "best_val_mean_iou": float(state.best_val_miou.numpy()),
        "history": history,
    }
    if last_val is not None:
        summary["final_val"] = {
            k: last_val[k]
            for k in ("loss", "mean_iou", "pixel_accuracy", "class_accuracy", "iou", "accuracy")
        }
    export_dir = engine.export_dir(paths.export)
    if export_dir is None:
        return summary
    best = state.load_best_weights()
    export_saved_model(state.model, meta, export_dir, option="the run's model directory")
    if not engine.is_chief:  # a worker whose export is part of a collective: to scratch
        return summary
    summary["exported_weights"] = str(best) if best else "final"
    summary["saved_model"] = str(paths.export)
    paths.outputs.mkdir(parents=True, exist_ok=True)
    _write_json(paths.outputs / "metrics.json", summary)
    _write_json(
        paths.outputs / "classes.json",
        {
            "classes": [
                {"name": n, "color": list(c)} for n, c in zip(meta.class_names, meta.class_colors)
            ],
            "ignore_index": meta.ignore_index,
            "void_color": list(meta.void_color),
            "image_size": list(manifest.image_size),
        },
    )
    meta.write(paths.outputs)
    return summary


def _write_json(path: Path, data) -> None:
    outputs.write_atomic(path, outputs.json_text(data))
