"""What the command-line tests share: the message of a command's one-line error."""


def one_line_error(err: str, command: str) -> str:
    """The message of a one-line `lmcor <command>: error: ...` on stderr."""
    prefix = f"lmcor {command}: error: "
    assert err.startswith(prefix) and err.count("\n") == 1, err
    return err[len(prefix):].strip()
