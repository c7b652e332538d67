"""What apps built on llama-server need, with real clients on loopback (SmolLM2-135M): the openai client with
response_format and tools, LangChain's ChatOpenAI (structured output, a tool-call round trip) and
OpenAIEmbeddings, grammars and schemas that fail with their position, and constrained load.
The tool-call formats of other templates (Hermes, Llama 3.1, Mistral Nemo) are checked offline: their
grammars accept the answers their parsers read, and streamed deltas add up to the whole answer."""
from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

import workbench
from workbench.llama.embed import embed
from workbench.server import Engine, build_app
from workbench.server.partial_json import PartialJSONError, parse_partial
from workbench.server.tools import (ToolCallParser, ToolRequest, detect_format, parse_tool_request,
                                    prepare_messages, tool_grammar)
from workbench.text.chat import TemplateCaps

from test_server import ServerThread

pytest.importorskip("uvicorn")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a timezone",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string"}, "h24": {"type": "boolean"}},
                   "required": ["tz"]}}}
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def smol(smollm2_path):
    return workbench.load(smollm2_path, n_ctx=1024)


@pytest.fixture(scope="module")
def server(smol):
    engine = Engine(smol, n_parallel=2, alias="smollm2", pooling="mean")
    with ServerThread(build_app(engine)) as url:
        yield url, engine


def test_openai_client_response_format(server):
    openai = pytest.importorskip("openai")
    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x")
    msgs = [{"role": "user", "content": "Describe a person called Ada who is 36."}]
    r = client.chat.completions.create(model="gpt-4o", messages=msgs, temperature=0, max_tokens=60,
                                       response_format={"type": "json_schema",
                                                        "json_schema": {"name": "person", "schema": PERSON}})
    person = json.loads(r.choices[0].message.content)
    assert set(person) == {"name", "age"} and isinstance(person["name"], str) and isinstance(person["age"], int)
    assert r.choices[0].finish_reason == "stop"
    # json_object: any object; llama-server's shorthand {"type": "json_object", "schema": ...} constrains it
    ask = [{"role": "user", "content": 'Reply with a JSON object {"answer": ...}: what is the capital of France?'}]
    r = client.chat.completions.create(model="x", messages=ask, temperature=0, max_tokens=60,
                                       response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    d = httpx.post(f"{url}/v1/chat/completions", json={"messages": msgs, "temperature": 0, "max_tokens": 60,
                   "response_format": {"type": "json_object", "schema": PERSON}}, timeout=120).json()
    assert set(json.loads(d["choices"][0]["message"]["content"])) == {"name", "age"}


def test_openai_client_tools_and_streamed_deltas(server):
    openai = pytest.importorskip("openai")
    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x")
    kw = dict(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "What is the weather in Paris?"}],
              tools=[WEATHER, TIME], temperature=0, max_tokens=80)
    r = client.chat.completions.create(tool_choice="required", **kw)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id and call.function.name in ("get_weather", "get_time")
    args = json.loads(call.function.arguments)
    assert isinstance(args, dict) and set(args) >= ({"city"} if call.function.name == "get_weather" else {"tz"})
    # streamed: the deltas add up to the same call
    name, pieces, ids, finish = "", [], set(), None
    for c in client.chat.completions.create(tool_choice="required", stream=True, **kw):
        ch = c.choices[0]
        finish = ch.finish_reason or finish
        for tc in ch.delta.tool_calls or []:
            assert tc.index == 0
            ids.add(tc.id) if tc.id else None
            name += tc.function.name or "" if tc.function else ""
            pieces.append(tc.function.arguments or "" if tc.function else "")
    assert finish == "tool_calls" and len(ids) == 1 and name == call.function.name
    assert json.loads("".join(pieces)) == args and len([p for p in pieces if p]) > 1
    # a named function is forced; "none" gives plain content
    r = client.chat.completions.create(tool_choice={"type": "function", "function": {"name": "get_time"}}, **kw)
    assert r.choices[0].message.tool_calls[0].function.name == "get_time"
    r = client.chat.completions.create(tool_choice="none", **{**kw, "max_tokens": 8})
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason in ("stop", "length")


def test_langchain_structured_output_and_tool_round_trip(server):
    lc = pytest.importorskip("langchain_openai")
    messages_mod = pytest.importorskip("langchain_core.messages")
    pydantic = pytest.importorskip("pydantic")
    url, _ = server

    class Person(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=20)   # bounded: a 135M model may repeat itself otherwise
        age: int

    llm = lc.ChatOpenAI(base_url=f"{url}/v1", api_key="x", model="gpt-3.5-turbo", temperature=0, max_tokens=120)
    for method in ("json_schema", "function_calling"):   # response_format, then a forced tool call
        named = llm if method == "function_calling" else lc.ChatOpenAI(
            base_url=f"{url}/v1", api_key="x", model="gpt-4o", temperature=0, max_tokens=60)
        p = named.with_structured_output(Person, method=method).invoke("Ada is 36 years old. Who is she?")
        assert isinstance(p, Person) and isinstance(p.age, int)

    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return f"It is sunny in {city}."

    ask = messages_mod.HumanMessage("What is the weather in Paris?")
    ai = llm.bind_tools([get_weather], tool_choice="get_weather").invoke([ask])
    assert len(ai.tool_calls) == 1 and ai.tool_calls[0]["name"] == "get_weather"
    call = ai.tool_calls[0]
    assert isinstance(call["args"].get("city"), str) and call["id"]
    result = messages_mod.ToolMessage(get_weather(**call["args"]), tool_call_id=call["id"])
    answer = llm.invoke([ask, ai, result])
    assert isinstance(answer.content, str) and answer.content and not answer.tool_calls


