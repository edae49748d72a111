"""Stand-in for `smdistributed.dataparallel.tensorflow` (SMDDP), which exists only inside
SageMaker's TF training containers. It follows the documented API (sagemaker-python-sdk,
doc/api/training/sdp_versions/latest/smd_data_parallel_tensorflow.rst) and really reduces
across processes, so N ranks started like smddprun starts them (OMPI_COMM_WORLD_* variables)
train together:

- rank 0 runs a coordinator on SMDDP_STANDIN_ADDR (host:port); every collective call is a
  short connection that sends (call site, call number, rank, array) and receives the result
  once all ranks sent theirs. Call sites are numbered at trace time, identically on every
  rank, so collectives that TensorFlow runs in any order still pair up.
- every call is appended to SMDDP_STANDIN_LOG/rank-<r>.jsonl for tests to inspect.

Not the real library: no NCCL, no GPUs, no fusion buffer; gradients of one tape, and the
variables of one broadcast_variables call (per dtype), go in one message each (as the
fusion buffer would batch them).
"""

import enum
import json
import os
import threading
from multiprocessing.connection import Client, Listener
from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf

AUTHKEY = b"smddp-standin"


class ReduceOp(enum.Enum):
    AVERAGE = "average"
    SUM = "sum"
    MIN = "min"
    MAX = "max"


class Compression(enum.Enum):
    none = "none"
    fp16 = "fp16"


_state: Dict[str, object] = {"initialized": False, "sites": 0, "counts": {}}
_lock = threading.Lock()


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def size() -> int:
    return _env_int("OMPI_COMM_WORLD_SIZE", 1)


def rank() -> int:
    return _env_int("OMPI_COMM_WORLD_RANK", 0)


def local_rank() -> int:
    return _env_int("OMPI_COMM_WORLD_LOCAL_RANK", rank())


def local_size() -> int:
    return _env_int("OMPI_COMM_WORLD_LOCAL_SIZE", size())


def _address() -> Tuple[str, int]:
    host, port = os.environ["SMDDP_STANDIN_ADDR"].rsplit(":", 1)
    return host, int(port)


def _record(call: str, **details) -> None:
    directory = os.environ.get("SMDDP_STANDIN_LOG")
    if directory:
        with open(os.path.join(directory, f"rank-{rank()}.jsonl"), "a") as f:
            f.write(json.dumps({"call": call, **details}) + "\n")


def _reduce(kind: str, arrays: List[np.ndarray], root: int) -> np.ndarray:
    if kind == "broadcast":
        return arrays[root]
    stacked = np.stack(arrays)
    if kind == ReduceOp.AVERAGE.value:
        return stacked.mean(axis=0).astype(arrays[0].dtype)
    if kind == ReduceOp.SUM.value:
        return stacked.sum(axis=0).astype(arrays[0].dtype)
    if kind == ReduceOp.MIN.value:
        return stacked.min(axis=0)
    return stacked.max(axis=0)


def _coordinator(listener: Listener, world: int) -> None:
    pending: Dict[tuple, dict] = {}
    cond = threading.Condition()

    def serve(conn) -> None:
        key, member, kind, root, array = conn.recv()
        with cond:
            entry = pending.setdefault(key, {"arrays": {}, "result": None})
            entry["arrays"][member] = array
            if len(entry["arrays"]) == world:
                arrays = [entry["arrays"][r] for r in range(world)]
                shapes = {a.shape for a in arrays}
                entry["result"] = (
                    _reduce(kind, arrays, root)
                    if len(shapes) == 1
                    else ValueError(f"collective {key}: shapes differ across ranks: {shapes}")
                )
                cond.notify_all()
            while entry["result"] is None:
                cond.wait()
            result = entry["result"]
        conn.send(result)
        conn.close()

    while True:
        conn = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def init() -> None:
    if _state["initialized"]:
        raise RuntimeError(
            "init() called more than once. smdistributed.dataparallel is already initialized."
        )
    if size() > 1 and rank() == 0:
        listener = Listener(_address(), authkey=AUTHKEY)
        threading.Thread(target=_coordinator, args=(listener, size()), daemon=True).start()
    _state["initialized"] = True
    _record("init", size=size())


def shutdown() -> None:
    _record("shutdown")


