"""`lmcor serve`: an OpenAI-compatible proxy that corrects any LLM's output (lmcor.serve,
docs/serving.md).

    lmcor serve --corrector=MODEL_DIR --upstream=http://host:port/v1 [--num_candidates=5]
    lmcor serve --corrector=MODEL_DIR --upstream=jax:gguf:/path/gemma.gguf

The command's flags, their checks before anything is loaded, and the process around the
server: it listens at once, loads and compiles in the background (`ServeApp.start`), and on
SIGTERM/SIGINT finishes the requests in flight and exits, abandoning any start-up still under
way (within about 2 s).

Nothing heavy is imported at module level (the corrector pulls in JAX and TensorFlow), so that
`--help` and the checks of the flags answer in well under a second.
"""
import argparse
import errno
import functools
import os
import signal
import sys
import threading
import time
from typing import Optional, Tuple

from absl import logging

from lmcor.cli import gin_flags
from lmcor.cli.command_errors import report_error
from lmcor.cli.gin_command import check_gin_flags
from lmcor.paths import RUN_CONFIG
from lmcor.serve.app import ServeApp
from lmcor.serve.server import Server
from lmcor.serve.upstream import check_upstream, make_upstream

EPILOG = """\
Gin flags (parsed after MODEL_DIR/config.gin, overriding it):
  --gin_file=FILE           a Gin file (repeatable); needed for a run that saved no config.gin
  --gin.NAME=VALUE          one binding, e.g. --gin.corrector_settings.beam_size=2 or
                            --gin.corrector_settings.max_input_tokens=512 (fewer shapes to
                            compile at start-up)

The server listens at once; /healthz answers 503 {"status": "warming_up", ...} with the compile
progress while the corrector loads and compiles the decode shapes that can serve any request,
then 200 {"status": "ok", ...} while the smaller shapes compile in the background. See
docs/serving.md."""


# How long a shutdown waits for the start-up step in progress (a shape's compile takes from
# seconds to minutes) before it abandons it.
STARTUP_WAIT_S = 1.0


def _option(parser: argparse.ArgumentParser, flag: str, default, metavar: Optional[str],
            text: str):
    """A flag parsed to its default's type, whose help ends with that default (the form
    every flag's help takes)."""
    parser.add_argument(flag, type=type(default), default=default, metavar=metavar,
                        help=f"{text} (default: %(default)s)")


def _flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmcor serve", description=__doc__.split("\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--corrector", required=True, metavar="MODEL_DIR",
        help="folder `lmcor train` wrote (checkpoints/ and config.gin), or a released adapter "
             "folder (required)")
    add("--upstream", required=True, metavar="URL",
        help="the LLM: an OpenAI-compatible http(s)://host:port/v1, or jax:gguf:PATH for Gemma "
             "3 from a GGUF file in this process (required)")
    # Only shown here: split_gin_flags takes --gin_file/--gin.* out before argparse runs.
    add("--gin_file", action="append", metavar="FILE",
        help="Gin file parsed after MODEL_DIR/config.gin (repeatable; default: none)")
    add("--checkpoint_step", type=int, default=None, metavar="N",
        help="checkpoint step to serve (default: the best by validation, else the latest)")
    add("--upstream_model", default=None, metavar="NAME",
        help="model name sent upstream (default: the client's `model` field)")
    _option(p, "--upstream_api_key_env", "OPENAI_API_KEY", "VAR",
            "environment variable holding the upstream's API key; unset sends none")
    _option(p, "--upstream_timeout_s", 60.0, "S", "deadline of one upstream call, 504 past it")
    _option(p, "--upstream_retries", 0, "N",
            "retries of failed upstream calls: timeouts, 429 and 5xx included")
    _option(p, "--upstream_connect_retries", 3, "N",
            "retries of upstream calls whose connection was refused or dropped before any reply")
    _option(p, "--num_candidates", 5, "N", "pool size: the greedy output + N-1 samples")
    _option(p, "--temperature", 0.6, "T", "sampling temperature of the upstream's samples")
    _option(p, "--host", "127.0.0.1", None, "address to listen on")
    _option(p, "--port", 8000, None, "port to listen on; 0 picks a free one")
    add("--auth_token_env", default=None, metavar="VAR",
        help="environment variable holding the bearer token clients must send "
             "(default: none, no auth)")
    _option(p, "--max_batch_size", 8, "N", "most requests decoded in one corrector call")
    _option(p, "--max_wait_ms", 10.0, "MS",
            "how long a batch waits after its first request for others")
    _option(p, "--max_request_bytes", 1 << 20, "N", "largest request body; larger ones get 413")
    _option(p, "--max_tokens", 256, "N", "largest max_tokens a client may ask for, and the "
            "max_tokens of a request without one")
    add("--decode_lengths", default="", metavar="N,N",
        help="output lengths (corrector tokens) to compile the corrector decode for, besides "
             "corrector_settings.max_decode_tokens: a request decodes at the shortest one "
             "that holds its max_tokens, then is cut to max_tokens; each adds a warm-up "
             "compilation per decode shape (default: none)")
    _option(p, "--decode_timeout_s", 60.0, "S", "corrector decode deadline, 504 past it")
    return p


