"""The one error every importer raises when a checkpoint does not fit the model it is loaded into."""
from typing import Iterable, Sequence


class CheckpointMismatchError(ValueError):
    """Lists every missing, unexpected and mis-shaped tensor at once, so one run shows all problems."""

    def __init__(self, source: str, missing: Iterable[str] = (), unexpected: Iterable[str] = (),
                 mismatched: Iterable[tuple[str, Sequence[int], Sequence[int]]] = ()):
        self.source = str(source)
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.mismatched = sorted((n, tuple(e), tuple(g)) for n, e, g in mismatched)
        lines = [f"checkpoint {self.source} does not match the model:"]
        lines += [f"  missing tensor: {n}" for n in self.missing]
        lines += [f"  unexpected tensor: {n}" for n in self.unexpected]
        lines += [f"  mis-shaped tensor: {n}: expected {e}, found {g}" for n, e, g in self.mismatched]
        super().__init__("\n".join(lines))

    @property
    def has_problems(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def raise_if_any(self) -> None:
        """Importers build the error from their comparison and call this; no problems, no raise."""
        if self.has_problems:
            raise self