def test_tool_results_reach_the_prompt(smol):
    """A template without tools gets the earlier call and its result written in (minja's polyfills)."""
    caps = TemplateCaps(supports_tools=False, supports_tool_calls=False, supports_parallel_tool_calls=False)
    req = parse_tool_request({"tools": [WEATHER]}, "generic", False)
    msgs = prepare_messages([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call9", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call9", "content": "sunny, 21C"}], req, caps)
    assert msgs[0]["role"] == "system" and "get_weather" in msgs[0]["content"] and "`tool_call`" in msgs[0]["content"]
    assert json.loads(msgs[2]["content"])["tool_calls"][0]["arguments"] == {"city": "Paris"}
    assert msgs[3]["role"] == "user" and json.loads(msgs[3]["content"])["tool_response"]["content"] == "sunny, 21C"


def test_embeddings(server, smol):
    lc = pytest.importorskip("langchain_openai")
    url, engine = server
    emb = lc.OpenAIEmbeddings(base_url=f"{url}/v1", api_key="x", model="anything", check_embedding_ctx_length=False)
    vecs = emb.embed_documents(["The cat sat.", "A dog ran."])
    assert len(vecs) == 2 and all(len(v) == smol.config.n_embd for v in vecs)
    want = embed(smol.fork(), smol.tokenize("The cat sat.", add_special=True, parse_special=True), "mean")
    np.testing.assert_allclose(vecs[0], want, rtol=0, atol=1e-6)
    assert abs(np.linalg.norm(vecs[1]) - 1) < 1e-5 and not np.allclose(vecs[0], vecs[1])
    # OpenAI shape with token ids and base64; llama-server's own shape
    ids = smol.tokenize("The cat sat.", add_special=True, parse_special=True)
    d = httpx.post(f"{url}/v1/embeddings", json={"input": ids, "encoding_format": "base64"}, timeout=60).json()
    got = np.frombuffer(base64.b64decode(d["data"][0]["embedding"]), "<f4")
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert d["usage"]["prompt_tokens"] == len(ids) and d["data"][0]["index"] == 0
    native = httpx.post(f"{url}/embedding", json={"content": ["The cat sat.", "x"]}, timeout=60).json()
    assert [e["index"] for e in native] == [0, 1] and np.allclose(native[0]["embedding"][0], want, atol=1e-6)
    # pooling "none": per-token rows natively, refused by the OpenAI endpoint (as llama-server)
    with ServerThread(build_app(Engine(smol.fork(), alias="s", pooling="none"))) as url2:
        rows = httpx.post(f"{url2}/embedding", json={"content": "The cat sat."}, timeout=60).json()[0]["embedding"]
        assert len(rows) == len(ids)
        r = httpx.post(f"{url2}/v1/embeddings", json={"input": "x"}, timeout=60)
        assert r.status_code == 400 and "Pooling type 'none'" in r.json()["error"]["message"]


@pytest.mark.parametrize("path, body, where", [
    ("/completion", {"prompt": "x", "grammar": 'root ::= "a" foo'}, "line 1, column"),
    ("/completion", {"prompt": "x", "grammar": 'root ::= ("a" | "b"'}, "line 1"),
    ("/completion", {"prompt": "x", "json_schema": {"type": "object", "properties": {"a": {"$ref": "#/nope"}}}},
     "#/properties/a"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "response_format": {
        "type": "json_schema", "json_schema": {"schema": {"type": "object", "properties": {"a": {"type": 7}}}}}},
     "#/properties/a"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "grammar": "root ::= [a-",
                              "max_tokens": 2}, "line 1"),
])
def test_invalid_grammar_or_schema_is_a_400_with_its_position(server, path, body, where):
    url, _ = server
    r = httpx.post(f"{url}{path}", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert where in r.json()["error"]["message"], r.json()
    ok = httpx.post(f"{url}/completion", json={"prompt": "Hi", "n_predict": 2, "grammar": 'root ::= [a-z]+'},
                    timeout=60)
    assert ok.status_code == 200 and ok.json()["content"].isalpha()


def test_completion_grammar_and_schema(server):
    url, _ = server
    d = httpx.post(f"{url}/completion", json={"prompt": "Yes or no?", "grammar": 'root ::= "yes" | "no"',
                                              "temperature": 0}, timeout=60).json()
    assert d["content"] in ("yes", "no") and d["stop_type"] == "eos"
    d = httpx.post(f"{url}/v1/completions", json={"prompt": "A person:", "json_schema": PERSON, "max_tokens": 60,
                                                  "temperature": 0}, timeout=60).json()
    assert set(json.loads(d["choices"][0]["text"])) == {"name", "age"}


@pytest.mark.slow
def test_constrained_load_8_clients(server):
    """200 constrained requests from 8 concurrent clients: none lost, no 5xx, every answer valid."""
    url, engine = server
    short = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                              "age": {"type": "integer", "minimum": 0, "maximum": 120}},
             "required": ["name", "age"], "additionalProperties": False}

    def one(i):
        body = {"prompt": f"Person number {i}:", "json_schema": short, "n_predict": 64, "seed": i}
        try:
            r = httpx.post(f"{url}/completion", json=body, timeout=600)
        except httpx.HTTPError:
            return None, False   # lost
        if r.status_code != 200:
            return r.status_code, False
        person = json.loads(r.json()["content"])
        return 200, set(person) == {"name", "age"} and len(person["name"]) <= 12 and 0 <= person["age"] <= 120

    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(one, range(200)))
    assert [c for c, _ in results] == [200] * 200 and all(ok for _, ok in results)
    assert engine.free_slots().qsize() == len(engine.slots)


