"""The job's source directory: this package as a wheel, and the entry script beside it.

"Submits itself": the container runs this very version of enet-cli. The wheel is built
from the installed package (an editable checkout or a wheel install alike): its files and
its metadata are copied into a scratch project, so nothing is written into a user's tree.
Building takes pip seconds on every launch, so the wheel is kept in the user's cache under
the digest of exactly what went into it (every file and the project metadata): the same
package reuses it, any edit to a file builds anew.
"""

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import enet_cli
from enet_cli.core.cache import user_cache
from enet_cli.core.errors import EnvironmentProblem

DISTRIBUTION = "enet-cli"
ENTRY_SCRIPT = "enet_entry.py"


def _pyproject(version: str, requires_python: str, dependencies) -> str:
    deps = ",\n".join(f"    {json.dumps(d)}" for d in dependencies)  # JSON strings are TOML
    return f"""[build-system]
requires = ["setuptools>=62.3"]
build-backend = "setuptools.build_meta"

[project]
name = "{DISTRIBUTION}"
version = "{version}"
requires-python = "{requires_python}"
dependencies = [
{deps}
]

[project.scripts]
enet = "enet_cli.cli:main"

[tool.setuptools.packages.find]
where = ["src"]

[tool.setuptools.package-data]
enet_cli = ["**/*.png", "**/*.md", "presets/**/*"]
"""


def _scratch_project(root: Path) -> Path:
    meta = importlib.metadata.metadata(DISTRIBUTION)
    requires = [r for r in (importlib.metadata.requires(DISTRIBUTION) or []) if "extra ==" not in r]
    project = root / "project"
    package = Path(enet_cli.__file__).resolve().parent
    shutil.copytree(
        package, project / "src" / "enet_cli", ignore=shutil.ignore_patterns("__pycache__")
    )
    text = _pyproject(enet_cli.__version__, meta.get("Requires-Python") or ">=3.8", requires)
    (project / "pyproject.toml").write_text(text)
    return project


def _setuptools_recent() -> bool:
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    major, minor = (int(p) for p in version.split(".")[:2])
    return (major, minor) >= (62, 3)


def _digest(project: Path) -> str:
    """SHA-256 over every file of the scratch project, names and contents, in a fixed order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in project.rglob("*") if p.is_file()):
        digest.update(path.relative_to(project).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:32]


def _pip_wheel(project: Path, out_dir: Path) -> None:
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet"]
    if _setuptools_recent():
        command.append("--no-build-isolation")
    command += ["--wheel-dir", str(out_dir), str(project)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise EnvironmentProblem(f"cannot build the enet-cli wheel for the job: {last}")


def build_wheel(out_dir: Path) -> Path:
    """This enet-cli as a wheel in `out_dir` (setuptools of this environment when recent
    enough, so it builds offline; else pip's isolated build), from the cache when this very
    package was built before. A cache that cannot be written only costs the reuse."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="enet-wheel-") as tmp:
        project = _scratch_project(Path(tmp))
        cached = user_cache("wheels") / _digest(project)
        wheels = sorted(cached.glob("enet_cli-*.whl"))
        if not wheels:
            built = Path(tmp) / "built"
            _pip_wheel(project, built)
            wheels = sorted(built.glob("enet_cli-*.whl"))
            if not wheels:
                raise EnvironmentProblem(f"pip wheel wrote no enet_cli wheel for {project}")
            _keep(wheels[-1], cached)
        target = out_dir / wheels[-1].name
        shutil.copyfile(wheels[-1], target)
    return target


def _keep(wheel: Path, cached: Path) -> None:
    """Put `wheel` in `cached` as a whole directory at once (a rename), so a reader never
    sees half a file; when another process got there first, or the cache is not writable,
    nothing is kept and nothing fails."""
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".building-", dir=cached.parent))
    except OSError:
        return
    try:
        shutil.copy2(wheel, staging / wheel.name)
        os.replace(staging, cached)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)


def stage_source(directory: Path) -> Path:
    """Fill `directory` (the SDK's source_dir) with the wheel and the entry script."""
    directory.mkdir(parents=True, exist_ok=True)
    build_wheel(directory)
    entry = Path(enet_cli.__file__).resolve().parent / "container" / "entry.py"
    shutil.copyfile(entry, directory / ENTRY_SCRIPT)
    return directory


if __name__ == "__main__":  # python -m enet_cli.cloud.source DIR: a Docker build context
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "build/source")
    print(stage_source(target))
