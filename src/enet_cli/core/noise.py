"""TensorFlow's and LiteRT's C++ start-up lines, kept off a user's terminal.

They are written to fd 2 before absl's logging is initialised, so TF_CPP_MIN_LOG_LEVEL cannot
silence them: oneDNN, CUDA stubs, cuInit on a machine without a GPU, the XNNPACK delegate
of a TFLite interpreter, the converter's quantizer. They would surround our one-line
errors; everything else is kept. No TensorFlow here: the TFLite runtime (serving/runners.py)
filters its own line without it.
"""

import contextlib
import os
import re
import sys
import tempfile
from typing import Iterator

from enet_cli.core.ui import verbose

VERBOSE = verbose()  # --verbose / ENET_LOG_LEVEL=debug: every line, start-up included

_STARTUP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} \S+ +\d+ \S+\.cc:\d+\]"
    r"|E\d{4} \S+ +\d+ \S+\.cc:\d+\] .*(cuInit|CUDA|cuda|cuDNN|cuFFT|cuBLAS)"
    r"|To enable the following instructions: .* rebuild TensorFlow"
    r"|.*This TensorFlow binary is optimized to use available CPU instructions"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"
    # the TFLite converter's quantizer, at each int8 conversion
    r"|fully_quantize: \d+, inference_type: \d+, input_inference_type: )"
)


@contextlib.contextmanager
def startup_noise_filtered() -> Iterator[None]:
    """Run the block with fd 2 captured, then replay what it wrote minus the start-up noise
    (TensorFlow's import, a TFLite interpreter's creation, the converter's quantizer)."""
    if VERBOSE:
        yield
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                if not _STARTUP_NOISE.match(line)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