# ---------------------------------------------------------------------------------------------- offline

NATIVE = [
    ("hermes", "{% for m in messages %}<tool_call>{% endfor %}",
     'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
     "Let me check."),
    ("llama3", "<|start_header_id|>ipython<|end_header_id|>",
     '{"name": "get_weather", "parameters": {"city": "Paris"}}', ""),
    ("nemo", "[TOOL_CALLS]", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abcDEF123"}]',
     ""),
]


@pytest.mark.parametrize("fmt, source, answer, content", NATIVE)
def test_native_formats_grammar_and_parser(fmt, source, answer, content, smol):
    assert detect_format(source) == fmt
    req = parse_tool_request({"tools": [WEATHER, TIME], "tool_choice": "required"}, fmt, False)
    grammar = tool_grammar(req)
    if not content:   # the grammar of a required call allows no text before it
        m = grammar.matcher(smol.tokenizer)
        for t in smol.tokenizer.tokenize(answer, add_special=False, parse_special=True):
            assert m.is_allowed(t), (fmt, smol.tokenizer.detokenize([t]))
            m.accept(t)
        assert m.is_accepting()
    parser = ToolCallParser(req)
    parser.text = answer
    whole, _ = parser.finish()
    assert whole.content == content and len(whole.tool_calls) == 1
    assert whole.tool_calls[0].name == "get_weather" and json.loads(whole.tool_calls[0].arguments) == {"city": "Paris"}
    # streamed one character at a time: the deltas rebuild the same message
    stream, text, args = ToolCallParser(req), "", ""
    for ch in answer:
        for d in stream.feed(ch):
            text += d.get("content", "")
            args += "".join(tc["function"].get("arguments", "") for tc in d.get("tool_calls", []))
    for d in stream.finish()[1]:
        text += d.get("content", "")
        args += "".join(tc["function"].get("arguments", "") for tc in d.get("tool_calls", []))
    assert text == content and args == whole.tool_calls[0].arguments


def test_hermes_grammar_accepts_a_wrapped_call(smol):
    req = ToolRequest([WEATHER], "required", True, "hermes")
    m = tool_grammar(req).matcher(smol.tokenizer)
    answer = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>' * 2
    for t in smol.tokenizer.tokenize(answer, add_special=False, parse_special=False):
        assert m.is_allowed(t), smol.tokenizer.detokenize([t])
        m.accept(t)
    assert m.is_accepting()
    assert tool_grammar(ToolRequest([WEATHER], "auto", False, "hermes")) is None   # "auto" stays free


def test_tool_request_errors():
    with pytest.raises(ValueError, match="not in 'tools'"):
        parse_tool_request({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
                           "generic", False)
    with pytest.raises(ValueError, match="invalid tool_choice"):
        parse_tool_request({"tools": [WEATHER], "tool_choice": "sometimes"}, "generic", False)
    with pytest.raises(ValueError, match="function.name"):
        parse_tool_request({"tools": [{"type": "function", "function": {}}]}, "generic", False)


def test_partial_json_prefixes_only_grow():
    doc = {"name": "f", "arguments": {"s": "a\"b\n\u00e9\U0001F600", "n": [1, -2.5e3, True, None, {}], "o": {}}}
    final = json.dumps(doc, ensure_ascii=False)
    for src in (json.dumps(doc), json.dumps(doc, indent=2), json.dumps(doc, separators=(",", ":"))):
        prev = ""
        for k in range(1, len(src) + 1):
            node = parse_partial(src[:k])
            text = node.text if node else ""
            assert text.startswith(prev) and final.startswith(text), (src[:k], text)
            prev = text
        assert node.complete and node.value == doc and node.text == final
    for bad in ('{"a" 1}', "{a}", "[1 2]", "nul!"):
        with pytest.raises(PartialJSONError, match="offset"):
            parse_partial(bad)
