"""The HTTP server on loopback: llama-server fields, the official openai client, concurrency, disconnects,
auth and bad input. Uses the toy Mixtral (fast) and, for the seed's curl example, SmolLM2."""
from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

import workbench
from workbench.server import Engine, build_app

uvicorn = pytest.importorskip("uvicorn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    def __init__(self, app):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def toy(toy_dir):
    return workbench.load(toy_dir / "tiny-mixtral-f16.gguf", n_ctx=256)


@pytest.fixture(scope="module")
def toy_server(toy):
    engine = Engine(toy, n_parallel=2, alias="tiny-mixtral")
    with ServerThread(build_app(engine)) as url:
        yield url, engine


def test_health_props_models(toy_server):
    url, _ = toy_server
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    props = httpx.get(f"{url}/props").json()
    assert props["total_slots"] == 2 and props["default_generation_settings"]["n_ctx"] == 256
    models = httpx.get(f"{url}/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny-mixtral"


def test_completion_fields_and_greedy_determinism(toy_server, toy):
    url, _ = toy_server
    body = {"prompt": "Hello world", "n_predict": 6, "temperature": 0, "cache_prompt": False}
    r = httpx.post(f"{url}/completion", json=body, timeout=60)
    assert r.status_code == 200
    d = r.json()
    for k in ("content", "tokens", "stop", "stop_type", "stopping_word", "tokens_evaluated", "tokens_predicted",
              "truncated", "generation_settings", "timings"):
        assert k in d, k
    assert d["tokens_predicted"] == 6 and d["stop_type"] == "limit" and d["stop"] is True
    assert d["tokens_evaluated"] == len(toy.tokenize("Hello world", parse_special=True))
    # greedy == argmax of a fresh forward pass, token by token
    ids = toy.tokenize("Hello world", parse_special=True)
    for t in d["tokens"]:
        assert t == int(toy.logits(ids)[-1].argmax())
        ids.append(t)
    again = httpx.post(f"{url}/completion", json=body, timeout=60).json()
    assert again["content"] == d["content"]


def test_stream_and_stop_word(toy_server):
    url, _ = toy_server
    with httpx.stream("POST", f"{url}/completion", json={"prompt": "Hello", "n_predict": 5, "temperature": 0,
                                                          "stream": True}, timeout=60) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1]["stop"] is True and all(e["stop"] is False for e in events[:-1])
    text = "".join(e["content"] for e in events)
    full = httpx.post(f"{url}/completion", json={"prompt": "Hello", "n_predict": 5, "temperature": 0}, timeout=60).json()
    assert text == full["content"]
    if len(full["content"]) > 2:
        word = full["content"][1:3]
        d = httpx.post(f"{url}/completion", json={"prompt": "Hello", "n_predict": 5, "temperature": 0,
                                                   "stop": [word]}, timeout=60).json()
        assert d["stop_type"] == "word" and d["stopping_word"] == word and word not in d["content"]


def test_tokenize_detokenize(toy_server, toy):
    url, _ = toy_server
    ids = httpx.post(f"{url}/tokenize", json={"content": "Hello world"}).json()["tokens"]
    assert ids == toy.tokenize("Hello world", add_special=False, parse_special=True)
    assert httpx.post(f"{url}/detokenize", json={"tokens": ids}).json()["content"].strip() == "Hello world"


def test_openai_client_chat(toy_server):
    openai = pytest.importorskip("openai")
    url, _ = toy_server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    r = client.chat.completions.create(model="tiny-mixtral", messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=5, temperature=0)
    assert r.choices[0].message.role == "assistant" and r.usage.completion_tokens <= 5
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny-mixtral", messages=[{"role": "user", "content": "Hi"}], max_tokens=5, temperature=0, stream=True)]
    assert "".join(pieces) == r.choices[0].message.content
    c = client.completions.create(model="tiny-mixtral", prompt="Hello", max_tokens=3, temperature=0)
    assert c.choices[0].finish_reason in ("length", "stop")


@pytest.mark.parametrize("body, status", [
    (b"{not json", 400),
    (json.dumps({"prompt": "x", "n_predict": "ten"}).encode(), 400),
    (json.dumps({"prompt": "x", "n_predict": -5}).encode(), 400),
    (json.dumps({"prompt": "x", "temperature": [1]}).encode(), 400),
    (json.dumps({"prompt": 42}).encode(), 400),
    (json.dumps({"prompt": "word " * 400}).encode(), 400),
    (json.dumps({"prompt": "x", "grammar": "root ::= [a-z"}).encode(), 400),
])
def test_bad_input_gets_a_json_error_and_the_server_keeps_serving(toy_server, body, status):
    url, _ = toy_server
    r = httpx.post(f"{url}/completion", content=body, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["code"] == status and err["message"] and err["type"]
    assert httpx.get(f"{url}/health").status_code == 200


def test_any_model_name_is_served(toy_server):
    """As llama-server serving one model: clients that name another model (LangChain's "gpt-3.5-turbo")
    get the loaded one, and /v1/models still lists it."""
    url, _ = toy_server
    for name in ("gpt-3.5-turbo", "tiny-mixtral", ""):
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": name, "max_tokens": 2, "temperature": 0,
                                                            "messages": [{"role": "user", "content": "Hi"}]}, timeout=60)
        assert r.status_code == 200 and r.json()["model"] == "tiny-mixtral", (name, r.text)
    assert [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]] == ["tiny-mixtral"]


