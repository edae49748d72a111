"""model.tar.gz for SageMaker's TensorFlow Serving container, and reading one back.

Layout (the container's tfs_utils.find_models takes `<dir>/<version>/saved_model.pb`; its
python_service.py imports `code/inference.py`; serve.py pip-installs
`code/requirements.txt` at start-up):

    1/saved_model.pb, 1/variables/, 1/enet.json   the model, with the handler's signatures
    enet.json                                     what the model is (classes, size, ...)
    code/inference.py                             input_handler / output_handler
    code/enet.json, code/requirements.txt
    code/enet_cli/...                             handler.py and the two modules it uses

Members carry no local user or group names, ids or times (what is uploaded says nothing
about the machine it was packed on).
"""

import contextlib
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Optional

import enet_cli
from enet_cli.artifacts.run import META_NAME
from enet_cli.core.errors import DataError

VERSION_DIR = "1"
CODE_DIR = "code"
# The handler's modules, as they are in this package: the endpoint runs this very code.
HANDLER_MODULES = (
    "__init__.py",
    "pixels/__init__.py",
    "pixels/preprocessor.py",
    "pixels/drawing.py",
    "container/__init__.py",
    "container/handler.py",
)
# What the container installs for the handler (its Python has neither).
REQUIREMENTS = "numpy>=1.21\npillow>=10.0\n"
INFERENCE_SHIM = '''"""enet-cli's inference handler for SageMaker's TensorFlow Serving container:
the functions live in enet_cli/container/handler.py beside this file (packed by enet deploy)."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from enet_cli.container.handler import Handler  # noqa: E402

_handler = Handler.from_file(os.path.join(HERE, "enet.json"))
input_handler = _handler.input_handler
output_handler = _handler.output_handler
'''


def stage_model(model_path: Path, directory: Path) -> Path:
    """Fill `directory` with the tarball's tree for the model at `model_path` (a run,
    SavedModel or checkpoints): re-exported with the endpoint's signatures, so a model
    trained before they existed deploys too."""
    from enet_cli.serving.export import write_saved_model
    from enet_cli.serving.runtimes import load_keras_model

    model, meta = load_keras_model(Path(model_path))
    write_saved_model(model, meta, directory / VERSION_DIR, for_endpoint=True)
    meta.write(directory)
    code = directory / CODE_DIR
    package = Path(enet_cli.__file__).resolve().parent
    for name in HANDLER_MODULES:
        target = code / "enet_cli" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(package / name, target)
    (code / "inference.py").write_text(INFERENCE_SHIM)
    (code / "requirements.txt").write_text(REQUIREMENTS)
    shutil.copyfile(directory / META_NAME, code / META_NAME)
    return directory


def _reset(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def write_tarball(directory: Path, out: Path) -> Path:
    """`directory`'s tree as model.tar.gz at `out` (staged, then renamed)."""
    import gzip

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    paths = sorted(p for p in directory.rglob("*"))
    with contextlib.ExitStack() as stack:  # (no parenthesized with: Python 3.8)
        raw = stack.enter_context(open(partial, "wb"))
        zipped = stack.enter_context(gzip.GzipFile("", "wb", fileobj=raw, mtime=0))
        tar = stack.enter_context(tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT))
        for path in paths:
            tar.add(path, path.relative_to(directory).as_posix(), False, filter=_reset)
    partial.replace(out)
    return out


def pack_model(model_path: Path, out: Path) -> Path:
    """model.tar.gz at `out` for the model at `model_path`, ready for the endpoint."""
    with tempfile.TemporaryDirectory(prefix="enet-pack-") as tmp:
        return write_tarball(stage_model(model_path, Path(tmp) / "model"), out)


def extract_model(tarball: Path, directory: Path, label: Optional[str] = None) -> Path:
    """A model.tar.gz unpacked into `directory`, refusing any member that would land
    outside it (absolute paths, `..`, links): an archive from S3 is not trusted."""
    label = label or str(tarball)
    directory.mkdir(parents=True, exist_ok=True)
    root = directory.resolve()
    try:
        with tarfile.open(tarball, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                target = (root / member.name).resolve()
                if root != target and root not in target.parents:
                    raise DataError(f"{label} holds {member.name!r}, outside the model: refused")
                if not (member.isfile() or member.isdir()):
                    raise DataError(f"{label} holds a link or device {member.name!r}: refused")
            for member in members:
                if member.isdir():
                    (root / member.name).mkdir(parents=True, exist_ok=True)
                    continue
                (root / member.name).parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                with open(root / member.name, "wb") as sink:
                    shutil.copyfileobj(source, sink)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"{label} is not a readable model.tar.gz ({err})") from None
    return directory
