"""The OpenAI API of the HTTP gateway, driven by the official `openai` client against a real
box (Hypercorn on an ephemeral loopback port, SmolLM2 and MiniLM)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pydantic
import pytest
from fixtures_box import wait_for
from fixtures_gateway import ASK_WEATHER, TOOLS, answers_with_tools, start_long_stream

from aether_box.bus.settings import BusSettings

CHAT = [{"role": "user", "content": "Name a colour."}]
GREEDY = {"temperature": 0, "max_tokens": 6, "seed": 1}


def post(url: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None):
    """(status, JSON body) of a raw POST: for what the typed client will not send."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data, {"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_models_lists_the_installed_models_and_the_router(gateway):
    names = [m.id for m in gateway.openai().models.list()]
    assert {"smollm2", "minilm", "router"} <= set(names)


def test_chat_is_the_llm_services_answer_in_openai_shape(gateway):
    reply = gateway.openai().chat.completions.create(model="smollm2", messages=CHAT, **GREEDY)
    with gateway.client(timeout=60) as client:
        bus = client.request("llm", {"op": "chat", "model": "smollm2", "messages": CHAT, **GREEDY})
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    # Greedy, yet not always the same words twice (llama.cpp reuses the cached prompt): the
    # shape and the counts are what the gateway owes.
    assert reply.choices[0].message.content and bus["text"]
    assert reply.choices[0].finish_reason == bus["finish_reason"] == "length"
    assert reply.usage.completion_tokens == bus["usage"]["completion_tokens"] == 6
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_a_streamed_chat_comes_in_openais_chunk_order_with_usage(gateway):
    client = gateway.openai()
    whole = client.chat.completions.create(model="smollm2", messages=CHAT, **GREEDY)
    chunks = list(
        client.chat.completions.create(
            model="smollm2",
            messages=CHAT,
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
    )
    first, *deltas, finish, usage = chunks
    assert first.choices[0].delta.role == "assistant"
    assert deltas and all(c.choices[0].finish_reason is None for c in deltas)
    assert "".join(c.choices[0].delta.content or "" for c in deltas)
    assert len(deltas) <= usage.usage.completion_tokens == whole.usage.completion_tokens == 6
    assert finish.choices[0].finish_reason == whole.choices[0].finish_reason == "length"
    assert usage.choices == []
    assert len({c.id for c in chunks}) == 1


def test_completions_whole_and_streamed(gateway):
    client = gateway.openai()
    body = {"model": "smollm2", "prompt": "The sky is", **GREEDY}
    whole = client.completions.create(**body)
    assert whole.object == "text_completion" and whole.choices[0].text
    streamed = list(client.completions.create(**body, stream=True))
    assert "".join(c.choices[0].text for c in streamed)
    assert streamed[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_embeddings_as_floats_and_base64_are_the_embed_services_vectors(gateway):
    client = gateway.openai()
    texts = ["a cat sat on the mat", "stock markets fell"]
    floats = client.embeddings.create(model="minilm", input=texts)
    raw = client.embeddings.with_raw_response.create(
        model="minilm", input=texts, encoding_format="base64"
    )
    encoded = [item["embedding"] for item in json.loads(raw.http_response.text)["data"]]
    with gateway.client(timeout=60) as bus:
        vectors = bus.request("embed", {"op": "embed", "model": "minilm", "texts": texts})[
            "vectors"
        ]
    got = np.array([d.embedding for d in floats.data], dtype=np.float32)
    assert got.shape == (2, 384)
    np.testing.assert_allclose(got, vectors, atol=1e-6)
    decoded = np.array([np.frombuffer(base64.b64decode(e), "<f4") for e in encoded])
    np.testing.assert_array_equal(decoded, np.asarray(vectors, dtype=np.float32))
    # The client's own base64 path (its default) decodes to the same vectors.
    np.testing.assert_allclose(
        client.embeddings.create(model="minilm", input=texts).data[1].embedding,
        vectors[1],
        atol=1e-6,
    )


def test_wrong_requests_get_openai_shaped_errors(gateway):
    client = gateway.openai()
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="smollm2", messages=CHAT, max_tokens="many")
    assert bad.value.status_code == 400
    assert bad.value.body["type"] == "invalid_request_error"
    assert "max_tokens" in bad.value.body["message"]
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=CHAT)
    assert "installed" in missing.value.body["message"]  # says what is
    url = f"{gateway.url}/v1/chat/completions"
    for body in (b"{not json", {"model": 7, "messages": CHAT}, {"model": "smollm2"}):
        status, reply = post(url, body)
        assert status == 400, reply
        assert set(reply["error"]) >= {"message", "type", "code"}


