"""llama.cpp's own tokenizer suite (tests/test-tokenizer-0.cpp over models/ggml-vocab-*.gguf with .inp/.out),
then small self-contained checks of the WordPiece tokenizer and the newer pre-tokenizers (no sdist needed).

The suite follows test-tokenizer-0's protocol: the .inp file is cut at "\\n__ggml_vocab_test__\\n", the .out
file has one line of space-separated ids per case, the cases go into a std::map (a repeated input keeps
its last ids), and each input is tokenized with add_special=false, parse_special=false."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
from conftest import LLAMA_CPP_HINT, llama_cpp_source

from workbench.gguf import read_gguf
from workbench.text.pretokenize import (
    LLAMA3,
    NEWLINES,
    PRE_TOKENIZERS,
    QWEN2,
    QWEN35,
    _collapse_regex,
    _collapsed_text,
    _split_llama3,
    _split_regex,
    cpt_flags,
    regex_split,
)
from workbench.text.tokenizer import Tokenizer, TokenizerError
from workbench.text.unicode_data import LETTER, MARK, cpt_nfd, cpt_tolower
from workbench.text.wpm import wpm_preprocess

SEP = "\n__ggml_vocab_test__\n"
N_CASES = 694  # the suite at the reference commit: 15 vocabs, 46 cases each, qwen35 50


MODELS = llama_cpp_source("models")
SRC = MODELS.parent if MODELS else None
VOCABS = sorted(p.name[len("ggml-vocab-"):-len(".gguf")] for p in (SRC / "models").glob("ggml-vocab-*.gguf")
                if p.with_name(p.name + ".inp").is_file() and p.with_name(p.name + ".out").is_file()) if SRC else []
NO_SRC = f"llama.cpp source not found ({LLAMA_CPP_HINT})"


def read_cases(vocab: Path) -> dict[str, list[int]]:
    """input text -> expected ids, as test-tokenizer-0's read_tests."""
    raw = vocab.with_name(vocab.name + ".inp").read_bytes().decode("utf-8")
    inputs, pos = [], 0
    while pos < len(raw):
        nxt = raw.find(SEP, pos)
        if nxt < 0:
            inputs.append(raw[pos:])
            break
        inputs.append(raw[pos:nxt])
        pos = nxt + len(SEP)
    lines = vocab.with_name(vocab.name + ".out").read_bytes().decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # std::getline: no empty line after the final newline
    assert len(inputs) == len(lines), f"{vocab.name}: {len(inputs)} inputs but {len(lines)} output lines"
    cases = {}
    for text, line in zip(inputs, lines):
        line = line.strip(" \t\n\v\f\r")
        cases[text] = [int(t) for t in line.split(" ")] if line else []
    return cases


@functools.lru_cache(maxsize=None)
def run_vocab(name: str) -> tuple[int, tuple[tuple[str, list[int], list[int]], ...]]:
    """(number of cases, the failing ones as (input, expected, got))."""
    path = SRC / "models" / f"ggml-vocab-{name}.gguf"
    tok = Tokenizer.from_metadata(read_gguf(path).metadata)
    cases = read_cases(path)
    bad = []
    for text, want in cases.items():
        got = tok.tokenize(text, add_special=False, parse_special=False)
        if got != want:
            bad.append((text, want, got))
    return len(cases), tuple(bad)


def _report(name, bad) -> str:
    lines = [f"{name}: {len(bad)} cases differ"]
    for text, want, got in bad[:5]:
        lines.append(f"  case {text!r}\n    expected {want}\n    got      {got}")
    return "\n".join(lines)


@pytest.mark.parametrize("name", VOCABS or [pytest.param("none", marks=pytest.mark.skip(reason=NO_SRC))])
def test_llama_cpp_vocab_suite(name):
    n, bad = run_vocab(name)
    assert n > 0, f"{name}: no cases read"
    assert not bad, _report(name, bad)


def test_llama_cpp_suite_total():
    if SRC is None:
        pytest.skip(NO_SRC)
    results = {name: run_vocab(name) for name in VOCABS}
    total = sum(n for n, _ in results.values())
    passed = total - sum(len(bad) for _, bad in results.values())
    print(f"llama.cpp tokenizer suite: {passed}/{total} cases over {len(VOCABS)} vocabularies")
    assert passed == total, "\n".join(_report(k, bad) for k, (_, bad) in results.items() if bad)
    assert total == N_CASES, f"the suite has {total} cases, expected {N_CASES} (a different llama.cpp commit?)"


# --- WordPiece (no sdist needed) -------------------------------------------------------------
def test_wpm_preprocess_normalizes_and_splits():
    text = "He\u0301llo, WÖRLD!  中文x a+b a€b İ"
    assert wpm_preprocess(text, lowercase=True, strip_accents=True) == \
        ["hello", ",", "world", "!", "中", "文", "x", "a", "+", "b", "a€b", "i"]
    # without the normalizer: accents and case stay; punctuation and CJK still split off
    assert wpm_preprocess(text) == ["He\u0301llo", ",", "WÖRLD", "!", "中", "文", "x", "a", "+", "b", "a€b", "İ"]


