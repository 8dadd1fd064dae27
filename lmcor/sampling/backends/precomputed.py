"""Generations that already exist on disk (another system's outputs, an earlier run) as a backend.

Two sources, both looked up by example id:
  * a pool (file or directory of shards): each id's greedy candidate (optionally of one
    `generator`) and its first `num_samples` sampled candidates;
  * line-aligned text files, one output per line in the order of a task split (`greedy_file`
    and one file per sample in `sample_files`), with ids taken from that split's importer.
A missing id or too few samples is an error naming the id and the source, never a gap.
"""
from typing import Dict, List, Optional, Sequence

import gin

from lmcor.sampling.backends.base import Backend, BackendError, Generation, Request, SamplingParams
from lmcor.data import importers
from lmcor.data.pool import read_pool
from lmcor.io_utils import read_lines


class PrecomputedError(BackendError, ValueError):
    pass


@gin.configurable
class PrecomputedBackend(Backend):
    def __init__(self, pool: Optional[str] = None, generator: Optional[str] = None,
                 greedy_file: Optional[str] = None, sample_files: Sequence[str] = (),
                 task: Optional[str] = None, split: Optional[str] = None,
                 data_dir: Optional[str] = None, name: str = "precomputed",
                 sample_temperature: float = 1.0):
        if (pool is None) == (greedy_file is None and not sample_files):
            raise PrecomputedError("PrecomputedBackend needs exactly one source: `pool` or "
                                   "`greedy_file`/`sample_files`")
        self._name = generator or name
        self._source = pool or greedy_file or sample_files[0]
        if pool is not None:
            self._by_id = self._from_pool(pool, generator)
        else:
            # Text files do not say how they were sampled: the caller does.
            self._sample_temperature = sample_temperature
            self._by_id = self._from_lines(greedy_file, list(sample_files), task, split, data_dir)

    @property
    def generator(self) -> str:
        return self._name

    def describe(self) -> Dict:
        return {**super().describe(), "source": self._source}

    @staticmethod
    def _from_pool(path: str, generator: Optional[str]) -> Dict[str, Dict[str, list]]:
        by_id = {}
        for rec in read_pool(path):
            cands = [c for c in rec["candidates"] if generator in (None, c["generator"])]
            by_id[rec["id"]] = {
                "greedy": [Generation(c["text"], "greedy", 0.0, c["logprob"])
                           for c in cands if c["decoding"] == "greedy"][:1],
                "sample": [Generation(c["text"], "sample", c["temperature"], c["logprob"])
                           for c in cands if c["decoding"] == "sample"]}
        return by_id

    def _from_lines(self, greedy_file, sample_files, task, split, data_dir):
        if task not in importers.IMPORTERS or not split or not data_dir:
            raise PrecomputedError("line-aligned outputs need `task`, `split` and `data_dir` to "
                                   "know which example each line belongs to")
        ids = [r["id"] for r in importers.IMPORTERS[task](data_dir, split)]
        columns = {}
        for kind, path in [("greedy", greedy_file)] + [("sample", p) for p in sample_files]:
            if path is None:
                continue
            lines = read_lines(path)
            if len(lines) != len(ids):
                raise PrecomputedError(f"{path}: {len(lines)} lines but {task}/{split} has "
                                       f"{len(ids)} examples")
            columns.setdefault(kind, []).append(lines)
        by_id = {}
        for i, ex_id in enumerate(ids):
            by_id[ex_id] = {
                "greedy": [Generation(col[i], "greedy", 0.0) for col in columns.get("greedy", [])],
                "sample": [Generation(col[i], "sample", self._sample_temperature) for col in columns.get("sample", [])]}
        return by_id

    def generate(self, requests: Sequence[Request],
                 params: SamplingParams) -> List[List[Generation]]:
        out = []
        for req in requests:
            found = self._by_id.get(req.id)
            if found is None:
                raise PrecomputedError(f"{self._source}: no outputs for example {req.id!r}")
            greedy = found["greedy"][:1] if params.greedy else []
            samples = found["sample"][:params.num_samples]
            if (params.greedy and not greedy) or len(samples) < params.num_samples:
                raise PrecomputedError(
                    f"{self._source}: example {req.id!r} has {len(found['greedy'])} greedy and "
                    f"{len(found['sample'])} sampled outputs; the job asks for "
                    f"{int(params.greedy)} and {params.num_samples}")
            out.append([Generation(g.text, g.decoding, g.temperature, g.logprob,
                                   len(g.text.split())) for g in greedy + samples])
        return out
