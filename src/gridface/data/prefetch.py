"""Build the next batch on a side CUDA stream (and, with ``dataset.prefetch=thread``, in a build thread) while the
current step runs.

Lightning fetches batch n+1 from the loader before it runs step n (to know whether n is the last), then moves
batch n to the device and calls ``on_after_batch_transfer`` right before step n. Built there, a device-path batch
(decode, letterbox, augmentation, targets) runs on the training stream between two steps, and the GPU trains
nothing meanwhile. :class:`DevicePrefetchLoader` moves and builds each batch as Lightning fetches it, on its own
stream: batch n+1's kernels are queued before step n's and run beside them. The batch carries the event that ends
its build; the datamodule's ``on_after_batch_transfer`` makes the training stream wait for that event (on the
device, the host never waits) and hands the tensors to the training stream's allocator (``record_stream``).
Lightning gets each batch as a :class:`PendingBatch`, which its transfer and input conversion pass unchanged: its
tensors are touched on the training stream only after that wait (the datamodule converts them then).

``prefetch="stream"`` still builds on the training loop's thread: the host queues the build's few hundred kernels,
and waits for nvJPEG (torchvision's batched ``decode_jpeg`` returns when the batch is decoded), before it queues
step n. ``prefetch="thread"`` hands each fetched batch to one build thread and gives Lightning a
:class:`PendingBatch`; ``on_after_batch_transfer`` waits for it right before its step. torch and torchvision
release the GIL inside their ops, so the build's launches and decoder wait overlap the step's. Which is faster
depends on the host's cores against the GPU (``scripts/bench_gpu.py``, experiments/gpu_*).

The wrapper asks its loader for batches exactly when Lightning would, so the loader's saved position (exact
resume) is unchanged; ``state_dict``, ``sampler``, ``len`` and the rest are the loader's.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from lightning_fabric.utilities.apply_func import move_data_to_device

READY = "_ready"  # the key of a prefetched batch's CUDA event

_build_thread: ThreadPoolExecutor | None = None
_build_thread_lock = threading.Lock()


def build_thread() -> ThreadPoolExecutor:
    """The process's one batch-build thread: builds run one at a time, in the order they were fetched, so the
    train and validation loaders' builds never run at once (they share one builder)."""
    global _build_thread
    with _build_thread_lock:
        if _build_thread is None:
            _build_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gridface-batch-build")
        return _build_thread


def _forget_build_thread() -> None:
    """A forked child (a loader worker) has the executor but not its thread: it starts its own if it ever builds."""
    global _build_thread, _build_thread_lock
    _build_thread, _build_thread_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_build_thread)


class PendingBatch:
    """A fetched batch, built on the side stream or being built in the build thread. Opaque on purpose (no ``to``,
    not a collection): Lightning's input conversion and transfer pass it unchanged to ``on_after_batch_transfer``,
    where :func:`join_training_stream` waits for it."""

    __slots__ = ("future",)

    def __init__(self, future: Future) -> None:
        self.future = future

    @classmethod
    def done(cls, batch: Any) -> PendingBatch:
        future: Future = Future()
        future.set_result(batch)
        return cls(future)

    def result(self) -> Any:
        """The built batch (the build's exception, raised here, if it failed)."""
        return self.future.result()


class DevicePrefetchLoader:
    """Wraps a loader whose batches ``build`` finishes on ``device``: on a CUDA device on a side stream; elsewhere
    (tests of the wrapper on the CPU) with nothing to wait for. It yields :class:`PendingBatch`; ``threaded``: built
    in :func:`build_thread`, else as they are fetched."""

    def __init__(self, loader: Any, device: torch.device, build: Callable[[Any], Any], threaded: bool = False) -> None:
        self.loader, self.device, self.build, self.threaded = loader, torch.device(device), build, threaded
        self._stream: torch.cuda.Stream | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:  # sampler, batch_size, state_dict, load_state_dict, limit_batches, ...
        if name in ("loader", "device", "build", "threaded", "_stream"):
            raise AttributeError(name)
        return getattr(self.loader, name)

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loader.load_state_dict(state_dict)

    def __iter__(self) -> Iterator[Any]:
        if self.device.type == "cuda" and self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        pool = build_thread() if self.threaded else None
        for batch in self.loader:
            yield PendingBatch(pool.submit(self._build, batch)) if pool is not None else PendingBatch.done(
                self._build(batch))

    def _build(self, batch: Any) -> Any:
        if self._stream is None:
            return self.build(move_data_to_device(batch, self.device))
        # Nothing the build reads is written by the training stream (host batches, the encoder's constants), and its
        # outputs reach the training stream through the event and record_stream: no wait here. The device is set
        # for the build thread, whose current device is otherwise cuda:0.
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            built = self.build(move_data_to_device(batch, self.device))
            if isinstance(built, dict):
                ready = torch.cuda.Event()
                ready.record(self._stream)
                built[READY] = ready
        return built


def join_training_stream(batch: Any) -> Any:
    """The training stream's side of :class:`DevicePrefetchLoader`: wait for a pending batch's build (on the host),
    then (on the device) for its kernels, and hand its tensors to the current stream. Other batches pass unchanged."""
    if isinstance(batch, PendingBatch):
        batch = batch.result()
    if not isinstance(batch, dict) or READY not in batch:
        return batch
    current = torch.cuda.current_stream()
    current.wait_event(batch.pop(READY))

    def adopt(value: Any) -> None:
        if isinstance(value, torch.Tensor) and value.is_cuda:
            value.record_stream(current)
        elif isinstance(value, dict):
            for v in value.values():
                adopt(v)
        elif isinstance(value, list | tuple):
            for v in value:
                adopt(v)
        elif hasattr(value, "__dataclass_fields__"):
            for k in value.__dataclass_fields__:
                adopt(getattr(value, k))

    adopt(batch)
    return batch
