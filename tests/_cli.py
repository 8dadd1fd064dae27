"""What the command-line tests share: the message of a command's one-line error."""


def one_line_error(err: str, command: str) -> str:
    """The message of a one-line `lmcor <command>: error: ...` on stderr."""
    prefix = f"lmcor {command}: error: "
    assert err.startswith(prefix) and err.count("\n") == 1, err
    return err[len(prefix):].strip()


def run_pool(argv, capsys):
    """`lmcor pool ARGV` in this process: (exit status, its JSON output or None, stderr)."""
    import json

    from lmcor.cli import pool_command

    code = pool_command.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err
