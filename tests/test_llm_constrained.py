"""Constrained output: a GBNF `grammar` or a `json_schema` bounds what the model may say."""

from __future__ import annotations

import ctypes
import json
from typing import Any

import pytest

from aether_box.errors import BadRequest

MODEL = "smollm2"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "colour": {"enum": ["red", "green", "blue"]},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3},
    },
    "required": ["name", "age", "colour", "hobbies"],
    "additionalProperties": False,
}


def ask(client: Any, **fields: Any) -> dict[str, Any]:
    body = {
        "op": "chat",
        "model": MODEL,
        "messages": [{"role": "user", "content": "Describe a person as JSON."}],
        "max_tokens": 200,
        **fields,
    }
    return client.request("llm", body, timeout=300)


def valid_person(value: Any) -> bool:
    """PERSON's constraints, checked by hand (the box has no JSON-schema validator)."""
    return (
        isinstance(value, dict)
        and set(value) == set(PERSON["required"])
        and isinstance(value["name"], str)
        and len(value["name"]) <= 24
        and isinstance(value["age"], int)
        and not isinstance(value["age"], bool)
        and 0 <= value["age"] <= 150
        and value["colour"] in ("red", "green", "blue")
        and isinstance(value["hobbies"], list)
        and len(value["hobbies"]) <= 3
        and all(isinstance(h, str) and len(h) <= 16 for h in value["hobbies"])
    )


@pytest.mark.parametrize("temperature, seed", [(0.0, None), (1.0, 1), (1.0, 2), (1.5, 3)])
def test_a_schema_constrained_reply_parses_and_validates(llm_box, temperature, seed):
    with llm_box.client() as client:
        reply = ask(client, json_schema=PERSON, temperature=temperature, seed=seed)
    assert reply["finish_reason"] == "stop", reply
    assert valid_person(json.loads(reply["text"])), reply["text"]


def test_a_grammar_limits_the_reply_to_its_language(llm_box):
    grammar = 'root ::= ("yes" | "no") "."'
    with llm_box.client() as client:
        for seed in (1, 2, 3):
            reply = ask(client, grammar=grammar, temperature=1.2, seed=seed)
            assert reply["text"] in ("yes.", "no."), reply


def test_constrained_and_free_requests_share_a_batch(llm_box):
    import threading

    results: dict[str, Any] = {}

    def run(key: str, **fields: Any) -> None:
        with llm_box.client() as own:
            results[key] = ask(own, **fields)

    threads = [
        threading.Thread(target=run, args=("schema",), kwargs={"json_schema": PERSON}),
        threading.Thread(target=run, args=("free",), kwargs={"temperature": 0.0}),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert valid_person(json.loads(results["schema"]["text"]))
    with pytest.raises(json.JSONDecodeError):  # the free one is not held to the schema
        json.loads(results["free"]["text"])


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"grammar": "root ::= (("}, "grammar"),
        ({"grammar": ""}, "grammar"),
        ({"grammar": 5}, "grammar"),
        ({"json_schema": "not a map"}, "json_schema"),
        ({"json_schema": {"type": "object"}, "grammar": 'root ::= "x"'}, "not both"),
        ({"repeat_penalty": 0}, "repeat_penalty"),
    ],
)
def test_bad_constraints_are_refused_naming_the_field(llm_box, fields, words):
    with llm_box.client() as client:
        with pytest.raises(BadRequest, match=words):
            ask(client, **fields)


def allowed_after(models_dir: Any, schema: dict[str, Any], prefix: str, nexts: list[str]) -> dict:
    """Which of `nexts` llama.cpp's grammar sampler (for `schema`) lets follow `prefix`."""
    import llama_cpp

    from aether_box.engines.constraints import gbnf_for
    from aether_box.engines.generation import GenerationParams

    path = next((models_dir / MODEL).glob("*.gguf"))
    model = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)

    def token(text: str) -> list[int]:
        return model.tokenize(text.encode(), add_bos=False, special=False)

    gbnf = gbnf_for(GenerationParams(json_schema=json.dumps(schema)))
    assert gbnf is not None
    grammar = llama_cpp.llama_sampler_init_grammar(model._model.vocab, gbnf.encode(), b"root")
    try:
        for t in token(prefix):
            llama_cpp.llama_sampler_accept(grammar, t)
        ids = [token(text) for text in nexts]
        assert all(len(i) == 1 for i in ids), ids  # each candidate is one token
        data = (llama_cpp.llama_token_data * len(ids))(
            *(llama_cpp.llama_token_data(i[0], 1.0, 0.0) for i in ids)
        )
        array = llama_cpp.llama_token_data_array(data, len(ids), -1, False)
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(array))
        return {text: data[k].logit != float("-inf") for k, text in enumerate(nexts)}
    finally:
        llama_cpp.llama_sampler_free(grammar)
        model.close()


def test_a_schema_string_cannot_hold_a_raw_control_character(models_dir):
    # llama-cpp-python's converter let a string hold a raw newline, so a reply could be
    # `{"name": ");\n\nThis...` (seen in CI): not JSON. Escaped ones stay allowed.
    for schema in (PERSON, {"type": "object"}, {"type": "string"}):
        prefix = '"a' if schema.get("type") == "string" else '{"name": "a'
        allowed = allowed_after(models_dir, schema, prefix, ["\n", "\t", "b", "\\"])
        assert allowed == {"\n": False, "\t": False, "b": True, "\\": True}, (schema, allowed)
