"""Tokenizer vs llama.cpp: the golden corpus tokenized by llama.cpp with SmolLM2 (byte-level BPE,
pre-tokenizer "smollm") and the toy models' SentencePiece vocab, in three variants each."""
from __future__ import annotations

import json
import time

import pytest

from workbench.gguf import read_gguf
from workbench.text.pretokenize import (GPT2, LLAMA3, QWEN2, _collapse_regex, _collapsed_text,
                                       _split_gpt2, _split_llama3, _split_regex, cpt_flags,
                                       regex_split)
from workbench.text.tokenizer import StreamDecoder, Tokenizer, TokenizerError

VOCABS = {"smollm2": None, "toy_spm": "tiny-mixtral-f16.gguf"}  # None: the SmolLM2 model
VARIANTS = {"ids": dict(add_special=False),
            "ids_special": dict(add_special=False, parse_special=True),
            "ids_bos": dict(add_special=True)}
N_LINES = 34


@pytest.fixture(scope="session")
def tokenizers(smollm2_path, toy_dir):
    out = {}
    for name, toy_file in VOCABS.items():
        path = toy_dir / toy_file if toy_file else smollm2_path
        out[name] = Tokenizer.from_metadata(read_gguf(path).metadata)
    return out


@pytest.fixture(scope="session")
def golden(golden_dir):
    corpus = (golden_dir / "tokenize_corpus.txt").read_text(encoding="utf-8").split("\n")
    out = {}
    for name in VOCABS:
        cases = json.loads((golden_dir / f"tokenize_{name}.json").read_text(encoding="utf-8"))
        assert [c["text"] for c in cases] == corpus, f"tokenize_{name}.json is not the corpus"
        out[name] = cases
    return out


def _first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("line", range(N_LINES))
@pytest.mark.parametrize("vocab", list(VOCABS))
def test_golden_ids(tokenizers, golden, vocab, line, variant):
    case = golden[vocab][line]
    got = tokenizers[vocab].tokenize(case["text"], **VARIANTS[variant])
    want = case[variant]
    i = _first_diff(got, want)
    assert got == want, (f"{vocab} line {line} {variant}: first difference at token {i}: "
                         f"got {got[i:i + 5]} want {want[i:i + 5]} (len {len(got)} vs {len(want)})")


@pytest.mark.parametrize("line", range(N_LINES))
@pytest.mark.parametrize("vocab", list(VOCABS))
def test_round_trip(tokenizers, golden, vocab, line):
    """detokenize(tokenize(x)) == x: holds for both vocabularies on the whole corpus (SPM's
    prefixed space is removed again; no clean-up of spaces for these two)."""
    tok, text = tokenizers[vocab], golden[vocab][line]["text"]
    assert tok.detokenize(tok.tokenize(text, add_special=False)) == text
    # with parse_special the special tokens must be rendered back (unparse_special)
    ids = tok.tokenize(text, add_special=False, parse_special=True)
    assert tok.detokenize(ids, unparse_special=True) == text


def test_bos_and_special_pieces(tokenizers):
    spm, bpe = tokenizers["toy_spm"], tokenizers["smollm2"]
    assert (spm.bos_id, spm.eos_id, spm.add_bos, spm.add_eos) == (1, 2, True, False)
    assert (bpe.bos_id, bpe.eos_id, bpe.add_bos) == (1, 2, False)
    ids = spm.tokenize("Hello world")
    assert ids[0] == spm.bos_id
    # llama_detokenize keeps the prefix space when it (remove_special) drops the BOS, and
    # drops it when no BOS is there
    assert spm.detokenize(ids, remove_special=True) == " Hello world"
    assert spm.detokenize(ids[1:]) == "Hello world"
    assert spm.detokenize(ids, unparse_special=True) == "<s> Hello world"
    im_end = bpe.token_to_id["<|im_end|>"]
    assert bpe.is_eog(im_end) and bpe.is_control(im_end) and bpe.is_eog(bpe.eos_id)
    assert not bpe.is_eog(bpe.token_to_id["Hello"])
    assert bpe.token_to_piece(im_end, special=False) == b""
    assert bpe.token_to_piece(im_end) == b"<|im_end|>"
    assert bpe.n_vocab == 49152 and spm.n_vocab == 32000


def test_byte_fallback_and_bytes_input(tokenizers):
    spm = tokenizers["toy_spm"]
    ids = spm.tokenize("\U0001F9D1\u200d\U0001F9AF", add_special=False)  # rare emoji: bytes
    assert sum(spm.tokens[i].startswith("<0x") for i in ids) >= 4  # at least one emoji as bytes
    assert spm.detokenize(ids) == "\U0001F9D1\u200d\U0001F9AF"
    # invalid UTF-8 bytes are replaced by U+FFFD as unicode_cpts_from_utf8 does
    bpe = tokenizers["smollm2"]
    assert bpe.tokenize(b"a\xffb", add_special=False) == bpe.tokenize("a\ufffdb", add_special=False)


@pytest.mark.parametrize("vocab", list(VOCABS))
def test_stream_decoder_never_splits_characters(tokenizers, golden, vocab):
    tok = tokenizers[vocab]
    for case in golden[vocab]:
        dec = StreamDecoder(tok)
        pieces = [dec.feed(i) for i in case["ids"]] + [dec.flush()]
        assert "".join(pieces) == b"".join(tok.token_to_piece(i, special=False)
                                           for i in case["ids"]).decode("utf-8")
        assert not any("\ufffd" in p for p in pieces), case["text"]


