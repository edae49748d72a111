"""The training step, written once: the objective of one (micro)batch and the update.

Every engine runs the same two pieces and differs only in how it distributes them:

    total = <sum of task.weight_sum(labels) over the whole batch: every replica, microbatch>
    for each piece of the batch (a replica's share, a microbatch; the engine's business):
        loss  = objective(task, model(images), labels, total)   # its share of the batch loss
        grads = update.gradients(tape, loss)                    # scaled, then unscaled
    grads = <the pieces' gradients summed: all-reduce, DistributedGradientTape, accumulate>
    update.apply(grads)                                         # clip, decay, optimizer

The shares add up to exactly the loss of the whole batch (the reference's
`CrossEntropyLoss(weight, ignore_index)` over it), so every engine applies the gradient a
single process would at the same global batch: the equivalence the tests hold every engine
to. Clipping, weight decay or another optimizer change here, once, for every mode.
"""

from typing import List, Optional

from enet_cli.core.backend import keras, tf


def objective(task, logits, labels, total_weight):
    """This piece's share of the whole batch's loss: sum of w * CE over its non-void pixels
    divided by the whole batch's weight (`total_weight`, from every piece)."""
    loss_sum, _ = task.loss_terms(logits, labels)
    return loss_sum / tf.maximum(tf.cast(total_weight, loss_sum.dtype), 1e-12)


class Update:
    """Mixed-precision loss scaling, gradient clipping, coupled weight decay, the optimizer.

    The order is PyTorch-ENet's: `clip_grad_norm_` on the loss gradient, then Adam's
    `weight_decay` adds wd * w inside `step()`. `apply` takes the *whole* batch's gradient
    (the engine has summed it over replicas), so it tells the optimizer not to aggregate
    again, and a global-norm clip sees the global norm.
    """

    def __init__(self, optimizer, variables, weight_decay: float, clip_norm: Optional[float]):
        self.optimizer = optimizer
        self.variables = list(variables)
        self.weight_decay = weight_decay
        self.clip_norm = clip_norm
        self.scaled = isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)

    def scale(self, loss):
        return self.optimizer.get_scaled_loss(loss) if self.scaled else loss

    def unscale(self, grads: List) -> List:
        return self.optimizer.get_unscaled_gradients(grads) if self.scaled else grads

    def gradients(self, tape, loss) -> List:
        """d loss / d variables through `tape`, loss-scaled when mixed precision asks (the
        tape is re-entered: the scaling must be on it)."""
        with tape:
            target = self.scale(loss)
        return self.unscale(tape.gradient(target, self.variables))

    def apply(self, grads: List) -> None:
        if self.clip_norm is not None:  # a float, or a tf.Variable (tests change it)
            grads, _ = tf.clip_by_global_norm(grads, self.clip_norm)
        grads = [g + self.weight_decay * v for g, v in zip(grads, self.variables)]
        self.optimizer.apply_gradients(
            zip(grads, self.variables), experimental_aggregate_gradients=False
        )
