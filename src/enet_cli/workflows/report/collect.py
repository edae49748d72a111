"""Each run of a report: what it recorded while training, and its evaluation."""

import heapq
import json
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from enet_cli.core.metrics import count_confusion, segmentation_metrics
from enet_cli.data.manifest import Manifest


class Example(NamedTuple):
    """One scored image: its record's name, pixels, labels and prediction."""

    iou: float
    name: str
    image: np.ndarray
    label: np.ndarray
    prediction: np.ndarray


class Extremes:
    """The k images with the lowest and the k with the highest mean IoU (over the classes
    in the image's labels or its prediction, void ignored), as `evaluate` sees them."""

    def __init__(self, k: int, manifest: Manifest):
        self.k, self.classes, self.ignore = k, manifest.num_classes, manifest.ignore_index
        self._worst: List[Tuple[float, str, Example]] = []  # max-heap by IoU (negated)
        self._best: List[Tuple[float, str, Example]] = []  # min-heap by IoU

    def observe(self, names, pixels, labels, predictions) -> None:
        for name, image, label, prediction in zip(names, pixels, labels, predictions):
            matrix = count_confusion(label, prediction, self.classes, self.ignore)
            iou = float(segmentation_metrics(matrix)["mean_iou"])
            if iou != iou:  # all void: nothing to score
                continue
            if self.k == 0:
                continue
            example = Example(iou, name, image, label, prediction.astype(np.int32))
            # ties broken by name, so the same data gives the same pages
            _push(self._worst, (-iou, _inverse(name), example), self.k)
            _push(self._best, (iou, name, example), self.k)

    def worst(self) -> List[Example]:
        return sorted((e for _, _, e in self._worst), key=lambda e: (e.iou, e.name))

    def best(self) -> List[Example]:
        return sorted((e for _, _, e in self._best), key=lambda e: (-e.iou, e.name))


def _inverse(name: str) -> str:
    """A key that orders names backwards (the worst heap keeps the first names on a tie)."""
    return "".join(chr(0x10FFFF - ord(c)) for c in name)


def _push(heap: list, item: Tuple[float, str, Example], k: int) -> None:
    """Keep the k largest items by (key, name); names are unique, so the example itself is
    never compared."""
    if len(heap) < k:
        heapq.heappush(heap, item)
    elif item[:2] > heap[0][:2]:
        heapq.heapreplace(heap, item)


class RunRecord(NamedTuple):
    """What a run directory holds besides its model (each None when absent)."""

    label: str
    source: Path
    history: Optional[List[Dict[str, float]]]
    settings: Optional[Dict[str, Any]]
    environment: Optional[Dict[str, Any]]

    @property
    def best_epoch(self) -> Optional[int]:
        scored = [e for e in self.history or [] if _finite(e.get("val_mean_iou"))]
        if not scored:
            return None
        return int(max(scored, key=lambda e: e["val_mean_iou"])["epoch"])


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and value == value and abs(value) != float("inf")


def _json(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_run(label: str, path: Path) -> RunRecord:
    """The history (metrics.json's, else the checkpoints' history.json of a run still
    training or stopped), settings (config.json) and environment of a run directory; all
    None for a model on its own (a SavedModel, an export, a preset)."""
    path = Path(path)
    metrics = _json(path / "metrics.json") or {}
    history = metrics.get("history")
    if history is None:
        history = _json(path / "checkpoints" / "history.json")
    settings = _json(path / "config.json")
    return RunRecord(
        label,
        path,
        history if isinstance(history, list) and history else None,
        settings if isinstance(settings, dict) else None,
        metrics.get("environment"),
    )


def labels_for(paths: List[Path]) -> List[str]:
    """Short names for the runs: their directory names, made unique."""
    names = [Path(p).name or str(p) for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{n} ({i + 1})" for i, n in enumerate(names)]


def flatten(settings: Optional[Dict[str, Any]], prefix: str = "") -> Dict[str, str]:
    """{"train.learning_rate": "0.0005", ...} of nested settings."""
    out: Dict[str, str] = {}
    for key, value in (settings or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.dumps(value) if not isinstance(value, str) else value
    return out
