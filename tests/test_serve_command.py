"""The `lmcor serve` command (lmcor/cli/serve_command.py) and the server's shutdown: a MODEL_DIR
served by the real process, its flags checked before anything is loaded, its help, and
SIGTERM finishing the requests in flight."""
import concurrent.futures
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error

import pytest

from lmcor.serve.app import ServeApp
from lmcor.serve.server import Server
from lmcor.serve.upstream import HttpUpstream

from _llm_server import FakeLLM
from _serve_client import PROMPT, REPO, healthz, post, wait_ready
from _tiny_corrector import shared_corrector


@pytest.fixture(scope="module")
def corrector(task_spm_path):
    return shared_corrector(task_spm_path)


def test_shutdown_finishes_in_flight_requests(corrector):
    with FakeLLM(delay_s=0.8) as llm:
        upstream = HttpUpstream(llm.base_url, None, 5.0, 0, None)
        server = Server(("127.0.0.1", 0), ServeApp(corrector, upstream, max_batch_size=4)).start()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(post, server, "/v1/completions", {"prompt": PROMPT})
            while not llm.requests:
                time.sleep(0.01)
            server.stop()  # returns only once the in-flight request is answered
            assert pending.result(timeout=10)[0] == 200
    with pytest.raises(urllib.error.URLError):
        post(server, "/v1/completions", {"prompt": PROMPT})


@pytest.fixture(scope="module")
def model_dir(task_spm_path, tmp_path_factory) -> str:
    from _tiny_corrector import tiny_config, tiny_params, write_model_dir

    path = tmp_path_factory.mktemp("model_dir")
    write_model_dir(path, task_spm_path, tiny_params(tiny_config(task_spm_path)))
    return str(path)


@pytest.mark.slow
def test_cli_serves_a_model_dir_and_stops_on_sigterm(model_dir):
    import signal

    with FakeLLM() as llm:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lmcor.serve", f"--corrector={model_dir}",
             f"--upstream={llm.base_url}", "--port=0", "--max_batch_size=1",
             "--num_candidates=3"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
        try:
            line = proc.stdout.readline()
            assert "listening on http://127.0.0.1:" in line, line
            server = type("S", (), {"url": line.split()[-1]})
            # It listens before loading the corrector: "starting" is told apart from "dead".
            status, body = healthz(server)
            assert status == 503 and body["status"] == "warming_up", body
            assert post(server, "/v1/completions", {"prompt": PROMPT})[0] == 503
            wait_ready(server)
            status, reply = post(server, "/v1/completions",
                                 {"prompt": PROMPT, "lmcor": {"return_candidates": True}})
            assert status == 200 and len(reply["lmcor"]["candidates"]) == 3
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
            out = proc.stdout.read()
            assert "ready after " in out and "stopped" in out
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.fixture(scope="module")
def slow_compiling_model_dir(task_spm_path, tmp_path_factory) -> str:
    """A tiny corrector with 16 layers a side: each decode shape compiles for several seconds
    (layers are unrolled), longer than a shutdown may take."""
    from _tiny_corrector import tiny_config, tiny_params, write_model_dir

    layers = {"num_encoder_layers": 16, "num_decoder_layers": 16}
    path = tmp_path_factory.mktemp("deep_model_dir")
    write_model_dir(path, task_spm_path, tiny_params(tiny_config(task_spm_path, **layers)),
                    **layers)
    return str(path)


def test_sigterm_during_warm_up_exits_within_3_s(slow_compiling_model_dir):
    """A server stopped while it compiles its decode shapes does not wait for the compile: it
    exits, cleanly, within 3 s."""
    import signal

    env = dict(os.environ, LMCOR_COMPILE_CACHE="0")  # a cached shape would compile at once
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmcor.serve", f"--corrector={slow_compiling_model_dir}",
         "--upstream=http://127.0.0.1:9/v1", "--port=0", "--max_batch_size=4"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO, env=env)
    try:
        server = type("S", (), {"url": proc.stdout.readline().split()[-1]})
        deadline = time.monotonic() + 120
        while healthz(server)[1].get("phase") != "compiling":
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(0.5)  # well inside the first shape's compile
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code = proc.wait(timeout=60)
        seconds = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0 and seconds <= 3.0, (code, seconds)
    assert "stopped (start-up abandoned)" in proc.stdout.read()


def test_cli_takes_bare_gin_strings_for_the_corrector(tmp_path, capsys):
    """`--gin.NAME=path` without inner quotes reaches the corrector's configurables: here the
    vocabulary, whose missing file is the first thing loading the corrector trips on."""
    import gin

    from lmcor.cli import serve_command

    try:
        code = serve_command.main([f"--corrector={tmp_path}", "--upstream=http://127.0.0.1:9/v1",
                             "--port=0", "--gin.task_vocabulary.spm_model=no/such/vocab.model"])
    finally:
        gin.clear_config()
    # The server was up (warming up) when loading failed: it stops, and says why in one line.
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(r"start-up failed: FileNotFoundError: .*no/such/vocab\.model: no such file",
                     err), err


def run_cli(args, env=None, timeout_s: float = 60.0):
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "lmcor.serve", *args], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=timeout_s)
    return proc, time.monotonic() - start


@pytest.mark.parametrize("case", ["upstream", "auth_token_env", "port", "corrector"])
def test_cli_refuses_bad_flags_before_loading(model_dir, case):
    """Flags that cannot work are refused in one line within seconds, not after the minutes of
    loading and compiling the corrector (which the valid MODEL_DIR here would go on to)."""
    env = {k: v for k, v in os.environ.items() if k != "LMCOR_TEST_UNSET_TOKEN"}
    args = {"corrector": model_dir, "upstream": "http://127.0.0.1:9/v1", "port": "0",
            "max_batch_size": "1"}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        args.update({
            "upstream": {"upstream": "ftp://x"},
            "auth_token_env": {"auth_token_env": "LMCOR_TEST_UNSET_TOKEN"},
            "port": {"port": str(busy.getsockname()[1])},
            "corrector": {"corrector": os.path.join(model_dir, "no_such_run")},
        }[case])
        proc, seconds = run_cli([f"--{k}={v}" for k, v in args.items()], env=env)
    want = {"upstream": r"--upstream=ftp://x: expected an http\(s\):// base URL",
            "auth_token_env": r"--auth_token_env=LMCOR_TEST_UNSET_TOKEN: .* unset",
            "port": r"--port=\d+: 127\.0\.0\.1:\d+ is already in use",
            "corrector": r"--corrector=.*no_such_run: no such folder"}[case]
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert re.fullmatch(r"lmcor serve: error: " + want + ".*", lines[0]), lines[0]
    assert seconds < 10, seconds


def test_help_describes_every_flag_and_returns_fast():
    from lmcor.cli import serve_command

    for action in serve_command._flags()._actions:
        if action.dest != "help":
            text = (action.help or "") % {"default": action.default}
            assert re.search(r"\((required|[^()]*default: [^)]+)\)$", text), (action.dest, text)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "lmcor.cli", "serve", "--help"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert "--gin_file" in proc.stdout and "--gin.NAME=VALUE" in proc.stdout
    assert seconds < 2.0, seconds
    # Fast because importing the command pulls in neither JAX nor TensorFlow.
    probe = ("import sys; from lmcor.cli import serve_command; "
             "print([m for m in ('jax', 'tensorflow', 'lmcor.inference.corrector') "
             "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=REPO, timeout=60).stdout
    assert out.strip() == "[]", out
