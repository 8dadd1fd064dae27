"""Micro-batching of concurrent requests: the corrector's decoder and the in-process upstream
both serve one queue per model, and gather what arrives within a short wait into one call."""
import queue
import threading
import time
from typing import Any, Dict, Hashable, List


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


class BatchWorker:
    """One thread serving a queue in micro-batches: the items that arrive together
    (`collect_batch`) are grouped by `group_key`, and `handle(key, items)` runs once per group.
    Subclasses set their own state before calling this __init__, which starts the thread."""

    def __init__(self, name: str, max_batch: int, max_wait_ms: float):
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self.queue: "queue.Queue" = queue.Queue()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Finishes the batch in hand, then ends the thread."""
        self.queue.put(None)
        self.thread.join()

    def accept(self, item: Any) -> bool:
        """Whether a collected item is still wanted (e.g. its caller has not given up)."""
        return True

    def group_key(self, item: Any) -> Hashable:
        raise NotImplementedError

    def handle(self, key: Hashable, items: List[Any]) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            groups: Dict[Hashable, List[Any]] = {}
            for item in collect_batch(self.queue, first, self.max_batch, self.max_wait):
                if self.accept(item):
                    groups.setdefault(self.group_key(item), []).append(item)
            for key, items in groups.items():
                self.handle(key, items)
