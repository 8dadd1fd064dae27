"""Atomic file writes: a reader never sees a half-written file, even if the writer is killed.

The data goes to a temporary file in the destination's own directory (so the final rename stays
on one filesystem and is atomic), is fsynced, then renamed over the destination.
"""
import contextlib
import hashlib
import os
import tempfile
from typing import IO, Iterator, List, Optional, Sequence, Tuple, Union

PathLike = Union[str, os.PathLike]


def umask() -> int:
    """The process's umask, read without changing it where the kernel says it (Linux): setting
    it to read it back would race with other threads creating files meanwhile."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode open() or mkdir() would give a new file or folder: what the temporary files and
    folders of an atomic write get before their rename, since mkstemp and mkdtemp make them
    private (0600, 0700) whatever the umask."""
    return (0o777 if directory else 0o666) & ~umask()


def _fsync_dir(directory: str) -> None:
    # The rename itself lives in the directory entry; without this a crash can lose it.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some filesystems (and Windows) refuse to open directories
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", encoding: str = "utf-8") -> Iterator[IO]:
    """Open a temporary file next to `path`; on clean exit fsync and rename it onto `path`.

    If the block raises, the temporary file is removed and `path` is left untouched.
    Only write modes ("w", "wb", "x", "xb") make sense here.
    """
    if not any(c in mode for c in "wx") or "+" in mode:
        raise ValueError(f"atomic_open supports write modes only, got {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    if "x" in mode and os.path.exists(path):
        raise FileExistsError(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    binary = "b" in mode
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": encoding})) as f:
            os.fchmod(f.fileno(), default_mode())
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: PathLike, data: str, encoding: str = "utf-8") -> None:
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(data)


class LineCountError(ValueError):
    """Files that must be line-aligned have different numbers of lines."""


def read_lines(path: PathLike) -> List[str]:
    """A text file's lines without their '\\n', keeping empty lines and all other whitespace.

    Splits on '\\n' only: universal newlines and str.splitlines() also split on '\\r', U+2028,
    form feeds etc., which would shift every later segment against its aligned files.
    """
    with open(path, "r", encoding="utf-8", newline="\n") as f:
        return [line[:-1] if line.endswith("\n") else line for line in f]


def read_aligned(paths: Sequence[PathLike]) -> List[List[str]]:
    """Read line-aligned files; refuse (naming both files and counts) any that differ."""
    columns = [read_lines(p) for p in paths]
    for path, col in zip(paths[1:], columns[1:]):
        if len(col) != len(columns[0]):
            raise LineCountError(f"{os.fspath(path)}: has {len(col)} lines but {os.fspath(paths[0])} "
                                 f"has {len(columns[0])}; these files must be line-aligned")
    return columns


def file_sha256(path: PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_state(path: PathLike) -> Optional[Tuple[int, int, int]]:
    """(inode, mtime, size): what tells a file rewritten from one left as it was (an atomic
    write renames a new inode into place); None when absent."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size
