"""The corrector's beam search at the fixed decode shapes and output lengths a server compiles
before it takes a request, and the cut of each output to its request's `max_tokens`. The
padding and the decode call are the Corrector's own (`Corrector.decode_padded`)."""
import threading
from typing import List, Optional, Sequence, Tuple


class Decoder:
    """The corrector's beam search at a few fixed output lengths.

    The decode loop is compiled for a static number of new tokens, so decoding each request at
    its own `max_tokens` would compile once per distinct value while serving. Instead a request
    is decoded at the shortest of `lengths` that holds its `max_tokens` (the corrector's
    `max_decode_tokens` is always one of them, and the longest) and its output is cut to
    `max_tokens` corrector tokens.

    A server marks the shapes it has compiled (`warm`); a batch then runs at the smallest of
    them that holds its rows and width, never compiling while serving. A decoder nobody warms
    decodes every batch at its own shape, compiling on first use."""

    def __init__(self, corrector, max_rows: int, lengths: Sequence[int] = ()):
        top = corrector.settings.max_decode_tokens
        self.corrector, self.max_rows = corrector, max_rows
        self.lengths = tuple(sorted({min(int(n), top) for n in lengths} | {top}))
        self.compiled: Optional[set] = None  # (rows, width, length) once `warm` was called
        self._lock = threading.Lock()

    def length_for(self, max_tokens: int) -> int:
        return next((n for n in self.lengths if n >= max_tokens), self.lengths[-1])

    def shapes(self) -> List[Tuple[int, int, int]]:
        """Every (rows, width, output length) `decode` is called with. The first
        `len(self.lengths)` can serve any batch: per output length, the most rows at the
        widest width."""
        pairs = self.corrector.decode_shapes(self.max_rows)
        top = (max(r for r, _ in pairs), max(w for _, w in pairs))
        return ([(*top, n) for n in self.lengths]
                + [(r, w, n) for n in self.lengths for r, w in pairs if (r, w) != top])

    def _shape(self, rows: int, width: int, length: int) -> Tuple[int, int]:
        """The (rows, width) a batch runs at: its own, or while some are not compiled yet the
        cheapest compiled one that holds it (outputs equal up to float rounding)."""
        with self._lock:
            if self.compiled is None or (rows, width, length) in self.compiled:
                return rows, width
            fits = [(r * w, r, w) for r, w, n in self.compiled
                    if n == length and r >= rows and w >= width]
        if not fits:
            raise RuntimeError(f"no compiled decode shape holds {rows} rows x {width} tokens "
                               f"at output length {length}")
        return min(fits)[1:]

    def decode(self, token_lists: Sequence[Sequence[int]], length: int,
               rows: int) -> List[Tuple[List[int], bool]]:
        """Per input: (output ids without EOS, whether the corrector ended it with EOS)."""
        c = self.corrector
        width = c.width_bucket(max(len(t) for t in token_lists))
        dec = c.decode_padded(token_lists, *self._shape(rows, width, length), length)
        eos, out = int(c.lm.eos_id), []
        for tokens, n in zip(dec.tokens[:len(token_lists)], dec.lengths):
            ids = [int(t) for t in tokens[:int(n)]]
            ended = bool(ids) and ids[-1] == eos
            while ids and ids[-1] == eos:
                ids.pop()
            out.append((ids, ended))
        return out

    def warm(self, rows: int, width: int, length: int):
        """Compiles the decode of this shape without running it; batches may then use it."""
        self.corrector.decode_padded([[int(self.corrector.lm.eos_id)] * width], rows, width,
                                     length, compile_only=True)
        with self._lock:
            self.compiled = (self.compiled or set()) | {(rows, width, length)}

    def finish(self, ids: List[int], ended: bool, max_tokens: int) -> Tuple[str, int, str]:
        """(text, completion tokens, finish_reason) of one output cut to max_tokens: "length"
        when max_tokens cut it or the corrector ran out of output length before its EOS."""
        kept = ids[:max_tokens]
        reason = "length" if len(ids) > max_tokens or not ended else "stop"
        return self.corrector.vocab.decode(kept), len(kept), reason
