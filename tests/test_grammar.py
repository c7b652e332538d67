"""Constrained decoding: the GBNF parser's errors, the matcher's token rules (EOG, special tokens), and greedy
generation under grammars compared with llama.cpp's tokens (tests/data/grammar_reference.json, written by
bench/grammar_reference.py; live against llama-cpp-python when it is importable)."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from workbench.gguf import read_gguf
from workbench.llama.generate import generate
from workbench.llama.model import load
from workbench.llama.sampling import LlamaRNG, Sampler, SamplingParams
from workbench.text.grammar import Grammar, GrammarError
from workbench.text.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "tests/data/grammar_reference.json"
sys.path.insert(0, str(REPO / "bench"))
import grammar_reference as ref  # noqa: E402


@pytest.fixture(scope="module")
def tok(smollm2_path) -> Tokenizer:
    return Tokenizer.from_metadata(read_gguf(smollm2_path).metadata)


@pytest.fixture(scope="module")
def model(smollm2_path):
    return load(smollm2_path, n_ctx=512)


def accepts(grammar: Grammar, tok: Tokenizer, text: str) -> bool:
    """Feed the text's tokens one by one; True if all are allowed and the grammar can end there."""
    m = grammar.matcher(tok)
    for t in tok.tokenize(text, add_special=False):
        if not m.is_allowed(t):
            return False
        m.accept(t)
    return m.is_accepting()


# ---- GBNF parsing ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, where", [
    ('root ::= "a" | b\n', "line 1, column 16"),
    ('root ::= "a"\nx ::= [0-9\n', "line 2, column 7"),
    ('root ::= "a"\n\nfoo := "b"\n', "line 3, column 5"),
    ('root ::= "\\q"\n', "line 1, column 11"),
    ('root ::= "a"{3,2}\n', "line 1"),
    ('root ::= ( "a" \n', "line 2"),
])
def test_gbnf_errors_name_the_position(text, where):
    with pytest.raises(GrammarError, match=where):
        Grammar.from_gbnf(text)


def test_gbnf_without_root_or_with_left_recursion_is_refused():
    with pytest.raises(GrammarError, match="root"):
        Grammar.from_gbnf('start ::= "a"\n')
    with pytest.raises(GrammarError, match="left-recursive"):
        Grammar.from_gbnf('root ::= x\nx ::= "b" | x "a"\n')


def test_gbnf_syntax_as_llama_cpp(tok):
    g = Grammar.from_gbnf('# comment\nroot ::= ( "x" [a-c]{2} |\n  "\\x41" . ) "!"?  # tail\n')
    for text, ok in [("xab", True), ("xab!", True), ("Aé", True), ("xa", False), ("xd!", False)]:
        assert accepts(g, tok, text) is ok, text


# ---- matcher token rules ---------------------------------------------------------------------

def test_eog_only_when_the_grammar_can_end(tok):
    m = Grammar.from_gbnf('root ::= [0-9]+ | "end"\n').matcher(tok)
    eog = sorted(tok.eog_ids)
    assert not m.allowed()[eog].any() and not m.is_accepting()
    with pytest.raises(GrammarError):
        m.accept(eog[0])
    m.accept(tok.tokenize("7", add_special=False)[0])
    assert m.allowed()[eog].all() and m.is_accepting() and not m.is_finished()
    m.accept(eog[0])
    assert m.is_finished() and not m.allowed().any()


def test_finished_grammar_allows_only_eog(tok):
    m = Grammar.from_gbnf('root ::= "yes"\n').matcher(tok)
    m.accept(tok.tokenize("yes", add_special=False)[0])
    allowed = m.allowed()
    assert m.is_finished() and set(np.nonzero(allowed)[0]) == set(tok.eog_ids)


def test_mask_matches_token_by_token_checks(tok):
    """allowed() and is_allowed() agree, and every allowed piece is a prefix of something legal."""
    g = Grammar.from_gbnf('root ::= "{" [a-z]{1,3} "}"\n')
    m = g.matcher(tok)
    m.accept(tok.tokenize("{", add_special=False)[0])
    mask = m.allowed()
    ids = np.nonzero(mask)[0]
    assert 26 <= len(ids) < 5000
    for t in ids[:200]:
        piece = tok.token_to_piece(int(t))
        assert m.is_allowed(int(t)) and re.fullmatch(rb"[a-z]{1,3}\}?", piece), piece
    for t in np.nonzero(~mask)[0][:300]:
        assert not m.is_allowed(int(t))


