"""The ONE training loop. Every mode runs this; what differs by mode is the engine it is given.

`fit()` builds the model and optimizer in the engine's scope, resumes from the run's last
checkpoint, and runs epochs: an epoch is its steps (`_Training.train_epoch`), then its end
(validation, the epoch's report, best and regular checkpoints: `end_epoch`); the end of
training exports the best weights as a SavedModel with metrics.json (`_finish`). It stops
cleanly on SIGTERM/SIGINT after saving. Only the chief engine process writes into the run
(workers whose saving is a collective save too, into scratch directories the engine removes).
"""

import math
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from enet_cli.artifacts.checkpoints import find_checkpoint
from enet_cli.artifacts.run import RunMeta, RunPaths, check_resumable
from enet_cli.core import outputs, ui
from enet_cli.core.backend import keras, tf
from enet_cli.core.config import EnetConfig, Precision, global_batch, model_size
from enet_cli.core.environment import environment
from enet_cli.core.errors import (
    ConfigError,
    Interrupted,
    OutputError,
    PeerLost,
    TrainingError,
    reason,
)
from enet_cli.core.metrics import segmentation_metrics
from enet_cli.data.dataset import make_dataset, reading_shards
from enet_cli.data.manifest import Manifest, check_batch_size, check_data, load_manifest
from enet_cli.model import fused
from enet_cli.train.engines.base import Engine
from enet_cli.train.engines.table import check_microbatches
from enet_cli.train.optim import (
    build_lr_schedule,
    build_optimizer,
    build_update,
    learning_rate_at,
    seed_everything,
)
from enet_cli.train.report import History, Reporter
from enet_cli.train.state import TrainState
from enet_cli.train.task import build_task
from enet_cli.train.warm_start import source_path, warm_start

TRAIN_SCALARS = ("loss", "mean_iou", "pixel_accuracy", "lr", "images_per_sec")


def check_training(cfg: EnetConfig, paths: RunPaths, engine: Engine) -> Manifest:
    """The refusals that need no model, made before anything is written to the run."""
    manifest = load_manifest(cfg.data.data_dir, True, splits=["train", "val"])
    check_data(cfg.data, manifest)
    check_batch_size(manifest, "train", cfg.train.batch_size, engine.num_replicas)
    check_microbatches(cfg.train.batch_size, engine.microbatches)
    if cfg.train.init_from:
        if engine.name == "smp":  # its variables exist only per partition, after step one
            raise ConfigError(
                "--init-from is not supported by the smp engine yet; use --engine tf for "
                "--mode mp, or start an smp run from scratch"
            )
        source = source_path(cfg.train.init_from)
        for written in (paths.outputs, paths.checkpoints, paths.logs, paths.export):
            outputs.check_apart(written, [source], "--run-dir")  # never into its source
    if engine.is_chief:  # refused now, not after hours of training
        outputs.check_replaceable(paths.export, "export", True, "the run's model directory")
    return manifest


def fit(
    cfg: EnetConfig, paths: RunPaths, engine: Engine, manifest: Optional[Manifest] = None
) -> Dict[str, object]:
    """Train according to `cfg`, writing under `paths`; returns the final metrics.
    `manifest`: what check_training returned (checked again when not given)."""
    if manifest is None:
        manifest = check_training(cfg, paths, engine)
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(cfg.train.precision.value)
    try:
        # From here on SIGTERM/SIGINT ask for a clean stop (after the step in flight, with a
        # checkpoint), also while the model is built and traced.
        with reading_shards(cfg.data.data_dir), ui.StopRequest().installed() as stop:
            return _Training(cfg, paths, engine, manifest, stop).run()
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, without saving
        last = find_checkpoint(paths.checkpoints) or "none yet"
        raise Interrupted(
            f"stopped at once by a second Ctrl-C, nothing saved; the last checkpoint is {last}: "
            f"run the same command again to resume from it"
        ) from None
    except (tf.errors.UnavailableError, tf.errors.CancelledError) as err:
        first = reason(err)
        raise PeerLost(
            f"lost contact with another worker ({first}); run the same command again to "
            f"resume from the last checkpoint"
        ) from None
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
        engine.close()


def _finite(value: float) -> bool:
    return not (math.isnan(value) or math.isinf(value))


