"""The SageMaker endpoint's inference handler, run by AWS's TensorFlow Serving container.

`enet deploy` packs this module (with preprocessor.py and pictures.py, which it imports,
and the model's enet.json) under `code/` in model.tar.gz, with a `code/inference.py` that
exposes `input_handler` and `output_handler`. The container's contract
(aws/sagemaker-tensorflow-serving-container, docker/build_artifacts/sagemaker/
python_service.py and tfs_utils.py): for each request it calls
`input_handler(body_stream, context)`, POSTs what that returns to TensorFlow Serving's REST
predict API (`context.rest_uri`), and replies with what `output_handler(response, context)`
returns as `(body, content_type)`; `context` carries `request_content_type` and
`accept_header`; an exception becomes HTTP 500 with `{"error": str(exception)}`, so every
refusal here is one line that says what to send instead. The container has no TensorFlow
in Python: only NumPy and Pillow (code/requirements.txt) are used here.

Requests: `image/png`, `image/jpeg` (or any `image/*` Pillow reads; `application/
x-image` as batch transform sends it) or `application/x-npy` (uint8 H x W x 3). Resized to
the model's size exactly as `enet predict` does (preprocessor.Preprocessor), then the
`segment` signature (export.py) returns the class map at the photo's size, as predict
computes it. Replies by `Accept`: `image/png` (the class-map PNG predict writes),
`application/json` (class map, class names and colours, per-class pixel shares) or
`application/x-npy` (float16 softmax probabilities at the model's size, H x W x K).
"""

import contextlib
import io
import json
from typing import Any, Callable, Dict, Tuple

import numpy as np

from enet_cli.pixels.drawing import (
    PictureError,
    PictureTooLarge,
    class_shares,
    decode_rgb,
    indexed_png,
    palette,
    png_bytes,
)
from enet_cli.pixels.preprocessor import Preprocessor

PNG, JSON, NPY = "image/png", "application/json", "application/x-npy"
REPLIES = (PNG, JSON, NPY)
SEGMENT, PROBABILITIES = "segment", "probabilities"  # export.py's signature names


class RequestError(ValueError):
    """What the caller sent cannot be served. The container answers every exception with
    HTTP 500; `status` is the 4xx `enet serve` answers it with, as the reason is known."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _media_type(header: str) -> str:
    return (header or "").split(";")[0].strip().lower()


def _reply_type(accept: str) -> str:
    """The first reply type `accept` names that we make; */* (and none) is JSON, the
    container's own default."""
    for part in (accept or JSON).split(","):
        kind = _media_type(part)
        if kind in REPLIES:
            return kind
        if kind in ("*/*", "application/*"):
            return JSON
        if kind == "image/*":
            return PNG
    raise RequestError(f"Accept {accept!r} is not served; ask for {', '.join(REPLIES)}", 406)


class Handler:
    """input_handler/output_handler for one model (its enet.json)."""

    def __init__(self, meta: Dict[str, Any]):
        self.size = tuple(int(v) for v in meta["image_size"])
        self.preprocessor = Preprocessor(self.size, meta.get("interpolation", "area"))
        self.names = list(meta["class_names"])
        self.colors = [list(c) for c in meta["class_colors"]]
        self.void_color = list(meta.get("void_color", (0, 0, 0)))
        self.palette = palette(self.colors, self.void_color)

    @classmethod
    def from_file(cls, path: str) -> "Handler":
        with open(path) as handle:
            return cls(json.load(handle))

    def decode(self, body: bytes, content_type: str) -> np.ndarray:
        """The request's photo as (H, W, 3) uint8."""
        kind = _media_type(content_type)
        if not body:
            raise RequestError("the request body is empty; send a PNG or JPEG image")
        if kind == NPY:
            try:
                array = np.load(io.BytesIO(body), allow_pickle=False)
            except (OSError, ValueError) as err:
                raise RequestError(f"the body is not a .npy array ({err})") from None
            if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
                raise RequestError(
                    f"an {NPY} body must be uint8 height x width x 3 (RGB); got "
                    f"{array.dtype} {array.shape}"
                )
            return array
        if kind.startswith("image/") or kind in ("application/x-image", "application/octet-stream"):
            try:
                return decode_rgb(body)
            except PictureTooLarge as err:
                raise RequestError(f"the {kind} body is {err}", 413) from None
            except PictureError as err:
                raise RequestError(f"the {kind} body is {err}; send a PNG or JPEG") from None
        raise RequestError(
            f"Content-Type {content_type!r} is not served; send image/png, image/jpeg or {NPY}",
            415,
        )

    def request(self, rgb: np.ndarray, reply: str) -> str:
        """TensorFlow Serving's REST predict request (row format) for the photo."""
        pixels = self.preprocessor.pixels(rgb)
        if reply == NPY:
            return json.dumps({"signature_name": PROBABILITIES, "instances": [pixels.tolist()]})
        height, width = rgb.shape[:2]
        instance = {"images": pixels.tolist(), "size": [height, width]}
        return json.dumps({"signature_name": SEGMENT, "instances": [instance]})

    def reply(self, prediction: Any, kind: str) -> Tuple[bytes, str]:
        """The reply for one instance's prediction (the signature's one output)."""
        if kind == NPY:
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(prediction, dtype=np.float16), allow_pickle=False)
            return buffer.getvalue(), NPY
        classes = np.asarray(prediction, dtype=np.uint8)
        if kind == PNG:
            return png_bytes(indexed_png(classes, self.palette)), PNG
        body = {
            "height": int(classes.shape[0]),
            "width": int(classes.shape[1]),
            "class_names": self.names,
            "class_colors": self.colors,
            "void_color": self.void_color,
            "shares": class_shares(classes, self.names),
            "classes": classes.tolist(),
        }
        return json.dumps(body).encode(), JSON

    def answer(
        self,
        body: bytes,
        content_type: str,
        accept: str,
        segment: Callable[[np.ndarray], np.ndarray],
        probabilities: Callable[[np.ndarray], np.ndarray],
    ) -> Tuple[bytes, str]:
        """One invocation with the model in this process instead of behind TensorFlow
        Serving (`enet serve`): the same decoding, Accept rules and replies, the model's
        two signatures given as functions (`segment(photo)` -> class map at the photo's
        size, `probabilities(pixels at the model's size)`)."""
        kind = _reply_type(accept)
        rgb = self.decode(body, content_type)
        if kind == NPY:
            return self.reply(probabilities(self.preprocessor.pixels(rgb)), kind)
        return self.reply(segment(rgb), kind)

    # The container's two entry points --------------------------------------------------
    def input_handler(self, data, context) -> str:
        reply = _reply_type(context.accept_header)
        body = data.read() if hasattr(data, "read") else data
        return self.request(self.decode(body, context.request_content_type), reply)

    def output_handler(self, response, context) -> Tuple[bytes, str]:
        text = response.content.decode("utf-8", "replace")
        if response.status_code != 200:
            with contextlib.suppress(ValueError, AttributeError):
                text = json.loads(text).get("error", text)
            raise RequestError(f"TensorFlow Serving refused the request: {text[:300]}")
        predictions = json.loads(text)["predictions"]
        return self.reply(predictions[0], _reply_type(context.accept_header))