def test_wpm_preprocess_drops_controls_with_llama_cpp_whitespace():
    # U+001C is a control character for llama.cpp, not whitespace (Python's isspace says it is);
    # NUL, U+FFFD and format characters (U+200B) vanish; U+3000 and U+00A0 separate words
    assert wpm_preprocess("a\x1cb c\x00d\ufffde\u200bf\u3000g\u00a0h") == ["ab", "cdef", "g", "h"]


def test_unicode_tables_single_codepoint_mappings():
    assert cpt_nfd(ord("é")) == ord("e") and cpt_nfd(0x212B) == ord("A")  # Angstrom sign -> Å -> A + ring
    assert cpt_nfd(ord("ǅ")) == ord("ǅ") and cpt_nfd(ord("a")) == ord("a")  # compatibility forms stay
    assert cpt_tolower(0x130) == ord("i")  # simple mapping, where str.lower gives two codepoints
    assert cpt_tolower(ord("Σ")) == ord("σ") and cpt_tolower(ord("ß")) == ord("ß")


def _bert(tokens, **extra):
    md = {"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.token_type": [3 if t.startswith("[") else 1 for t in tokens]}
    md.update(extra)
    return Tokenizer.from_metadata(md)


BERT_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "\u2581un", "\u2581unaff", "aff", "able", "\u2581hello",
               "\u2581,", "\u2581x", "y", "\u2581!"]


def test_wordpiece_longest_match_unknown_words_and_framing():
    tok = _bert(BERT_TOKENS, **{"tokenizer.ggml.unknown_token_id": 1, "tokenizer.ggml.seperator_token_id": 3,
                                "tokenizer.ggml.bos_token_id": 2})
    ids = {t: i for i, t in enumerate(BERT_TOKENS)}
    # "▁unaffable": the longest token at each position ("▁unaff", not "▁un" + "aff"), then "able"
    assert tok.tokenize("Unaffable, HELLO!", add_special=False) == \
        [ids["\u2581unaff"], ids["able"], ids["\u2581,"], ids["\u2581hello"], ids["\u2581!"]]
    # "▁xyz": "▁x", "y", then no token for "z": the whole word is [UNK]
    assert tok.tokenize("xyz hello", add_special=False) == [1, ids["\u2581hello"]]
    assert tok.tokenize("hello") == [2, ids["\u2581hello"], 3]  # [CLS] ... [SEP] with add_special
    assert tok.tokenize("[SEP]hello", add_special=False, parse_special=True) == [3, ids["\u2581hello"]]
    # pieces unescape U+2581; clean_spaces drops the space before "," and "!"
    assert tok.detokenize([ids["\u2581unaff"], ids["able"], ids["\u2581,"], ids["\u2581hello"], ids["\u2581!"]]) == \
        " unaffable, hello!"


def test_wordpiece_normalizer_can_be_switched_off():
    tok = _bert(BERT_TOKENS, **{"tokenizer.ggml.unknown_token_id": 1, "tokenizer.ggml.normalizer.lowercase": False})
    assert tok.tokenize("Hello hello", add_special=False) == [1, BERT_TOKENS.index("\u2581hello")]


def test_wordpiece_needs_unknown_token():
    with pytest.raises(TokenizerError, match="unknown_token_id"):
        _bert(["[PAD]", "\u2581a"])


# --- pre-tokenizers (no sdist needed) ---------------------------------------------------------
def test_deepseek_llm_split():
    pre = PRE_TOKENIZERS["deepseek-llm"].regexes
    # newline alone; letters with one leading space; CJK runs; digits after everything else
    assert regex_split("Hello world\n123 中文abc", pre, False) == ["Hello", " world", "\n", "123", " ", "中文", "abc"]
    # std::wregex sees U+3000 as \v (a space), so it joins the next letters instead of the CJK punctuation class
    assert regex_split("a\u3000b", pre, False) == ["a", "\u3000b"]


def test_deepseek_coder_split():
    pre = PRE_TOKENIZERS["deepseek-coder"].regexes
    # "=" is a symbol, not punctuation; digits one by one
    assert regex_split("foo(bar, 42)", pre, False) == ["foo", "(", "bar", ",", " ", "4", "2", ")"]
    assert regex_split("x=12", pre, False) == ["x", "=", "1", "2"]


def test_ecmascript_dollar_is_end_of_text_only():
    # Python's `$` would also match before the final newline and split "ab" off
    assert regex_split("ab\n", ["[a-z]+$"], False) == ["ab\n"]
    assert regex_split("ab \n\t", ["\\s+$"], False) == ["ab", " \n\t"]


def test_qwen35_keeps_marks_in_words():
    text = "a नमस्ते! e\u0301\u0301x"
    assert regex_split(text, [QWEN35], False) == ["a", " नमस्ते", "!", " e\u0301\u0301x"]
    assert regex_split(text, [QWEN2], False) != regex_split(text, [QWEN35], False)  # Qwen2 cuts at marks


