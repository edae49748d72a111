"""`enet demo`: the whole workflow on a few real CamVid images shipped inside the package.

preprocess -> a short training at 240x320 -> evaluate on the test images -> predict
overlays, each step through the same core functions as its own command. A few minutes on
two CPU cores; the numbers are those of a model trained on eight images, not of ENet.
"""

from pathlib import Path
from typing import Dict, NamedTuple

from enet_cli.artifacts.run import local_paths
from enet_cli.core import outputs, ui
from enet_cli.core.config import PreprocessConfig
from enet_cli.train.settings import load_config

DEMO_DATA = Path(__file__).resolve().parents[1] / "demo_data" / "camvid"
DEMO_SIZE = "240x320"
DATA, RUN, PREDICTIONS, TEST_METRICS = "data", "run", "predictions", "test_metrics.json"


class DemoResult(NamedTuple):
    out: Path
    data_dir: Path
    run_dir: Path
    predictions: Path
    train_summary: Dict[str, object]
    test_metrics: Dict[str, object]


def run_demo(out: Path, epochs: int = 40, seed: int = 0) -> DemoResult:
    """Everything under `out`, which must be new, empty, or an earlier demo's (replaced)."""
    import enet_cli.core.backend  # noqa: F401  (without TensorFlow: one line, `out` not created)

    entries = (DATA, RUN, PREDICTIONS, TEST_METRICS)
    with outputs.claim_in_place(Path(out), "demo", True, entries, [DEMO_DATA]) as claimed:
        return _run(claimed, epochs, seed)


def _run(out: Path, epochs: int, seed: int) -> DemoResult:
    from enet_cli.data.preprocess import preprocess
    from enet_cli.serving.evaluate import evaluate
    from enet_cli.serving.predict import predict
    from enet_cli.serving.runtimes import load_predictor
    from enet_cli.train.run import run_training

    data_dir, run_dir, predictions = out / DATA, out / RUN, out / PREDICTIONS

    ui.info(f"[1/4] preprocess {DEMO_DATA} -> {data_dir}")
    preprocess(
        PreprocessConfig(
            input_dir=DEMO_DATA, output_dir=data_dir, image_size=DEMO_SIZE, force=True, workers=1
        )
    )

    ui.info(f"[2/4] train {epochs} epochs at {DEMO_SIZE} -> {run_dir}")
    cfg = load_config(
        None,
        {
            "data": {"data_dir": data_dir, "image_size": DEMO_SIZE},
            "train": {
                "epochs": epochs,
                "batch_size": 4,
                "learning_rate": 2e-3,
                "lr_schedule": "cosine",
                "seed": seed,
            },
            "runtime": {"run_dir": run_dir, "resume": False},
        },
    )
    paths = local_paths(run_dir)
    summary = run_training(cfg, paths)

    ui.info(f"[3/4] evaluate {paths.export} on the test split")
    metrics = evaluate(paths.export, data_dir, "test", json_path=out / TEST_METRICS)

    ui.info(f"[4/4] predict the test images -> {predictions}")
    predict(load_predictor(paths.export), [DEMO_DATA / "test"], predictions)
    return DemoResult(out, data_dir, run_dir, predictions, summary, metrics)