class Colour(pydantic.BaseModel):
    name: str


def test_structured_output_follows_response_format(gateway):
    client = gateway.openai()
    ask = [{"role": "user", "content": "Name a colour, as JSON."}]
    # The client's own structured-output path: a strict json_schema from a pydantic model.
    parsed = client.chat.completions.parse(
        model="smollm2", messages=ask, response_format=Colour, temperature=0, max_tokens=40
    )
    assert isinstance(parsed.choices[0].message.parsed, Colour)
    as_object = client.chat.completions.create(
        model="smollm2",
        messages=ask,
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=6,
    )
    assert as_object.choices[0].message.content.lstrip().startswith("{")
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.chat.completions.create(
            model="smollm2", messages=ask, response_format={"type": "xml"}, max_tokens=6
        )


def test_a_model_is_retrieved_by_name(gateway):
    client = gateway.openai()
    assert client.models.retrieve("smollm2").id == "smollm2"
    assert client.models.retrieve("router").id == "router"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("no-such-model")
    assert "smollm2" in missing.value.body["message"]  # says what is


def test_embeddings_the_box_cannot_make_as_asked_are_refused(gateway):
    client = gateway.openai()
    with pytest.raises(openai.BadRequestError, match="empty"):
        client.embeddings.create(model="minilm", input=[])
    # MiniLM's vectors have 384 dimensions: 128 would be a silent mismatch in the app's store.
    with pytest.raises(openai.BadRequestError, match="384"):
        client.embeddings.create(model="minilm", input="a cat", dimensions=128)
    same = client.embeddings.create(model="minilm", input="a cat", dimensions=384)
    assert len(same.data[0].embedding) == 384


