"""The dataset layouts `enet preprocess` reads, found automatically or named with --layout."""

from pathlib import Path
from typing import Dict, Type

from enet_cli.core.config import PreprocessConfig
from enet_cli.core.errors import ConfigError, DataError
from enet_cli.data.layouts.base import Layout, Pair, Split
from enet_cli.data.layouts.camvid import CamVidKaggle, CamVidSegNet
from enet_cli.data.layouts.cityscapes import Cityscapes
from enet_cli.data.layouts.folders import Folders
from enet_cli.data.layouts.voc import Voc

LAYOUTS: Dict[str, Type[Layout]] = {
    layout.name: layout for layout in (CamVidKaggle, CamVidSegNet, Cityscapes, Voc, Folders)
}

__all__ = ["LAYOUTS", "Layout", "Pair", "Split", "open_layout"]


def open_layout(cfg: PreprocessConfig) -> Layout:
    """The layout of `cfg.input_dir`: the one `--layout` names, else the first that fits."""
    root = Path(cfg.input_dir)
    if not root.is_dir():
        raise DataError(f"input directory {root} does not exist; give the dataset's root folder")
    if cfg.layout:
        if cfg.layout not in LAYOUTS:
            raise ConfigError(
                f"invalid value for --layout: {cfg.layout!r}; use one of {', '.join(LAYOUTS)}"
            )
        layout = LAYOUTS[cfg.layout]
        if not layout.found_in(root):
            raise DataError(f"{root} is not a {layout.name} layout: expected {layout.looks_like}")
        return layout(root, cfg)
    for layout in LAYOUTS.values():
        if layout.found_in(root):
            return layout(root, cfg)
    expected = "; ".join(layout.looks_like for layout in LAYOUTS.values())
    raise DataError(f"no dataset layout found in {root}: expected {expected}")
