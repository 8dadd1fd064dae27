"""Micro-batching of concurrent requests: the corrector's decoder and the in-process upstream
both serve one queue per model, and gather what arrives within a short wait into one call."""
import queue
import time
from typing import Any, List


def collect_batch(requests: "queue.Queue", first: Any, max_batch: int,
                  max_wait_s: float) -> List[Any]:
    """`first` and whatever else arrives within `max_wait_s` of it, up to `max_batch` items. A
    None on the queue is the stop marker: it ends this batch and is put back, so the worker
    sees it next and stops after finishing the batch."""
    items, deadline = [first], time.monotonic() + max_wait_s
    while len(items) < max_batch:
        try:
            item = requests.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if item is None:
            requests.put(None)
            break
        items.append(item)
    return items