MARK_TEXTS = ["a नमस्ते! e\u0301\u0301x", "\u0301\u0301 \u0301a", "it's ‘x’ 12345 \n\n  y", " \u0301!!\r\n", "Ω\u0308 , ़a"]


@pytest.mark.parametrize("text", MARK_TEXTS)
def test_qwen35_splitter_matches_its_regex(text):
    """The hand-written splitter (unicode_regex_split_custom_qwen35) against the pattern itself, run the
    generic way (std::regex on the collapsed text)."""
    cpts = [ord(c) for c in text]
    flg = [cpt_flags(c) for c in cpts]
    want = _split_regex(_collapsed_text(cpts, flg), _collapse_regex(QWEN35), [len(cpts)])
    assert _split_llama3(cpts, flg, [len(cpts)], 1, LETTER | MARK) == want
    assert _split_llama3(cpts, flg, [len(cpts)], 3) == \
        _split_regex(_collapsed_text(cpts, flg), _collapse_regex(LLAMA3), [len(cpts)])


def test_newline_split():
    assert regex_split("a b\n\nc\n", [NEWLINES], False) == ["a b", "\n\n", "c", "\n"]


GEMMA_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<0x0A>", "<0xC3>", "<0xA9>", "\u2581", "h", "i", "hi",
                "\u2581hi", "\n\n"]


def test_gemma4_spm_style_bpe():
    md = {"tokenizer.ggml.model": "gemma4", "tokenizer.ggml.tokens": GEMMA_TOKENS,
          "tokenizer.ggml.token_type": [3, 3, 3, 2, 6, 6, 6, 1, 1, 1, 1, 1, 1],
          "tokenizer.ggml.merges": ["h i", "\u2581 hi"], "tokenizer.ggml.bos_token_id": 2,
          "tokenizer.ggml.eos_token_id": 1, "tokenizer.ggml.add_bos_token": False}
    tok = Tokenizer.from_metadata(md)
    ids = {t: i for i, t in enumerate(GEMMA_TOKENS)}
    # spaces become U+2581 and merge inside the line; "\n\n" is taken whole (no merge builds it);
    # "é" is no token: its UTF-8 bytes become <0xC3> <0xA9>
    want = [ids["hi"], ids["\u2581hi"], ids["\n\n"], ids["<0xC3>"], ids["<0xA9>"]]
    assert tok.tokenize("hi hi\n\né", add_special=False) == want
    assert tok.tokenize("hi hi\n\né") == [2] + want  # BOS forced on for Gemma-4, whatever the metadata says
    assert tok.detokenize(want) == "hi hi\n\né"


def test_fim_tokens_found_by_text_are_control():
    tokens = ["a", "b", "<｜fim▁hole｜>", "<|fim_prefix|>"]
    tok = Tokenizer.from_metadata({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
                                   "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": [1, 1, 4, 4],
                                   "tokenizer.ggml.merges": []})
    assert tok.is_control(2) and tok.is_control(3)
    assert 2 not in tok.tokenize("a<｜fim▁hole｜>", add_special=False)  # control: only with parse_special
    assert tok.tokenize("a<｜fim▁hole｜>", add_special=False, parse_special=True) == [0, 2]


def test_gemma4_end_of_sentence_text_is_a_normal_token():
    tokens = GEMMA_TOKENS + ["</s>", "<|tool_response>"]
    md = {"tokenizer.ggml.model": "gemma4", "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.token_type": [3, 3, 3, 2, 6, 6, 6] + [1] * 6 + [3, 3],
          "tokenizer.ggml.merges": [], "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1}
    tok = Tokenizer.from_metadata(md)
    s, tool = len(GEMMA_TOKENS), len(GEMMA_TOKENS) + 1
    assert tok.is_eog(tool) and not tok.is_eog(s) and not tok.is_control(s)
    assert s not in tok.tokenize("</s>", add_special=False, parse_special=True)  # spelled out, not matched


def test_phi3_special_tokens_eat_following_spaces():
    """llama.cpp sets RSTRIP on Phi-3's special tokens by model name (except <unk>, <s>, <|endoftext|>)."""
    tokens = ["<unk>", "<s>", "</s>", "<|user|>", "\u2581hi", "\u2581", "h", "i", "hi"]
    md = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.scores": [0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -3.0, -1.5],
          "tokenizer.ggml.token_type": [2, 3, 3, 3, 1, 1, 1, 1, 1]}
    plain = Tokenizer.from_metadata(md)
    phi3 = Tokenizer.from_metadata({**md, "general.name": "Phi-3-mini"})
    # after a special token a space is prefixed again ("▁hi"); with RSTRIP the typed spaces go first
    assert phi3.tokenize("<|user|>   hi", add_special=False, parse_special=True) == [3, 4]
    assert plain.tokenize("<|user|>   hi", add_special=False, parse_special=True) != [3, 4]
    assert phi3.tokenize("<s>  hi", add_special=False, parse_special=True) == \
        plain.tokenize("<s>  hi", add_special=False, parse_special=True)  # <s> keeps its spaces
