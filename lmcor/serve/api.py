"""The OpenAI-compatible API of `lmcor serve`: its endpoints, the checks that turn a client's
completion or chat request into the proxy's own request, and the reply and error bodies."""
import json
import time
import uuid
from typing import Tuple

from lmcor.serve.upstream import ApiError

ENDPOINTS = ("/v1/completions", "/v1/chat/completions")


def _chat_prompt(messages) -> str:
    """Chat turns as one prompt (Gemma's template), for upstreams that take text."""
    turns = [f"<start_of_turn>{'model' if m['role'] == 'assistant' else 'user'}\n"
             f"{m['content']}<end_of_turn>\n" for m in messages]
    return "".join(turns) + "<start_of_turn>model\n"


def _is_int(value) -> bool:
    # JSON true/false arrive as bool, a subclass of int: `"max_tokens": true` is not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _max_tokens(body: dict, limit: int) -> int:
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:  # absent or null: the next name, then the server's limit
            continue
        if not _is_int(value) or not 1 <= value <= limit:
            raise ApiError(400, f"{name} must be an integer in [1, {limit}], got "
                                f"{json.dumps(value)}")
        return value
    return limit


def _stop(value) -> Tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ApiError(400, f'field "stop" must be a string or a list of strings, got '
                            f"{json.dumps(value)}")
    return tuple(s for s in value if s)


def parse_body(raw: bytes, chat: bool, limits: dict) -> dict:
    """Validated client request -> {"prompt", "messages", "source", "max_tokens", ...}."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    if body.get("stream"):
        raise ApiError(400, "stream=true is not supported: the corrector needs the whole pool "
                            "before it can write; send stream=false")
    n = body.get("n", 1)
    if n is not None and (not _is_int(n) or n != 1):
        raise ApiError(400, "n must be 1: the proxy returns one corrected output")
    max_tokens = _max_tokens(body, limits["max_tokens"])
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise ApiError(400, f"seed must be an integer, got {json.dumps(seed)}")
    extra = body.get("lmcor") or {}
    if not isinstance(extra, dict):
        raise ApiError(400, 'field "lmcor" must be an object')
    if chat:
        messages = body.get("messages")
        ok = isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and
            isinstance(m.get("role"), str) for m in messages)
        if not ok:
            raise ApiError(400, 'field "messages" must be a non-empty list of '
                                '{"role": str, "content": str}')
        prompt, default_source = _chat_prompt(messages), messages[-1]["content"]
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, 'field "prompt" must be a string (one prompt per request)')
        messages, default_source = None, prompt
    source = extra.get("source", default_source)
    if not isinstance(source, str):
        raise ApiError(400, 'field "lmcor.source" must be a string')
    return {"prompt": prompt, "messages": messages, "source": source, "max_tokens": max_tokens,
            "stop": _stop(body.get("stop")), "seed": 0 if seed is None else seed,
            "model": str(body.get("model") or "lmcor"),
            "return_candidates": bool(extra.get("return_candidates"))}


def response(req: dict, chat: bool, text: str, prompt_tokens: int, completion_tokens: int,
             finish_reason: str, candidates) -> dict:
    """The OpenAI reply; token counts are in the corrector's vocabulary (its input and
    output), not the upstream's."""
    choice = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    out = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
           "object": "chat.completion" if chat else "text_completion",
           "created": int(time.time()), "model": req["model"], "choices": [choice],
           "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                     "total_tokens": prompt_tokens + completion_tokens}}
    if req["return_candidates"]:
        out["lmcor"] = {"candidates": candidates}
    return out


def error_payload(e: ApiError) -> dict:
    return {"error": {"message": e.message, "type": e.kind, "code": e.status}}
