"""The Ollama API of the HTTP gateway, driven by the official `ollama` client against a real
box (SmolLM2 and MiniLM)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import ollama
import pytest
from fixtures_gateway import ASK_WEATHER, TOOLS, WEATHER, answers_with_tools

MESSAGES = [{"role": "user", "content": "Name a colour."}]
OPTIONS = {"temperature": 0, "num_predict": 6, "seed": 1}


@pytest.fixture(scope="module")
def client(gateway):
    client = ollama.Client(host=gateway.url, timeout=60)
    yield client
    client.close()


def test_tags_and_version(gateway, client):
    names = {m.model for m in client.list().models}
    assert {"smollm2", "minilm"} <= names
    with urllib.request.urlopen(f"{gateway.url}/api/version", timeout=10) as response:
        assert json.loads(response.read())["version"]


def test_chat_whole_and_streamed_as_ndjson(client):
    whole = client.chat(model="smollm2", messages=MESSAGES, options=OPTIONS, stream=False)
    assert whole.done and whole.message.role == "assistant" and whole.message.content
    assert whole.eval_count == 6 and whole.done_reason == "length"
    parts = list(
        client.chat(model="smollm2:latest", messages=MESSAGES, options=OPTIONS, stream=True)
    )
    *pieces, last = parts
    assert pieces and not any(p.done for p in pieces) and last.done
    assert "".join(p.message.content for p in pieces)
    assert last.eval_count == 6 and last.prompt_eval_count > 0


def test_generate_raw_and_templated(client):
    templated = client.generate(model="smollm2", prompt="Name a colour.", options=OPTIONS)
    assert templated.done and templated.response
    streamed = list(
        client.generate(
            model="smollm2", prompt="The sky is", raw=True, options=OPTIONS, stream=True
        )
    )
    assert streamed[-1].done and "".join(p.response for p in streamed[:-1])


def test_embed_and_errors(gateway, client):
    reply = client.embed(model="minilm", input=["a cat", "a dog"])
    vectors = np.array(reply.embeddings)
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="no-such-model", messages=MESSAGES, stream=False)
    assert missing.value.status_code == 404 and "installed" in missing.value.error


def test_format_holds_the_answer_to_json(gateway, client):
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string"}},
        "required": ["colour"],
    }
    ask = [{"role": "user", "content": "Name a colour, as JSON."}]
    options = {"temperature": 0, "num_predict": 40}
    reply = client.chat(model="smollm2", messages=ask, format=schema, options=options, stream=False)
    assert isinstance(json.loads(reply.message.content)["colour"], str)
    options["num_predict"] = 6
    as_json = client.generate(
        model="smollm2", prompt=ask[0]["content"], format="json", options=options
    )
    assert as_json.response.lstrip().startswith("{")
    # What the typed client will not send: a format Ollama does not have.
    bad = {"model": "smollm2", "messages": ask, "format": "yaml", "stream": False}
    request = urllib.request.Request(f"{gateway.url}/api/chat", json.dumps(bad).encode())
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 400 and "format" in json.loads(refused.value.read())["error"]


def test_repeat_penalty_reaches_the_model(client):
    # A value the llm service refuses proves the option is passed on, not dropped.
    with pytest.raises(ollama.ResponseError) as bad:
        client.chat(model="smollm2", messages=MESSAGES, options={"repeat_penalty": 0}, stream=False)
    assert bad.value.status_code == 400 and "repeat_penalty" in bad.value.error


def test_show_tells_what_the_box_knows_of_a_model(gateway, client):
    n_ctx = gateway.status()["models"]["n_ctx"]
    chat = client.show("smollm2")
    # Any generating model calls tools here (the gateway holds its reply to them).
    assert chat.capabilities == ["completion", "tools"]
    # What the GGUF's header says: SmolLM2-135M-Instruct.Q4_1.gguf.
    assert chat.details.model_dump() == {
        "parent_model": None,
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "135M",
        "quantization_level": "Q4_1",
    }
    assert chat.modelinfo["general.architecture"] == "llama"
    assert chat.modelinfo["llama.context_length"] == n_ctx  # what a request gets here
    assert chat.template.startswith("{%") and "messages" in chat.template
    encoder = client.show("minilm:latest")
    assert encoder.capabilities == ["embedding"] and encoder.details.format != "gguf"
    arch = encoder.modelinfo["general.architecture"]
    assert encoder.modelinfo[f"{arch}.embedding_length"] == 384
    # Older clients send "name".
    request = urllib.request.Request(
        f"{gateway.url}/api/show", json.dumps({"name": "smollm2"}).encode()
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["capabilities"] == ["completion", "tools"]
    with pytest.raises(ollama.ResponseError) as missing:
        client.show("no-such-model")
    assert missing.value.status_code == 404 and "smollm2" in missing.value.error


def test_ps_lists_the_models_loaded_now(gateway, client):
    client.chat(model="smollm2", messages=MESSAGES, options=OPTIONS, stream=False)
    loaded = {m["name"]: m for m in gateway.status()["models"]["loaded"]}
    running = {m.model: m for m in client.ps().models}
    assert set(running) == set(loaded) and "smollm2" in running
    assert running["smollm2"].size == int(loaded["smollm2"]["memory_mb"] * 2**20) > 0
    assert running["smollm2"].size_vram == 0  # the test box runs on the CPU
    assert running["smollm2"].details.format == "gguf"


def test_legacy_embeddings_and_an_empty_input(client):
    legacy = client.embeddings(model="minilm", prompt="a cat")
    current = client.embed(model="minilm", input="a cat")
    np.testing.assert_allclose(legacy.embedding, current.embeddings[0], atol=1e-6)
    with pytest.raises(ollama.ResponseError) as empty:
        client.embed(model="minilm", input=[])
    assert empty.value.status_code == 400 and "empty" in empty.value.error
    with pytest.raises(ollama.ResponseError) as no_prompt:
        client.embeddings(model="minilm", prompt="")
    assert no_prompt.value.status_code == 400 and "prompt" in no_prompt.value.error


TOOL_GREEDY = {"temperature": 0, "seed": 1, "num_predict": 80}


def valid_call(call) -> bool:
    """An Ollama tool call: a tool's name, and arguments (an object) that fit its schema."""
    spec = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    schema = spec.get(call.function.name)
    arguments = call.function.arguments
    if schema is None or not isinstance(arguments, dict):
        return False
    kinds = {"string": str, "boolean": bool}
    return set(arguments) >= set(schema["required"]) and all(
        value in schema["properties"][key].get("enum", [value])
        and isinstance(value, kinds.get(schema["properties"][key].get("type"), object))
        for key, value in arguments.items()
    )