def _auth_token(env: Optional[str]) -> Optional[str]:
    if not env:
        return None
    token = os.environ.get(env)
    if not token:
        raise ValueError(f"--auth_token_env={env}: that environment variable is empty or unset")
    return token


def _decode_lengths(text: str) -> Tuple[int, ...]:
    try:
        return tuple(int(n) for n in text.replace(" ", "").split(",") if n)
    except ValueError:
        raise ValueError(f"--decode_lengths={text!r}: expected integers separated by commas")


def _bind(host: str, port: int, app: ServeApp) -> Server:
    if not 0 <= port <= 65535:
        raise ValueError(f"--port={port}: expected 0-65535")
    try:
        return Server((host, port), app)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ValueError(f"--port={port}: {host}:{port} is already in use") from None
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def _fail(message: str, code: int = 2) -> int:
    return report_error("lmcor serve", message, code)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        files, bindings, rest = gin_flags.split_gin_flags(argv)
    except ValueError as e:
        return _fail(str(e))
    args = _flags().parse_args(rest)
    # Everything that can be checked without the corrector is, before the minutes of loading
    # and compiling it.
    try:
        check_upstream(args.upstream)
        if not os.path.isdir(args.corrector):
            raise ValueError(f"--corrector={args.corrector}: no such folder")
        check_gin_flags(files, bindings, os.path.join(args.corrector, RUN_CONFIG))
        app = ServeApp(num_candidates=args.num_candidates, temperature=args.temperature,
                       max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                       max_request_bytes=args.max_request_bytes, max_tokens=args.max_tokens,
                       decode_timeout_s=args.decode_timeout_s,
                       auth_token=_auth_token(args.auth_token_env),
                       decode_lengths=_decode_lengths(args.decode_lengths))
        server = _bind(args.host, args.port, app)
    except ValueError as e:
        return _fail(str(e))

    def load_corrector():
        from lmcor.inference.corrector import Corrector

        overrides = functools.partial(gin_flags.parse_gin, files, bindings, finalize=False) \
            if files or bindings else None
        return Corrector.from_model_dir(args.corrector, step=args.checkpoint_step,
                                        overrides=overrides)

    def load_upstream():
        upstream = make_upstream(args.upstream, args.upstream_model, args.upstream_timeout_s,
                                 args.upstream_retries, args.upstream_api_key_env,
                                 args.upstream_connect_retries, args.max_batch_size,
                                 args.max_wait_ms)
        upstream.load()
        return upstream

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _serve(server, app, stop, load_corrector, load_upstream)
    finally:  # main() may run inside another program (tests): give its handlers back
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(server: Server, app: ServeApp, stop: threading.Event, load_corrector,
           load_upstream) -> int:
    started = time.perf_counter()
    server.start()
    print(f"lmcor serve: listening on {server.url}", flush=True)
    print("lmcor serve: warming up (GET /healthz for progress)", flush=True)
    app.start(load_corrector, load_upstream, lambda warmup: print(
        f"lmcor serve: ready after {time.perf_counter() - started:.1f} s ({warmup['shapes']} "
        f"of {warmup['of']} decode shapes compiled in {warmup['seconds']} s; the rest compile "
        "in the background)", flush=True))
    while not stop.wait(0.5):
        if app.failed:
            break
    failed = app.failed
    logging.info("shutting down: finishing in-flight requests")
    done = server.stop(loader_wait_s=STARTUP_WAIT_S)
    if failed:
        return _fail(failed, 1)
    if not done:
        # Still loading or compiling: ended here without the interpreter's teardown, which XLA
        # would abort in the middle of a compile; nothing of it is kept anyway.
        print("lmcor serve: stopped (start-up abandoned)", flush=True)
        sys.stderr.flush()
        os._exit(0)
    print("lmcor serve: stopped", flush=True)
    return 0