def raw_request(base_url: str, head: bytes, body: bytes) -> bytes:
    """Send a POST's head and as much of `body` as the box reads; the response's bytes."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: box\r\n" + head + b"\r\n")
        try:
            sock.sendall(body)
        except OSError:  # the box answered and stopped reading: what we came for
            pass
        return read_response(sock)


def read_response(sock: socket.socket) -> bytes:
    """One HTTP response whole: its head, then as many bytes as its Content-Length says."""
    data = b""
    while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0]
    length = re.search(rb"(?i)content-length: *(\d+)", head)
    wanted = len(head) + 4 + (int(length.group(1)) if length else 0)
    while len(data) < wanted and (chunk := sock.recv(65536)):
        data += chunk
    return data


def test_a_body_over_the_bus_limit_gets_413_before_it_is_read(gateway):
    limit = gateway.box.box.config.get(BusSettings).max_message_bytes
    # Declared too big: refused from the headers, the body never read (only 1 KiB sent).
    declared = raw_request(gateway.url, b"Content-Length: %d\r\n" % (limit + 1), b"x" * 1024)
    assert declared.startswith(b"HTTP/1.1 413"), declared[:200]
    assert b'"code":"too_large"' in declared and b"bus.max_message_mb" in declared
    # Undeclared (chunked): read up to the limit, then refused.
    mib = b"x" * 2**20
    chunks = (b"%x\r\n%s\r\n" % (len(mib), mib)) * (limit // len(mib) + 1) + b"0\r\n\r\n"
    chunked = raw_request(gateway.url, b"Transfer-Encoding: chunked\r\n", chunks)
    assert chunked.startswith(b"HTTP/1.1 413"), chunked[:200]


def test_the_router_and_a_box_session(gateway):
    client = gateway.openai()
    routed = client.chat.completions.create(model="router", messages=CHAT, **GREEDY)
    assert routed.model == "smollm2" and routed.route == "general"
    with gateway.client(timeout=60) as bus:
        session = bus.request("session", {"op": "create", "model": "smollm2"})["session"]
    for _ in range(2):
        client.chat.completions.create(
            model="smollm2", messages=CHAT, extra_body={"session": session}, **GREEDY
        )
    with gateway.client(timeout=60) as bus:
        history = bus.request("session", {"op": "history", "session": session})["messages"]
    assert [m["role"] for m in history] == ["user", "assistant"] * 2


def test_a_client_that_hangs_up_mid_stream_stops_the_generation(gateway):
    def llm() -> dict[str, Any]:
        return gateway.status()["services"]["llm"]

    cancelled_before = llm()["cancelled"]
    sock, _ = start_long_stream(gateway.url, events=4)  # the role chunk, then tokens
    sock.close()
    hung_up = time.monotonic()
    wait_for(lambda: llm()["in_flight"] == 0, 10, "the generation to stop")
    freed_s = time.monotonic() - hung_up
    assert llm()["cancelled"] == cancelled_before + 1
    print(f"model free {freed_s * 1000:.0f} ms after the client hung up")
    assert freed_s < 0.5  # about 30 ms measured on 2 loaded cores; slack for a busier CI
    # The model answers the next request at once.
    reply = gateway.openai().chat.completions.create(model="smollm2", messages=CHAT, **GREEDY)
    assert reply.choices[0].message.content


def readme_blocks(language: str) -> list[str]:
    """The README's ```language blocks in its "HTTP gateway" section."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## HTTP gateway", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def test_the_readmes_examples_work_as_written(gateway, capsys):
    (curl,) = readme_blocks("sh")
    (python,) = readme_blocks("python")
    documented = "http://127.0.0.1:7748"
    assert documented in curl and documented in python
    if shutil.which("curl"):
        done = subprocess.run(
            ["bash", "-c", curl.replace(documented, gateway.url)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["choices"][0]["message"]["content"]
    exec(compile(python.replace(documented, gateway.url), "README.md", "exec"), {})
    assert capsys.readouterr().out.strip()


TOOL_GREEDY = {"temperature": 0, "seed": 1, "max_tokens": 80}


def valid_call(call: Any) -> bool:
    """A tool call whose arguments are JSON fitting its function's schema (checked by hand)."""
    spec = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    schema = spec.get(call.function.name)
    if schema is None or call.type != "function" or not call.id.startswith("call_"):
        return False
    arguments = json.loads(call.function.arguments)
    kinds = {"string": str, "boolean": bool}
    return set(arguments) >= set(schema["required"]) and all(
        value in schema["properties"][key].get("enum", [value])
        and isinstance(value, kinds.get(schema["properties"][key].get("type"), object))
        for key, value in arguments.items()
    )


def answer_of(reply: Any) -> tuple[Any, ...]:
    """(finish_reason, content, (name, arguments) of each call) of a whole reply."""
    choice = reply.choices[0]
    calls = choice.message.tool_calls or []
    return (
        choice.finish_reason,
        choice.message.content,
        [(c.function.name, c.function.arguments) for c in calls],
    )


def streamed_answer_of(chunks: list[Any]) -> tuple[Any, ...]:
    """The same, put together from a stream's chunks as a client does."""
    content, calls, finish = None, {}, None
    for chunk in chunks:
        for choice in chunk.choices:
            delta = choice.delta
            if delta.content:
                content = (content or "") + delta.content
            for call in delta.tool_calls or []:
                name, arguments = calls.get(call.index, ("", ""))
                calls[call.index] = (
                    name + (call.function.name or ""),
                    arguments + (call.function.arguments or ""),
                )
            finish = choice.finish_reason or finish
    return finish, content, [calls[i] for i in sorted(calls)]


def test_a_named_function_is_called_with_arguments_that_fit_its_schema(gateway):
    reply = gateway.openai().chat.completions.create(
        model="smollm2",
        messages=ASK_WEATHER,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        **TOOL_GREEDY,
    )
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls" and message.content is None
    (call,) = message.tool_calls
    assert call.function.name == "get_weather" and valid_call(call), call


def test_required_calls_one_of_the_tools(gateway):
    reply = gateway.openai().chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What time is it in Tokyo?"}],
        tools=TOOLS,
        tool_choice="required",
        **TOOL_GREEDY,
    )
    (call,) = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls"
    assert call.function.name in ("get_weather", "get_time") and valid_call(call), call


@pytest.mark.parametrize(
    "choice, sampling",
    [
        ("auto", TOOL_GREEDY),
        ({"type": "function", "function": {"name": "get_time"}}, TOOL_GREEDY),
        ("auto", {**TOOL_GREEDY, "temperature": 1.0, "seed": 2}),  # answered in text here
    ],
)
def test_a_tool_reply_is_a_call_or_text_and_the_stream_says_the_same(gateway, choice, sampling):
    client = gateway.openai()
    ask = {"model": "smollm2", "messages": ASK_WEATHER, "tools": TOOLS, "tool_choice": choice}
    whole = client.chat.completions.create(**ask, **sampling)
    finish, content, calls = answer_of(whole)
    if calls:  # a call: its arguments fit, and there is no text
        assert finish == "tool_calls" and content is None
        assert valid_call(whole.choices[0].message.tool_calls[0])
    else:  # an answer: plain text, not the JSON the model was held to
        assert finish == "stop" and isinstance(content, str) and not content.startswith("{")
    chunks = list(client.chat.completions.create(**ask, stream=True, **sampling))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = streamed_answer_of(chunks)
    if sampling["temperature"] == 0:  # greedy: the streamed reply is the same call (or text)
        assert streamed == (finish, content, calls)
    else:  # sampled: the prompt cache's state may tip a token, so each must only be whole
        assert streamed[0] in ("tool_calls", "stop") and (streamed[1] is None) == bool(streamed[2])


def test_a_plain_answer_with_tools_streams_token_by_token(gateway):
    client = gateway.openai()
    for stream in answers_with_tools(client.chat.completions.create, stream=True, **TOOL_GREEDY):
        chunks = list(stream)
        finish, content, calls = streamed_answer_of(chunks)
        if not calls:
            break
    else:
        pytest.fail("smollm2 called a tool for every prompt that has no use for one")
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert finish == "stop" and content == "".join(pieces)
    assert len(pieces) >= 2 and not content.startswith("{"), pieces  # as written, not the JSON


def test_a_call_and_its_result_reach_the_model_in_the_next_turn(gateway):
    client = gateway.openai()
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
    }
    result = {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 21}'}
    turns = [*ASK_WEATHER, {"role": "assistant", "content": None, "tool_calls": [call]}, result]
    reply = client.chat.completions.create(model="smollm2", messages=turns, tools=TOOLS, **GREEDY)
    assert reply.choices[0].message.content or reply.choices[0].message.tool_calls
    # The call is written into the prompt: the same turns without it are shorter.
    bare = [*ASK_WEATHER, {"role": "assistant", "content": ""}, result]
    without = client.chat.completions.create(model="smollm2", messages=bare, **GREEDY)
    with_call = client.chat.completions.create(model="smollm2", messages=turns, **GREEDY)
    assert with_call.usage.prompt_tokens > without.usage.prompt_tokens