class _Training:
    """One run of the loop: what is built once (model, state, steps, reporter), then epochs."""

    def __init__(self, cfg, paths: RunPaths, engine: Engine, manifest: Manifest, stop):
        self.cfg, self.paths, self.engine, self.manifest, self.stop = (
            cfg, paths, engine, manifest, stop,
        )  # fmt: skip
        tcfg = cfg.train
        self.batch = tcfg.batch_size  # per replica (engines/table.py)
        self.global_batch = global_batch(self.batch, engine.num_replicas)
        self.task = build_task(manifest, tcfg.class_weighting)
        self.meta = RunMeta.from_manifest(cfg.model, manifest)
        self.model_cfg = self.meta.model
        if cfg.runtime.resume:
            check_resumable(paths.checkpoints, self.meta)
        self.steps_per_epoch = manifest.splits["train"].records // self.global_batch
        self.total_steps = min(tcfg.steps or 10**12, tcfg.epochs * self.steps_per_epoch)
        self.epochs = min(tcfg.epochs, -(-self.total_steps // self.steps_per_epoch))
        if tcfg.scale_lr:  # the linear scaling rule: N replicas, N times the batch and the lr
            tcfg = tcfg.model_copy(
                update={"learning_rate": tcfg.learning_rate * engine.num_replicas}
            )
        self.tcfg = tcfg
        self.schedule = build_lr_schedule(tcfg, self.steps_per_epoch, self.total_steps)
        self.resumed = self._build()
        self.step = int(self.state.checkpoint.optimizer.iterations.numpy())
        self.start_epoch = int(self.state.epoch.numpy())
        update = build_update(tcfg, self.model.trainable_variables, self.state.checkpoint.optimizer)
        self.train_step = engine.make_train_step(self.model, update, self.task)
        self.eval_step = engine.make_eval_step(self.model, self.task)
        self.reporter = Reporter(engine.is_chief, paths.logs, cfg.runtime.log_format)
        self.progress = ui.StepProgress(enabled=engine.is_chief)
        chief_dir = paths.checkpoints if engine.is_chief else None
        self.history = History(chief_dir, self.start_epoch)
        self.last_val: Optional[Dict[str, object]] = None
        self.stopping = ""

    def _build(self) -> Optional[str]:
        """Model, optimizer and checkpoint state in the engine's scope; resume; and only
        then, everything checked and built, the run directory's old checkpoints make way."""
        cfg, engine, paths = self.cfg, self.engine, self.paths
        seed_everything(self.tcfg.seed)
        with engine.scope():
            # ENet's own size: the data's padded to a multiple of 8, as the batches are
            self.model = engine.build_model(self.model_cfg, model_size(*self.manifest.image_size))
            self.state = TrainState(
                self.model,
                build_optimizer(self.tcfg, self.schedule),
                self.task.num_classes,
                paths.checkpoints,
                self.tcfg.keep_checkpoints,
                write_directory=engine.checkpoint_dir(paths.checkpoints),
                backend=engine.checkpoints,
            )
            engine.create_optimizer_slots(self.state.checkpoint.optimizer, self.model)
            resumed = self.state.restore_latest() if cfg.runtime.resume else None
            self.warm_started = ""
            if resumed is None and self.tcfg.init_from:
                self.warm_started = warm_start(self.model, self.meta, self.tcfg.init_from)
        if engine.is_chief:
            if not cfg.runtime.resume:
                moved = outputs.set_aside(paths.checkpoints)
                if moved is not None:
                    ui.info(f"--no-resume: the previous checkpoints were moved to {moved}")
            paths.checkpoints.mkdir(parents=True, exist_ok=True)
            self.state.remove_partial_writes()
            self.meta.write(paths.checkpoints)
            outputs.write_atomic(
                paths.outputs / "config.json",
                cfg.model_copy(update={"model": self.model_cfg}).model_dump_json(indent=2) + "\n",
            )
        return resumed

    def run(self) -> Dict[str, object]:
        self._announce()
        for epoch in range(self.start_epoch, self.epochs):
            done, images, seconds = self.train_epoch(epoch)
            if done < self.steps_per_epoch:  # --steps ended training inside this epoch
                self.state.save()
                self.last_val = self.validate_and_report(epoch)
                break
            self.end_epoch(epoch, done, images, seconds)
            if self.stopping:
                raise self._interrupted(epoch)
            if self.step >= self.total_steps:
                break
        return _finish(self)

    def _announce(self) -> None:
        if self.tcfg.precision == Precision.float32 and fused.prelu() is None:
            reason = fused.unavailable_reason()
            if reason and self.engine.is_chief:
                ui.warn(
                    f"no fused training kernels ({reason}): training runs TensorFlow's "
                    "composed ops instead, the same numbers about 1.5x slower"
                )
        where = (
            f"resuming from {self.resumed} (epoch {self.start_epoch + 1}, step {self.step})"
            if self.resumed
            else f"starting from {self.tcfg.init_from}'s weights"
            if self.warm_started
            else "starting from scratch"
        )
        if self.warm_started and self.engine.is_chief:
            ui.info(self.warm_started)
        elif self.resumed and self.tcfg.init_from and self.engine.is_chief:
            ui.info(f"--init-from {self.tcfg.init_from} not used: resuming this run")
        ui.info(
            f"{self.engine.describe()}; global batch {self.global_batch} ({self.batch} per "
            f"replica); {self.steps_per_epoch} steps/epoch; {where}"
        )

    def datasets(self, split: str, epoch: int, skip_batches: int = 0):
        def dataset_fn(input_context):
            return make_dataset(
                self.cfg.data,
                self.manifest,
                split,
                self.batch,
                split == "train",
                seed=self.tcfg.seed,
                epoch=epoch,
                input_context=input_context,
                skip_batches=skip_batches,
                pad=True,
            )

        return self.engine.distribute_dataset(dataset_fn)

    def train_epoch(self, epoch: int):
        """The epoch's steps, from where a resumed epoch left off: (steps done in the epoch,
        images timed, seconds). Stops early for --steps, or on a stop request mid-epoch
        (saving first); a stop at the epoch's last step finishes the epoch first."""
        state, stop = self.state, self.stop
        done = int(state.step_in_epoch.numpy())
        todo = min(self.steps_per_epoch, self.total_steps - self.step + done)
        self.progress.start_epoch(epoch, self.epochs, todo, done)
        started, images = time.monotonic(), 0
        warm = epoch > self.start_epoch  # a process's first step traces the graph: not timed
        for batch in self.datasets("train", epoch, skip_batches=done):
            if done >= todo:
                break
            out = self.train_step(batch)
            loss = float(out["loss"])
            if not _finite(loss):
                self.progress.close()
                raise TrainingError(
                    f"loss became {loss} at step {self.step + 1} (epoch {epoch + 1}); stopped "
                    f"without saving it. Last good checkpoint: {state.latest() or 'none yet'}. "
                    f"Lower --learning-rate, try --clip-norm, or use --precision float32"
                )
            self.step += 1
            done += 1
            if warm:
                images += self.global_batch
            else:
                started, warm = time.monotonic(), True
            state.step_in_epoch.assign(done)
            state.epoch_loss_sum.assign_add(loss)
            state.epoch_confusion.assign_add(tf.cast(out["confusion"], tf.int64))
            self.progress.advance(loss, images / max(time.monotonic() - started, 1e-9))
            # ckpt-N is a pure function of N: after an epoch's last step it is the state
            # after that epoch's validation and bookkeeping (end_epoch), never this one.
            epoch_ends = done == self.steps_per_epoch
            every = self.tcfg.checkpoint_every_steps
            if every and self.step % every == 0 and not epoch_ends:
                state.save()
            every = self.tcfg.val_every_steps
            if every and self.step % every == 0 and done < todo:
                self.validate_and_report(epoch)
            if self.engine.any_worker(stop.requested):
                self.stopping = stop.signal_name or "another worker was stopped"
                if epoch_ends:  # finish the epoch (validation, best, ckpt), then stop
                    break
                self.progress.close()
                state.save()
                raise self._interrupted(epoch)
        self.progress.close()
        return done, images, time.monotonic() - started

    def validate(self, epoch: int) -> Dict[str, object]:
        metrics = _evaluate(self.eval_step, self.datasets("val", epoch), self.task, self.engine)
        names = self.manifest.class_names
        self.reporter.scalars(
            "val",
            self.step,
            {
                **{k: metrics[k] for k in ("loss", "mean_iou", "pixel_accuracy", "class_accuracy")},
                **{f"iou/{n}": v for n, v in zip(names, metrics["iou"].values())},
            },
        )
        return metrics

    def validate_and_report(self, epoch: int) -> Dict[str, object]:
        """Validation inside an epoch (--val-every-steps, or where --steps ends)."""
        metrics = self.validate(epoch)
        self.reporter.line(
            {
                "epoch": epoch + 1,
                "step": self.step,
                "val_loss": metrics["loss"],
                "val_mean_iou": metrics["mean_iou"],
            }
        )
        return metrics

    def end_epoch(self, epoch: int, done: int, images: int, seconds: float) -> None:
        """Validation, the epoch's report and history, then its checkpoints: the best first
        (a kill between the two redoes both), then the regular one."""
        state = self.state
        train = segmentation_metrics(state.epoch_confusion.numpy())
        val = self.last_val = self.validate(epoch)
        values = {
            "epoch": epoch + 1,
            "step": self.step,
            "loss": float(state.epoch_loss_sum.numpy()) / max(done, 1),
            **{k: train[k] for k in ("mean_iou", "pixel_accuracy", "class_accuracy")},
            **{f"val_{k}": val[k] for k in ("loss", "mean_iou", "pixel_accuracy")},
            "val_class_accuracy": val["class_accuracy"],
            "lr": learning_rate_at(self.schedule, self.step),
            "images_per_sec": images / seconds if images else None,
        }
        improved = _finite(val["mean_iou"]) and val["mean_iou"] > float(state.best_val_miou.numpy())
        self.history.add(epoch, values)
        self.reporter.line(values, best=improved)
        self.reporter.scalars(
            "train", self.step, {k: v for k, v in values.items() if k in TRAIN_SCALARS}
        )
        state.epoch.assign(epoch + 1)
        state.step_in_epoch.assign(0)
        state.epoch_loss_sum.assign(0.0)
        state.epoch_confusion.assign(tf.zeros_like(state.epoch_confusion))
        if improved:
            state.best_val_miou.assign(val["mean_iou"])
            state.save_best()
        state.save()

    def _interrupted(self, epoch: int) -> Interrupted:
        return Interrupted(
            f"{self.stopping}: stopped at step {self.step} (epoch {epoch + 1}); checkpoint "
            f"{self.state.latest()} saved; run the same command again to resume"
        )


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


def _finish(run: _Training) -> Dict[str, object]:
    """The end of training: export the best weights as a SavedModel, write metrics.json and
    classes.json."""
    state, engine, paths = run.state, run.engine, run.paths
    summary: Dict[str, object] = {
        "epochs_completed": int(state.epoch.numpy()),
        "steps": int(state.checkpoint.optimizer.iterations.numpy()),
        "best_val_mean_iou": float(state.best_val_miou.numpy()),
        "history": run.history.epochs,
        "environment": environment(),
    }
    if run.last_val is not None:
        keys = ("loss", "mean_iou", "pixel_accuracy", "class_accuracy", "iou", "accuracy")
        summary["final_val"] = {k: run.last_val[k] for k in keys}
    export_dir = engine.export_dir(paths.export)
    if export_dir is None:
        return summary
    best = state.load_best_weights()
    try:
        _write_model(run, summary, export_dir, best)
    except OutputError as err:  # a full disk at the very end: the checkpoints hold it all
        raise TrainingError(
            f"training finished, but {err}; the checkpoints are kept: run the same command "
            f"again to write the model"
        ) from None
    return summary


def _write_model(run: "_Training", summary: Dict[str, object], export_dir: Path, best) -> None:
    """The SavedModel of the best weights, then metrics.json and classes.json (chief)."""
    from enet_cli.serving.export import export_saved_model

    engine, paths, meta = run.engine, run.paths, run.meta
    export_saved_model(run.state.model, meta, export_dir, option="the run's model directory")
    if not engine.is_chief:  # a worker whose export is part of a collective: to scratch
        return
    summary["exported_weights"] = str(best) if best else "final"
    summary["saved_model"] = str(paths.export)
    paths.outputs.mkdir(parents=True, exist_ok=True)
    classes = {
        "classes": [
            {"name": n, "color": list(c)} for n, c in zip(meta.class_names, meta.class_colors)
        ],
        "ignore_index": meta.ignore_index,
        "void_color": list(meta.void_color),
        "image_size": list(run.manifest.image_size),
    }
    for name, data in (("metrics.json", summary), ("classes.json", classes)):
        outputs.write_atomic(paths.outputs / name, outputs.json_text(data))
    meta.write(paths.outputs)
