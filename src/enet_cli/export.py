"""SavedModel export with a serving signature: uint8 images in, logits and class map out.

The exported graph accepts any batch and any H x W that is a multiple of 8 (the weights do
not depend on the size), so one SavedModel serves several resolutions. `enet.json` beside
`saved_model.pb` names the classes, colours and training size for evaluate and predict.
"""

import shutil
from pathlib import Path

from enet_cli.backend import keras, tf
from enet_cli.model import build_enet
from enet_cli.train.state import RunMeta


def serving_model(model, meta: RunMeta):
    """A float32, size-agnostic copy of `model` (also when it was trained in mixed precision)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = build_enet(meta.model, None)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    copy.set_weights(model.get_weights())
    return copy


def export_saved_model(model, meta: RunMeta, out_dir: Path) -> Path:
    """Write the SavedModel to `out_dir` atomically (temp sibling, then rename)."""
    out_dir = Path(out_dir)
    copy = serving_model(model, meta)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve(images):
        logits = copy(tf.cast(images, tf.float32) / 255.0, training=False)
        return {"logits": logits, "classes": tf.argmax(logits, axis=-1, output_type=tf.int32)}

    # A plain tf.Module that tracks only the variables: saving the Keras model itself would
    # also trace every layer's call for Keras reloading, which takes 20 s and serves nobody.
    module = tf.Module()
    module.variables_ = list(copy.weights)
    module.serve = serve
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tf.saved_model.save(module, str(tmp), signatures={"serving_default": serve})
    meta.write(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.replace(out_dir)
    return out_dir
