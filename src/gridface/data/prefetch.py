"""Build the next batch on a side CUDA stream while the current step runs.

Lightning fetches batch n+1 from the loader before it runs step n (to know whether n is the last), then moves
batch n to the device and calls ``on_after_batch_transfer`` right before step n. Built there, a device-path batch
(decode, letterbox, augmentation, targets) runs on the training stream between two steps, and the GPU trains
nothing meanwhile. :class:`DevicePrefetchLoader` moves and builds each batch as Lightning fetches it, on its own
stream: batch n+1's kernels are queued before step n's and run beside them. The batch carries the event that ends
its build; the datamodule's ``on_after_batch_transfer`` makes the training stream wait for that event (on the
device, the host never waits) and hands the tensors to the training stream's allocator (``record_stream``).

The wrapper asks its loader for batches exactly when Lightning would, so the loader's saved position (exact
resume) is unchanged; ``state_dict``, ``sampler``, ``len`` and the rest are the loader's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from lightning_fabric.utilities.apply_func import move_data_to_device

READY = "_ready"  # the key of a prefetched batch's CUDA event


class DevicePrefetchLoader:
    """Wraps a loader whose batches ``build`` finishes on ``device``: on a CUDA device on a side stream; elsewhere
    (tests of the wrapper on the CPU) in place, with nothing to wait for."""

    def __init__(self, loader: Any, device: torch.device, build: Callable[[Any], Any]) -> None:
        self.loader, self.device, self.build = loader, torch.device(device), build
        self._stream: torch.cuda.Stream | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:  # sampler, batch_size, state_dict, load_state_dict, limit_batches, ...
        if name in ("loader", "device", "build", "_stream"):
            raise AttributeError(name)
        return getattr(self.loader, name)

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loader.load_state_dict(state_dict)

    def __iter__(self) -> Iterator[Any]:
        if self.device.type != "cuda":
            for batch in self.loader:
                yield self.build(move_data_to_device(batch, self.device))
            return
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        stream = self._stream
        for batch in self.loader:
            # Nothing the build reads is written by the training stream (host batches, the encoder's constants), and
            # its outputs reach the training stream through the event and record_stream: no wait here.
            with torch.cuda.stream(stream):
                built = self.build(move_data_to_device(batch, self.device))
                if isinstance(built, dict):
                    ready = torch.cuda.Event()
                    ready.record(stream)
                    built[READY] = ready
            yield built


def join_training_stream(batch: Any) -> Any:
    """The training stream's side of :class:`DevicePrefetchLoader`: wait (on the device) for the batch's build
    and hand its tensors to the current stream. Other batches pass unchanged."""
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
