"""The one interface every LLM backend of the sampling job implements.

The job hands a backend a list of `Request`s (prompt text, the same prompt as chat turns, and a
seed derived from the run seed and the example id) and a `SamplingParams`; the backend returns,
per request, the greedy output followed by `num_samples` samples. Keeping the seed per example is
what makes a pool independent of batching, host count and resumption.
"""
import abc
import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import gin


class BackendError(RuntimeError):
    """A backend could not produce an example's generations (after its own retries)."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Greedy + `num_samples` samples at `temperature` with nucleus `top_p` (paper: 4 at 0.6)."""

    greedy: bool = True
    num_samples: int = 4
    temperature: float = 0.6
    top_p: float = 1.0
    max_new_tokens: int = 64
    stop: Tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "stop", tuple(self.stop))
        problems = [msg for ok, msg in [
            (self.num_samples >= 0, "num_samples must be >= 0"),
            (self.greedy or self.num_samples > 0, "nothing to generate: greedy=False and "
                                                  "num_samples=0"),
            (self.num_samples == 0 or self.temperature > 0, "samples need temperature > 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
        ] if not ok]
        if problems:
            raise ValueError(f"SamplingParams: {'; '.join(problems)}")

    def with_stops(self, stops: Sequence[str]) -> "SamplingParams":
        return dataclasses.replace(self, stop=tuple(dict.fromkeys((*self.stop, *stops))))


@dataclasses.dataclass(frozen=True)
class Request:
    id: str
    prompt: str
    messages: Tuple[dict, ...]
    seed: int


@dataclasses.dataclass(frozen=True)
class Generation:
    text: str
    decoding: str  # "greedy" | "sample"
    temperature: float
    logprob: Optional[float] = None
    num_tokens: int = 0

    def candidate(self, generator: str, prompt_id: Optional[str], text: str) -> dict:
        """The pool-format candidate, with `text` after template clean-up."""
        return {"text": text, "generator": generator, "prompt_id": prompt_id,
                "decoding": self.decoding, "temperature": float(self.temperature),
                "logprob": None if self.logprob is None else float(self.logprob)}


class Backend(abc.ABC):
    """An LLM that turns prompts into generations."""

    @property
    @abc.abstractmethod
    def generator(self) -> str:
        """Name written into every candidate's `generator` field."""

    @abc.abstractmethod
    def generate(self, requests: Sequence[Request],
                 params: SamplingParams) -> List[List[Generation]]:
        """Per request: [greedy (if params.greedy)] + num_samples samples, in that order."""

    def describe(self) -> Dict:
        """What the manifest records about this backend (never secrets)."""
        return {"backend": type(self).__name__, "generator": self.generator}

    def fingerprint(self) -> Dict:
        """What must not change when a job resumes into the same pool (not, e.g., a server URL)."""
        return {"generator": self.generator}

    def stats(self) -> Dict:
        """Counters for the manifest and log, e.g. retries."""
        return {}

    def close(self) -> None:
        pass