def test_control_tokens_match_by_their_text_as_llama_cpp(tok):
    start = tok.token_to_id["<|im_start|>"]  # a control token that is not EOG
    g = Grammar.from_gbnf('root ::= "<|im_start|>" [a-z]+\n')
    assert g.matcher(tok).is_allowed(start)
    assert not Grammar.from_gbnf('root ::= [a-z]+\n').matcher(tok).is_allowed(start)


def test_grammar_is_reusable_and_matchers_independent(tok):
    g = Grammar.from_json_schema({"type": "boolean"})
    a, b = g.matcher(tok), g.matcher(tok)
    a.accept(tok.tokenize("true", add_special=False)[0])
    assert a.is_accepting() and not b.is_accepting()
    assert accepts(g, tok, "false") and not accepts(g, tok, "no")


def test_regex_grammar(tok):
    g = Grammar.from_regex(r"[0-9]{3}-[a-z]+")
    assert accepts(g, tok, "123-abc") and not accepts(g, tok, "12-abc")
    with pytest.raises(GrammarError):
        Grammar.from_regex("(unclosed")


def test_rejection_sampling_draws_twice_when_the_first_token_is_refused(tok):
    """common_sampler_sample: an allowed first draw uses one RNG draw, a refused one a second."""
    n = tok.n_vocab
    logits = np.zeros(n, np.float32)
    logits[tok.tokenize("hello", add_special=False)[0]] = 10.0
    params = SamplingParams(temperature=0.8, top_k=0, top_p=1.0, min_p=0.0)
    g = Grammar.from_gbnf('root ::= [0-9]\n')
    s1, s2 = Sampler(params, LlamaRNG(7)), Sampler(params, LlamaRNG(7))
    token = s1.sample(logits, (), g.matcher(tok))
    assert tok.token_to_piece(token).isdigit()
    s2.sample(logits)
    s2.sample(logits)  # two draws consumed by the reference sampler
    assert s1.rng.uniform() == s2.rng.uniform()


# ---- greedy generation vs llama.cpp ----------------------------------------------------------

def reference_cases():
    if not REFERENCE.exists():
        return []
    return json.loads(REFERENCE.read_text())["cases"]


def reference_params():
    """Every case (about 40 s in all on 2 cores)."""
    return reference_cases()


def case_grammar(name: str) -> Grammar:
    kind, spec = ref.CASES[name]
    return Grammar.from_json_schema(spec) if kind == "json_schema" else Grammar.from_gbnf(spec)


def our_greedy(model, prompt, grammar) -> list[int]:
    final = None
    for ev in generate(model, model.tokenizer, prompt, n_predict=ref.N_PREDICT, cache_prompt=False,
                       params=SamplingParams(temperature=0.0), seed=1, grammar=grammar):
        if ev.done:
            final = ev
    return final.tokens


@pytest.mark.parametrize("case", reference_params(), ids=lambda c: f"{c['case']}-{c['prompt_index']}")
def test_greedy_tokens_match_llama_cpp_reference(model, case):
    kind, spec = ref.CASES[case["case"]]
    assert case["prompt"] == ref.prompt_tokens(model.tokenizer, model.gguf.metadata, ref.PROMPTS[case["prompt_index"]])
    ours = our_greedy(model, case["prompt"], case_grammar(case["case"]))
    assert ours == case["tokens"], (model.tokenizer.detokenize(ours), case["text"])
    if kind == "json_schema" and len(ours) < ref.N_PREDICT:  # complete answers parse and validate
        jsonschema.validate(json.loads(model.tokenizer.detokenize(ours)), spec)


def test_reference_file_covers_the_cases():
    cases = reference_cases()
    if not cases:
        pytest.skip("tests/data/grammar_reference.json missing (run bench/grammar_reference.py)")
    assert {c["case"] for c in cases} == set(ref.CASES) and len(cases) == len(ref.CASES) * len(ref.PROMPTS)


def test_live_against_llama_cpp(model, smollm2_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(smollm2_path), n_ctx=512, verbose=False)
    tok = model.tokenizer
    for name in ("person", "yes_no"):
        kind, spec = ref.CASES[name]
        gbnf = ref.case_gbnf(kind, spec)
        prompt = ref.prompt_tokens(tok, model.gguf.metadata, ref.PROMPTS[4])
        theirs = ref.llama_cpp_greedy(llm, prompt, llama_cpp.LlamaGrammar.from_string(gbnf, verbose=False),
                                      set(tok.eog_ids))
        assert our_greedy(model, prompt, case_grammar(name)) == theirs
