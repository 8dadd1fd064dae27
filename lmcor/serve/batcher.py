"""The micro-batcher of `lmcor serve`: concurrent requests' corrector inputs, gathered for a
short wait and decoded together in one call per output length."""
import concurrent.futures
import dataclasses
from typing import List

from absl import logging

from lmcor.serve.batching import BatchWorker
from lmcor.serve.decoder import Decoder
from lmcor.serve.prometheus import Metrics


@dataclasses.dataclass
class _Item:
    ids: List[int]
    length: int  # the output length it is decoded at
    max_tokens: int
    future: concurrent.futures.Future


class MicroBatcher(BatchWorker):
    """Queues prepared corrector inputs; one thread decodes up to `max_batch` of them at once,
    waiting at most `max_wait_ms` after the first for others to arrive. Inputs of one batch
    that need different output lengths are decoded in one call per length, so that a request's
    answer does not depend on the `max_tokens` of the requests it happened to share a batch
    with."""

    def __init__(self, decoder: Decoder, metrics: Metrics, max_batch: int, max_wait_ms: float):
        self.decoder, self.metrics = decoder, metrics
        super().__init__("lmcor-batcher", max_batch, max_wait_ms)

    def submit(self, ids: List[int], max_tokens: int) -> concurrent.futures.Future:
        future = concurrent.futures.Future()
        self.queue.put(_Item(ids, self.decoder.length_for(max_tokens), max_tokens, future))
        return future

    def accept(self, item: _Item) -> bool:
        # A request that already gave up (decode timeout) is not decoded.
        return item.future.set_running_or_notify_cancel()

    def group_key(self, item: _Item) -> int:
        return item.length

    def handle(self, length: int, group: List[_Item]) -> None:
        from lmcor.inference.settings import row_bucket

        try:
            outs = self.decoder.decode([item.ids for item in group], length,
                                       row_bucket(len(group), self.max_batch))
            results = [self.decoder.finish(ids, ended, item.max_tokens)
                       for item, (ids, ended) in zip(group, outs)]
        except Exception as e:  # one bad batch must not stop the server
            logging.exception("corrector decode failed")
            for item in group:
                item.future.set_exception(e)
            return
        self.metrics.batch(len(group))
        for item, result in zip(group, results):
            item.future.set_result(result)