def answer_of(message) -> tuple:
    """(content, (name, arguments) of each call) of a reply's message, checked: a call has
    arguments (an object) that fit its schema and no text; an answer is plain text, not the
    JSON the model was held to."""
    calls = [(c.function.name, dict(c.function.arguments)) for c in message.tool_calls or []]
    if calls:
        (call,) = message.tool_calls
        assert not message.content and valid_call(call), call
    else:
        assert message.content and not message.content.lstrip().startswith("{"), message
    return message.content, calls


@pytest.mark.parametrize(
    "options",
    [
        TOOL_GREEDY,  # a call here
        {**TOOL_GREEDY, "temperature": 1.0, "seed": 2},  # mostly answered in text
    ],
)
def test_a_tools_reply_is_a_call_or_content_and_the_stream_says_the_same(client, options):
    ask = {"model": "smollm2", "messages": ASK_WEATHER, "options": options}
    whole = client.chat(**ask, tools=TOOLS, stream=False)
    answer = answer_of(whole.message)
    assert whole.done and whole.done_reason == "stop"
    # Streamed: the call in one line (the answer as it comes), then the final done line.
    *pieces, last = client.chat(**ask, tools=TOOLS, stream=True)
    assert last.done and not last.message.content and not last.message.tool_calls
    assert pieces and not any(p.done for p in pieces)
    calls = [c for p in pieces for c in p.message.tool_calls or []]
    content = "".join(p.message.content or "" for p in pieces)
    assert len(pieces) == 1 or not calls  # a call comes whole, in one line
    streamed = answer_of(
        ollama.Message(role="assistant", content=content, tool_calls=calls or None)
    )
    if options["temperature"] == 0:  # greedy, a fixed seed: the same reply
        assert streamed == answer
    # (Sampled, the prompt cache's state can tip a token: each reply is checked alone.)
    # The tools are in the prompt: the model knows what it may call.
    bare = client.chat(**ask, stream=False)
    assert whole.prompt_eval_count > bare.prompt_eval_count


def test_a_plain_answer_with_tools_streams_token_by_token(client):
    for reply in answers_with_tools(client.chat, stream=True, options=TOOL_GREEDY):
        *pieces, last = reply
        if not any(p.message.tool_calls for p in pieces):
            break
    else:
        pytest.fail("smollm2 called a tool for every prompt that has no use for one")
    texts = [p.message.content for p in pieces]
    assert last.done and len(texts) >= 2 and all(texts), texts
    assert not texts[0].lstrip().startswith("{"), texts  # as written, not the JSON


def test_a_call_and_its_result_reach_the_model_in_the_next_turn(client):
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}
    result = {"role": "tool", "content": '{"celsius": 21}', "tool_name": "get_weather"}
    turns = [*ASK_WEATHER, {"role": "assistant", "content": "", "tool_calls": [call]}, result]
    options = {"temperature": 0, "seed": 1, "num_predict": 6}
    reply = client.chat(model="smollm2", messages=turns, tools=TOOLS, options=options)
    assert reply.done and (reply.message.content or reply.message.tool_calls)
    # The call is written into the prompt: the same turns without it are shorter.
    bare = [*ASK_WEATHER, {"role": "assistant", "content": ""}, result]
    without = client.chat(model="smollm2", messages=bare, options=options)
    with_call = client.chat(model="smollm2", messages=turns, options=options)
    assert with_call.prompt_eval_count > without.prompt_eval_count


def test_bad_tools_get_400s_that_say_what_to_do(gateway):
    nameless = {"type": "function", "function": {"parameters": {"type": "object"}}}
    not_object = {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}
    cases = [
        ({"tools": [nameless]}, "name"),
        ({"tools": [not_object]}, "parameters"),
        ({"tools": WEATHER}, "list"),
        ({"tools": [WEATHER, WEATHER]}, "own name"),
        ({"tools": TOOLS, "format": "json"}, "format"),
    ]
    for fields, says in cases:
        body = {"model": "smollm2", "messages": ASK_WEATHER, "stream": False, **fields}
        request = urllib.request.Request(f"{gateway.url}/api/chat", json.dumps(body).encode())
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        error = json.loads(refused.value.read())
        assert refused.value.code == 400 and says in error["error"], (fields, error)
