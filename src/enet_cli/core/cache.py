"""Where enet keeps what it can rebuild (compiled kernels, the job's wheel): one rule for
every cache, the XDG base directory one, so a user clears or moves them all in one place."""

import os
from pathlib import Path
from typing import Optional


def user_cache(kind: str, override_env: Optional[str] = None) -> Path:
    """`$XDG_CACHE_HOME/enet-cli/<kind>`, else `~/.cache/enet-cli/<kind>`; the variable
    `override_env`, when given and set, names the directory itself."""
    configured = os.environ.get(override_env) if override_env else None
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "enet-cli" / kind
