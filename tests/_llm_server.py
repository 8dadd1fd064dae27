"""A real OpenAI-compatible HTTP server on 127.0.0.1 for backend and job tests.

Replies are a deterministic function of (prompt, seed, temperature, choice index), so two runs
with the same seed produce the same pool. Every completion ends with a fake next demonstration,
which the job's post-processing must cut. `faults` scripts the first requests' failures:
"429", "500", "malformed" (invalid JSON), "hang" (sleeps past the client timeout) and "short"
(fewer choices than `n`). With `api_key`, other keys get 401; unknown paths get 404.
"""
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RAMBLE = "\n\nAttributes: name[Next]\nSentence: should be cut"


def reply_text(prompt_or_messages, seed, temperature, index) -> str:
    key = json.dumps([prompt_or_messages, seed, temperature, index], sort_keys=True)
    return f" out-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


class FakeLLM:
    def __init__(self, faults=(), delay_s=0.0, hang_s=1.5, api_key=None):
        self.faults = list(faults)
        self.api_key = api_key
        self.delay_s, self.hang_s = delay_s, hang_s
        self.lock = threading.Lock()
        self.requests = []  # (path, body, headers) of every request received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def next_fault(self):
        with self.lock:
            return self.faults.pop(0) if self.faults else None

    def answer(self, path, body) -> dict:
        chat = path.endswith("/chat/completions")
        source = body["messages"] if chat else body["prompt"]
        choices = []
        for i in range(body.get("n", 1)):
            text = reply_text(source, body.get("seed"), body["temperature"], i)
            if chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": text}})
            else:
                choices.append({"index": i, "text": text + RAMBLE})
        return {"id": "cmpl", "object": "text_completion", "choices": choices,
                "usage": {"completion_tokens": 3 * len(choices)}}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append((self.path, body, dict(self.headers)))
                if self.path not in ("/v1/completions", "/v1/chat/completions"):
                    return self._send(404, b'{"error": "no such endpoint"}')
                auth = self.headers.get("Authorization")
                if fake.api_key and auth != f"Bearer {fake.api_key}":
                    return self._send(401, f'{{"error": "bad key {auth}"}}'.encode())
                fault = fake.next_fault()
                if fault == "hang":
                    time.sleep(fake.hang_s)
                    return self._send(200, b"{}")
                if fault in ("429", "500"):
                    return self._send(int(fault), b'{"error": "scripted"}')
                if fault == "malformed":
                    return self._send(200, b'{"choices": [ {"text": "trunc')
                reply = fake.answer(self.path, body)
                if fault == "short":
                    reply["choices"] = reply["choices"][:-1] or [{"index": 0}]
                time.sleep(fake.delay_s)
                self._send(200, json.dumps(reply).encode())

            def _send(self, code, data):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test); nothing to answer

        return Handler