def _collective(site: int, kind: str, array: np.ndarray, root: int = 0) -> np.ndarray:
    array = np.asarray(array)
    if size() == 1:
        return array.copy()
    with _lock:
        counts = _state["counts"]
        number = counts.get(site, 0)
        counts[site] = number + 1
    for _ in range(600):  # rank 0's coordinator may still be starting
        try:
            conn = Client(_address(), authkey=AUTHKEY)
            break
        except ConnectionRefusedError:
            import time

            time.sleep(0.1)
    else:
        raise RuntimeError("smddp stand-in: coordinator unreachable")
    conn.send(((site, number), rank(), kind, root, array))
    result = conn.recv()
    conn.close()
    if isinstance(result, Exception):
        raise result
    return result


def _new_site() -> int:
    with _lock:
        _state["sites"] += 1
        return int(_state["sites"])


def _graph_collective(tensor, kind: str, root: int = 0):
    """A collective that works eagerly and inside tf.function (via py_function)."""
    tensor = tf.convert_to_tensor(tensor)
    site = _new_site()

    def run(value):
        return _collective(site, kind, value.numpy(), root)

    out = tf.py_function(run, [tensor], tensor.dtype)
    out.set_shape(tensor.shape)
    return out


def allreduce(tensor, param_index, num_params, compression=Compression.none, op=ReduceOp.AVERAGE):
    op = op or ReduceOp.AVERAGE
    _record("allreduce", param_index=param_index, num_params=num_params, op=op.value)
    return _graph_collective(tensor, op.value)


def oob_allreduce(tensor, compression=Compression.none, op=ReduceOp.AVERAGE):
    """The documentation says both "oob_allreduce average the tensors" and "internally uses
    NCCL AllReduce with ncclSum"; AWS's examples use it to "average the loss across
    workers". This follows the first unless SMDDP_STANDIN_OOB=sum, so that tests can run a
    script against both readings."""
    op = op or ReduceOp.AVERAGE
    if op != ReduceOp.AVERAGE:
        raise ValueError("oob_allreduce supports only ReduceOp.AVERAGE")
    reading = os.environ.get("SMDDP_STANDIN_OOB", "average")
    if reading not in ("average", "sum"):
        raise ValueError(f"SMDDP_STANDIN_OOB must be average or sum, not {reading!r}")
    _record("oob_allreduce", op=reading)
    return _graph_collective(tensor, reading)


def broadcast(tensor, root_rank):
    return _graph_collective(tensor, "broadcast", root_rank)


def _digest(variables) -> str:
    import hashlib

    digest = hashlib.sha256()
    for variable in variables:
        digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
    return digest.hexdigest()


def broadcast_variables(variables, root_rank):
    """Every rank's variables take root_rank's values; the log has a digest of their values
    before and after, so a test sees what the broadcast changed."""
    variables = list(variables)
    before = _digest(variables)
    site = _new_site()
    # One message per dtype (as the fusion buffer batches them), not one per variable: a
    # connection per variable made a broadcast of ENet's ~400 variables take seconds.
    values = [np.asarray(variable.numpy()) for variable in variables]
    for dtype in dict.fromkeys(value.dtype for value in values):
        group = [k for k, value in enumerate(values) if value.dtype == dtype]
        flat = np.concatenate([values[k].ravel() for k in group])
        received = _collective(site, "broadcast", flat, root_rank)
        parts = np.split(received, np.cumsum([values[k].size for k in group])[:-1])
        for k, part in zip(group, parts):
            variables[k].assign(part.reshape(values[k].shape))
    _record(
        "broadcast_variables",
        count=len(variables),
        root_rank=root_rank,
        before=before,
        after=_digest(variables),
    )


def broadcast_global_variables(root_rank):
    raise NotImplementedError("TF1 graph API: not used by TF 2 scripts")


class DistributedGradientTape:
    """Wraps a tf.GradientTape; gradient() returns gradients averaged across ranks (op)."""

    def __init__(
        self,
        gradtape,
        device_dense="",
        device_sparse="",
        compression=Compression.none,
        sparse_as_dense=False,
        op=ReduceOp.AVERAGE,
    ):
        self._tape = gradtape
        self._op = op or ReduceOp.AVERAGE

    def gradient(self, target, sources, output_gradients=None):
        grads = self._tape.gradient(target, sources, output_gradients=output_gradients)
        flat = [tf.reshape(g, [-1]) for g in grads]
        sizes = [int(f.shape[0]) for f in flat]
        _record("gradient_tape", tensors=len(grads), op=self._op.value)
        reduced = _graph_collective(tf.concat(flat, axis=0), self._op.value)
        parts = tf.split(reduced, sizes)
        return [tf.reshape(p, g.shape) for p, g in zip(parts, grads)]