def _spm_whole(tok, text):
    """SPM over the whole escaped text at once, as llama.cpp does (no word cuts, no cache)."""
    from workbench.text.spm import spm_tokenize
    if not text:
        return []  # empty text: no fragment at all, not even the prefix space
    raw = (" " + text).replace(" ", "\u2581").encode("utf-8", "surrogateescape")
    return spm_tokenize(raw, tok.bytes_to_id, tok.scores, tok.byte_to_token)


@pytest.mark.parametrize("line", range(N_LINES))
def test_spm_word_cuts_change_nothing(tokenizers, golden, line):
    tok, text = tokenizers["toy_spm"], golden["toy_spm"][line]["text"]
    assert tok.tokenize(text, add_special=False) == _spm_whole(tok, text)


@pytest.mark.slow
def test_spm_word_cuts_change_nothing_on_botchan(tokenizers, shared_data_dir):
    tok = tokenizers["toy_spm"]
    text = (shared_data_dir / "botchan.txt").read_text(encoding="utf-8")
    assert tok.tokenize(text, add_special=False) == _spm_whole(tok, text)


def test_spm_invalid_utf8_bytes_become_byte_tokens(tokenizers):
    tok = tokenizers["toy_spm"]
    # llama.cpp's SPM groups bytes by the lead byte's length, even across the escaped space
    raw = b"\xe4 \xad\x98\xe4"
    ids = tok.tokenize(raw, add_special=False)
    assert ids == _spm_whole(tok, raw.decode("utf-8", "surrogateescape"))
    # (the escaped space went out as its three raw bytes, so it comes back as U+2581)
    assert tok.detokenize_bytes(ids) == raw.replace(b" ", "\u2581".encode())


def test_unsupported_metadata():
    with pytest.raises(TokenizerError, match="tokenizer.ggml.model"):
        Tokenizer.from_metadata({"tokenizer.ggml.model": "rwkv", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(TokenizerError, match="tokenizer.ggml.model"):  # WordPiece needs an unknown token
        Tokenizer.from_metadata({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(TokenizerError, match="tokenizer.ggml.pre"):
        Tokenizer.from_metadata({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "nope",
                                 "tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.merges": []})


def test_botchan_token_count_and_speed(tokenizers, shared_data_dir):
    """The perplexity text: 70,190 tokens with SmolLM2 (llama-perplexity's count), in seconds."""
    text = (shared_data_dir / "botchan.txt").read_text(encoding="utf-8")
    tok = tokenizers["smollm2"]
    t0 = time.perf_counter()
    ids = tok.tokenize(text, add_special=True)
    dt = time.perf_counter() - t0
    assert len(ids) == 70190
    assert dt < 10, f"tokenizing botchan took {dt:.1f}s"
    assert tok.detokenize(ids) == text


# --- pre-tokenizer: hand-written splitters vs the same pattern run as a regex ----------------
SPLIT_TEXTS = ["Hello world, it's 2024!", "  leading\tand   trailing  ", "a\n\n\nb\r\nc",
               "don't WON'T it's I'M we'Ve", "x = f(a,b)  # 3.14159e-5\n", "naïve café Straße",
               "数字123和456789", "emoji \U0001F600\U0001F600 ok", "tab\t\tnew\nline  \n  end",
               "' '' 's 'S'", "\u3000full\u3000width\u00a0nbsp", "1,000,000 and 12345678"]


@pytest.mark.parametrize("text", SPLIT_TEXTS)
@pytest.mark.parametrize("pattern,custom", [(GPT2, _split_gpt2),
                                            (LLAMA3, lambda c, f, o: _split_llama3(c, f, o, 3)),
                                            (QWEN2, lambda c, f, o: _split_llama3(c, f, o, 1))])
def test_custom_splitters_match_their_regex(text, pattern, custom):
    """llama.cpp replaces these three regexes by hand-written code; both must split alike."""
    cpts = [ord(c) for c in text]
    flg = [cpt_flags(c) for c in cpts]
    want = _split_regex(_collapsed_text(cpts, flg), _collapse_regex(pattern), [len(cpts)])
    assert custom(cpts, flg, [len(cpts)]) == want


def test_smollm_splits_digits():
    assert regex_split("ab 12345 x", [r"\p{N}", GPT2], False) == ["ab", " ", "1", "2", "3", "4", "5", " x"]


# --- the prompts of the other goldens were tokenized by llama.cpp too ---------------------------
def test_smollm2_golden_prompts(tokenizers, golden_dir):
    import numpy as np

    tok = tokenizers["smollm2"]
    z = np.load(golden_dir / "logits_smollm2_q4_1.npz")
    for i in range(3):
        text = str(z[f"prompt_{i}_text"])
        assert tok.tokenize(text, add_special=True, parse_special=True) == z[f"prompt_{i}_tokens"].tolist()
    for case in json.loads((golden_dir / "greedy_smollm2_q4_1.json").read_text(encoding="utf-8")):
        assert tok.tokenize(case["prompt"], add_special=True, parse_special=True) == case["prompt_tokens"]
        assert tok.detokenize(case["greedy_tokens"]) == case["greedy_text"]


TOY_PROMPTS = ["Hello world, this is a test of the toy model.", "介绍一下北京", "def f(x): return x * 2"]


@pytest.mark.parametrize("name", ["tiny-llama_f32", "tiny-mixtral_f16", "tiny-mixtral8_f16"])
def test_toy_golden_prompts(tokenizers, toy_dir, name):
    import numpy as np

    z = np.load(toy_dir / f"golden_{name}.npz")
    for i, text in enumerate(TOY_PROMPTS):
        assert tokenizers["toy_spm"].tokenize(text) == z[f"prompt_{i}_tokens"].tolist()