def test_bad_tool_requests_get_400s_that_say_what_to_do(gateway):
    client = gateway.openai()
    nameless = {"type": "function", "function": {"parameters": {"type": "object"}}}
    not_object = {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}
    unknown = {"type": "function", "function": {"name": "get_stock"}}
    cases = [
        ({"tools": [nameless]}, "name"),
        ({"tools": [not_object]}, "parameters"),
        ({"tools": TOOLS, "tool_choice": unknown}, "get_weather"),
        ({"tools": TOOLS, "model": "router"}, "name a model"),
        ({"tools": TOOLS, "extra_body": {"session": "abc"}}, "session"),
        ({"tool_choice": "required"}, "tools"),
    ]
    for fields, says in cases:
        ask = {"model": "smollm2", "messages": ASK_WEATHER, "max_tokens": 4, **fields}
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(**ask)
        assert bad.value.status_code == 400 and says in bad.value.body["message"], fields


def test_a_call_cut_short_by_max_tokens_comes_back_as_text_with_length(gateway):
    client = gateway.openai()
    ask = {
        "model": "smollm2",
        "messages": ASK_WEATHER,
        "tools": TOOLS,
        "tool_choice": "required",
        "temperature": 0,
        "max_tokens": 3,
    }
    whole = client.chat.completions.create(**ask)
    finish, content, calls = answer_of(whole)
    assert (finish, calls) == ("length", []) and content.startswith("{")
    assert streamed_answer_of(list(client.chat.completions.create(**ask, stream=True))) == (
        finish,
        content,
        calls,
    )


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_an_answers_text_is_read_from_its_json_in_any_token_sizes(size):
    """AnswerStream gives out a plain answer's text as its JSON comes, whatever the cuts:
    escapes split across tokens, a surrogate pair, quotes; a call gives nothing out."""
    from aether_box.gateway.tools import AnswerStream

    said = 'He said "hi" \\ ok\nnext \U0001f600 é'
    written = ' {"content": ' + json.dumps(said) + "} "
    stream = AnswerStream()
    out = [stream.feed(written[i : i + size]) for i in range(0, len(written), size)]
    assert stream.answering and "".join(out) == said
    assert sum(1 for piece in out if piece) > 1  # as it comes, not at the end
    call = AnswerStream()
    text = '{"name": "get_weather", "arguments": {"content": "x"}}'
    assert [call.feed(text[i : i + size]) for i in range(0, len(text), size)] == [""] * len(
        range(0, len(text), size)
    )
    assert not call.answering