def test_concurrent_requests_and_disconnect_frees_the_slot(toy_server):
    url, engine = toy_server

    def one(i):
        return httpx.post(f"{url}/completion", json={"prompt": f"Hello {i}", "n_predict": 3, "temperature": 0},
                          timeout=120).status_code

    with ThreadPoolExecutor(8) as ex:
        codes = list(ex.map(one, range(24)))
    assert codes == [200] * 24
    # a client that goes away mid-stream: its slot must come back
    with httpx.stream("POST", f"{url}/completion", json={"prompt": "Hello", "n_predict": 200, "stream": True},
                      timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break
    deadline = time.time() + 30
    while engine.free_slots().qsize() < len(engine.slots) and time.time() < deadline:
        time.sleep(0.1)
    assert engine.free_slots().qsize() == len(engine.slots)
    assert one(99) == 200


def test_api_key(toy):
    engine = Engine(toy.fork(), n_parallel=1, alias="tiny")
    with ServerThread(build_app(engine, api_key="s3cret")) as url:
        assert httpx.get(f"{url}/health").status_code == 200
        r = httpx.post(f"{url}/completion", json={"prompt": "hi", "n_predict": 1})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        ok = httpx.post(f"{url}/completion", json={"prompt": "hi", "n_predict": 1},
                        headers={"Authorization": "Bearer s3cret"}, timeout=60)
        assert ok.status_code == 200


def test_seed_curl_example_on_smollm2(smollm2_path):
    """The seed's `curl --request POST --url http://localhost:8080/completion --data '{"prompt": ..., "n_predict": 128}'`."""
    model = workbench.load(smollm2_path, n_ctx=512)
    with ServerThread(build_app(Engine(model, alias="smollm2"))) as url:
        r = httpx.post(f"{url}/completion", headers={"Content-Type": "application/json"},
                       content=json.dumps({"prompt": "Building a website can be done in 10 simple steps:",
                                           "n_predict": 16}), timeout=300)
        d = r.json()
        assert r.status_code == 200 and isinstance(d["content"], str) and d["tokens_predicted"] <= 16
        assert d["timings"]["predicted_n"] == d["tokens_predicted"]


def test_modelfile_round_trip(tmp_path, toy_dir):
    from workbench.server.modelfile import modelfile_for, parse_modelfile

    text = modelfile_for(toy_dir / "tiny-mixtral-f16.gguf")
    mf = parse_modelfile(text + "SYSTEM Be brief.\nPARAMETER temperature 0.2\nPARAMETER num_keep 4\n")
    assert mf.parameters["temperature"] == 0.2 and mf.parameters["n_keep"] == 4
    assert "[INST]" in mf.parameters["stop"] and mf.model.endswith("tiny-mixtral-f16.gguf")
    assert mf.render("Hi") == "[INST] Be brief.\n\nHi [/INST]"
    assert mf.render("Hi", system="") == "[INST] Hi [/INST]"
