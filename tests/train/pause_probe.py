"""`enet ARGS` held at one point of a training run until it is killed: where a SIGKILL
test's kill lands is then where the test says, not wherever the process happened to be.

    python pause_probe.py POINT ARGS...

runs enet's own main() with ARGS; the first time the run reaches POINT it prints
`paused: POINT` on stderr and waits to be killed. The points:

- `checkpoint-write`: inside TensorFlow's checkpoint write, after the shards are written
  under `ckpt-N_temp/` and before they are merged into `ckpt-N` (TensorFlow's
  functional_saver.MultiDeviceSaver.save calls gen_io_ops.merge_v2_checkpoints there, from
  Python, when it saves eagerly on one task, as a single-process run does);
- `validation`: as an epoch's validation starts (the loop's `_Training.validate`);
- `after-checkpoint`: just after a checkpoint was saved (`TrainState.save` returned).
"""

import sys
import time


def hold(point: str) -> None:
    sys.stderr.write(f"paused: {point}\n")
    sys.stderr.flush()
    while True:
        time.sleep(60)


def install(point: str) -> None:
    from enet_cli.core.backend import tf  # noqa: F401  (Keras 2 set up before TensorFlow)

    if point == "checkpoint-write":
        from tensorflow.python.ops import gen_io_ops

        gen_io_ops.merge_v2_checkpoints = lambda *args, **kwargs: hold(point)
    elif point == "validation":
        from enet_cli.train import loop

        loop._Training.validate = lambda self, epoch: hold(point)
    elif point == "after-checkpoint":
        from enet_cli.train.state import TrainState

        save = TrainState.save

        def save_then_hold(self):
            saved = save(self)
            if saved:
                hold(point)
            return saved

        TrainState.save = save_then_hold
    else:
        raise SystemExit(f"unknown point {point}")


if __name__ == "__main__":
    install(sys.argv[1])
    from enet_cli.cli import main

    main(sys.argv[2:])
