"""Write llama.cpp's greedy tokens under grammars to tests/data/grammar_reference.json.

    .venv/bin/python bench/grammar_reference.py [--converter BIN] [model.gguf]

llama.cpp (through llama-cpp-python) generates with temperature 0 for every prompt x grammar case.
For a JSON schema, llama-cpp-python exposes only LlamaGrammar.from_json_schema, an older Python port with a
different whitespace rule than llama.cpp's C++ json_schema_to_grammar (what llama-server runs). With
--converter BIN (a program that reads a schema on stdin and prints llama.cpp's C++ json_schema_to_grammar(schema,
force_gbnf=true): compile common/json-schema-to-grammar.cpp of the llama.cpp source with a 10-line main), the
GBNF llama.cpp runs is llama.cpp's own, and we record whether our converter's GBNF gives the same tokens and
text; without it, ours. We also record whether the old Python port gives the same tokens.
tests/test_grammar.py compares our greedy tokens with this file (it never writes it).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workbench.gguf import read_gguf  # noqa: E402
from workbench.text.chat import render_chat  # noqa: E402
from workbench.text.json_schema import json_schema_to_gbnf  # noqa: E402
from workbench.text.tokenizer import Tokenizer  # noqa: E402

MODEL = REPO / "data/models/SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = REPO / "tests/data/grammar_reference.json"
N_PREDICT = 48

PERSON = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "role": {"enum": ["student", "teacher", "engineer"]},
    "email": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
    "required": ["name", "age", "role"]}
ITEMS = {"type": "object", "properties": {"items": {"type": "array", "minItems": 1, "maxItems": 4,
         "items": {"type": "string", "maxLength": 24}}}, "required": ["items"]}
ANSWER_GBNF = ('root ::= answer\nanswer ::= ("yes" | "no") ", because " reason\n'
               'reason ::= [a-z ]{1,40} "."\n')
ARITH_GBNF = ('root ::= expr "=" num\nexpr ::= num (ws op ws num)*\nop ::= [-+*/]\n'
              'num ::= [0-9]+\nws ::= " "?\n')
CASES = {  # name -> ("json_schema", schema) or ("gbnf", text)
    "person": ("json_schema", PERSON),
    "items": ("json_schema", ITEMS),
    "yes_no": ("gbnf", ANSWER_GBNF),
    "arith": ("gbnf", ARITH_GBNF),
}
PROMPTS = [
    "Describe a person called Ada who teaches maths.",
    "Give me a JSON object about a software engineer named Bob, 31 years old.",
    "List three fruits.",
    "Is the sky blue? Answer and explain briefly.",
    "What is 12 plus 30?",
]


def case_gbnf(kind: str, spec) -> str:
    return json_schema_to_gbnf(spec) if kind == "json_schema" else spec


def prompt_tokens(tok: Tokenizer, metadata, text: str) -> list[int]:
    chat = render_chat([{"role": "user", "content": text}], "gguf", metadata=metadata)
    return tok.tokenize(chat, add_special=True, parse_special=True)


def llama_cpp_greedy(llm, prompt: list[int], grammar, eog: set[int]) -> list[int]:
    out = []
    llm.reset()
    for t in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, grammar=grammar, reset=True):
        if t in eog or len(out) >= N_PREDICT:
            break
        out.append(int(t))
    return out


def cpp_gbnf(converter: str, schema) -> str:
    """llama.cpp's C++ json_schema_to_grammar through an external converter program."""
    import subprocess
    r = subprocess.run([converter], input=json.dumps(schema), capture_output=True, text=True, check=True)
    return r.stdout


def main(model: Path = MODEL, converter: str | None = None) -> None:
    import llama_cpp

    md = read_gguf(model).metadata
    tok = Tokenizer.from_metadata(md)
    llm = llama_cpp.Llama(model_path=str(model), n_ctx=512, verbose=False)
    cases = []
    for name, (kind, spec) in CASES.items():
        gbnf = case_gbnf(kind, spec)
        ref_gbnf = cpp_gbnf(converter, spec) if (converter and kind == "json_schema") else gbnf
        for i, text in enumerate(PROMPTS):
            prompt = prompt_tokens(tok, md, text)
            ref = llama_cpp_greedy(llm, prompt, llama_cpp.LlamaGrammar.from_string(ref_gbnf, verbose=False),
                                   set(tok.eog_ids))
            case = {"case": name, "kind": kind, "prompt_index": i, "prompt": prompt, "tokens": ref,
                    "text": tok.detokenize(ref)}
            if ref_gbnf is not gbnf:
                case["gbnf_from"] = "llama.cpp json_schema_to_grammar (C++)"
                case["same_as_our_converter"] = llama_cpp_greedy(
                    llm, prompt, llama_cpp.LlamaGrammar.from_string(gbnf, verbose=False), set(tok.eog_ids)) == ref
            ours_gbnf = ref
            if kind == "json_schema":
                port = llama_cpp.LlamaGrammar.from_json_schema(json.dumps(spec), verbose=False)
                case["same_as_llama_cpp_python_converter"] = llama_cpp_greedy(llm, prompt, port,
                                                                             set(tok.eog_ids)) == ours_gbnf
            cases.append(case)
            print(name, i, repr(case["text"]))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"model": model.name, "n_predict": N_PREDICT, "llama_cpp_python":
                               llama_cpp.__version__, "cases": cases}, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=str(MODEL))
    ap.add_argument("--converter", help="llama.cpp's C++ json_schema_to_grammar as a program (schema on stdin)")
    a = ap.parse_args()
    main(Path(a.model), a.converter)
