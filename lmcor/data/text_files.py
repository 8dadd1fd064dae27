"""UTF-8 text files read line by line, a byte that is not UTF-8 named by file, line and column.

Pools, the dataset importers and `lmcor score` read text through here, so a bad byte anywhere
gives the same one error instead of a UnicodeDecodeError that names neither file nor line.
"""
import gzip
import os
from typing import Iterator, List, Optional, Sequence, Tuple

from lmcor.io_utils import read_aligned


class TextError(ValueError):
    """A text file holds a byte sequence that is not UTF-8; names file, line and column."""

    def __init__(self, path: str, lineno: int, problem: str):
        super().__init__(f"{path}:{lineno}: {problem}")
        self.path, self.lineno, self.problem = path, lineno, problem


def _decode_line(raw: bytes, path: str, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        # Everything before e.start decoded, so it can be decoded again to count characters.
        column = len(raw[:e.start].decode("utf-8")) + 1
        raise TextError(path, lineno, f"not valid UTF-8 at column {column} "
                                      f"(byte 0x{raw[e.start]:02x}: {e.reason})") from None


def text_lines(path: str, gz: Optional[bool] = None) -> Iterator[Tuple[int, str]]:
    """(line number, line with its "\\n") for each physical line of a UTF-8 file, gunzipped if
    `gz` (default: if the name ends in .gz).

    Lines are split on b"\\n" alone and decoded one by one: a text-mode reader decodes blocks
    ahead of the line it hands out, so it blames a bad byte on an earlier line. No UTF-8
    sequence contains the byte 0x0a, so the split never cuts a character. Raises TextError.
    """
    gz = path.endswith(".gz") if gz is None else gz
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
        for lineno, raw in enumerate(f, start=1):
            yield lineno, _decode_line(raw, path, lineno)


def read_aligned_text(paths: Sequence[str]) -> List[List[str]]:
    """io_utils.read_aligned, with a byte that is not UTF-8 reported as TextError (file, line,
    column) instead of a UnicodeDecodeError that names neither file nor line."""
    try:
        return read_aligned(paths)
    except UnicodeDecodeError:
        # Rare, so find the culprit by reading again, as read_aligned does: split on "\n"
        # alone, never gunzipped.
        for path in paths:
            for _ in text_lines(os.fspath(path), gz=False):
                pass
        raise
