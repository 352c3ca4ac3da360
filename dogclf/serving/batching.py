"""Dynamic batching for the local endpoint: concurrent requests merged into shared forward passes."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dogclf._faults import failpoint

__all__ = ["DynamicBatcher"]

logger = logging.getLogger(__name__)


class _Pending:
    __slots__ = ("data", "future", "size", "k")

    def __init__(self, data: Any, future: asyncio.Future[Any], k: int) -> None:
        self.data = data
        self.future = future
        self.size = len(data.batch)
        self.k = k


class DynamicBatcher:
    """Merge concurrent requests into shared forward passes on one inference thread.

    Requests queue in arrival order. A batch starts with the oldest request and takes the following ones while
    they fit in ``max_batch_size`` images, waiting up to ``max_delay_s`` after the batch's first request for more
    to arrive; a request with more images than ``max_batch_size`` runs alone. The forward pass runs on a dedicated
    thread, so the event loop keeps accepting (and the worker threads keep decoding) meanwhile.

    Args:
        model: A :class:`~dogclf.serving.handler.ServedModel`.
        max_batch_size: Most images per forward pass.
        max_delay_s: How long to wait for more requests after the first one of a batch.

    Attributes:
        batches: Forward passes run so far.
        images: Images those passes took.

    :meth:`start` must be called from the event loop that will :meth:`submit`.
    """

    def __init__(self, model: Any, max_batch_size: int = 8, max_delay_s: float = 0.01) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.batches = 0
        self.images = 0
        self._pending: collections.deque[_Pending] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def queued(self) -> int:
        """Requests waiting for a forward pass (not counting those of the pass running now)."""
        return len(self._pending)

    def start(self) -> None:
        """Start the batching task on the running event loop."""
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dogclf-infer")
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the task and fail what is still queued."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(RuntimeError("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def warm_up(self) -> None:
        """Run one forward pass of zeros on the inference thread, so the first request does not pay for the
        one-off set-up of the convolution kernels (the server answers ``/ping`` only after this)."""
        import torch

        from dogclf.serving import handler

        assert self._executor is not None
        crop = int(getattr(self.model, "crop", 224))
        zeros = handler.InferenceInput(batch=torch.zeros(1, 3, crop, crop), k=1)
        await asyncio.get_running_loop().run_in_executor(self._executor, handler.predict_fn, zeros, self.model)

    async def submit(self, data: Any) -> Any:
        """Queue one :class:`~dogclf.serving.handler.InferenceInput`; returns its
        :class:`~dogclf.serving.handler.InferenceOutput` once its batch has run.

        Raises:
            InvalidRequestError: its ``k`` is out of range (checked before queueing, so one bad request cannot
                fail the batch it would have shared).
        """
        from dogclf.serving import handler

        k = handler.resolve_k(data.k, self.model.num_classes)
        if self._arrived is None:
            raise RuntimeError("DynamicBatcher.start() was not called")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(data, future, k))
        self._arrived.set()
        return await future

    async def _wait(self, timeout: float | None) -> None:
        assert self._arrived is not None
        self._arrived.clear()
        if timeout is None:
            await self._arrived.wait()
            return
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def _next_batch(self) -> list[_Pending]:
        while not self._pending:
            await self._wait(None)
        items = [self._pending.popleft()]
        size = items[0].size
        deadline = time.monotonic() + self.max_delay_s
        while size < self.max_batch_size:
            if not self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                await self._wait(remaining)
                continue
            if size + self._pending[0].size > self.max_batch_size:
                break  # it opens the next batch
            item = self._pending.popleft()
            items.append(item)
            size += item.size
        return [item for item in items if not item.future.done()]  # timed-out requests are dropped

    async def _run(self) -> None:
        import torch

        from dogclf.serving import handler

        loop = asyncio.get_running_loop()
        while True:
            items = await self._next_batch()
            if not items:
                continue
            merged = handler.InferenceInput(batch=torch.cat([item.data.batch for item in items]), k=1)
            failpoint("serving.batcher.forward")
            try:
                output = await loop.run_in_executor(self._executor, handler.predict_fn, merged, self.model)
            except Exception as exc:  # noqa: BLE001 - handed to each waiting request
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self.batches += 1
            self.images += len(merged.batch)
            start = 0
            for item in items:
                result = handler.InferenceOutput(logits=output.logits[start:start + item.size], k=item.k,
                                                 labels=output.labels)
                start += item.size
                if not item.future.done():
                    item.future.set_result(result)
