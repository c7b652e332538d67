"""Text files read as llama.cpp's tools read `-f`: bytes as they are (BOM and CRLF kept, one trailing LF dropped),
and `python -m workbench perplexity -f FILE` printing llama-perplexity's numbers for the raw file."""
from __future__ import annotations


import pytest

from workbench.cli import main
from workbench.text.files import decode_prompt_bytes, read_prompt_file
from conftest import golden_json


def test_bytes_are_kept_as_they_are(tmp_path):
    f = tmp_path / "crlf.txt"
    f.write_bytes(b"\xef\xbb\xbfline one\r\nline two\r\n\n")
    assert read_prompt_file(f) == "\ufeffline one\r\nline two\r\n"       # only the last '\n' goes
    assert decode_prompt_bytes(b"a\r\n") == "a\r" and decode_prompt_bytes(b"a\n\n") == "a\n"
    assert decode_prompt_bytes(b"") == "" and decode_prompt_bytes(b"\r") == "\r"


def test_invalid_utf8_becomes_one_replacement_per_byte():
    # llama.cpp's unicode_cpts_from_utf8: every byte it cannot decode becomes U+FFFD
    assert decode_prompt_bytes(b"ok\xe4\xb8 \xff!") == "ok\ufffd\ufffd \ufffd!"


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_prompt_file(tmp_path / "nope.txt")


def test_golden_text_keeps_its_bom_and_crlf(shared_data_dir):
    raw = (shared_data_dir / "botchan.txt").read_bytes()
    text = read_prompt_file(shared_data_dir / "botchan.txt")
    assert raw.startswith(b"\xef\xbb\xbf") and text.startswith("\ufeff")
    assert text.encode("utf-8") == (raw[:-1] if raw.endswith(b"\n") else raw) and text.count("\r\n") >= 4287


@pytest.fixture(scope="module")
def smol_tokenizer(smollm2_path):
    from workbench.gguf import read_gguf
    from workbench.text.tokenizer import Tokenizer

    return Tokenizer.from_metadata(read_gguf(smollm2_path).metadata)


def test_crlf_and_bom_reach_the_tokenizer(smol_tokenizer, tmp_path):
    """A CRLF / BOM text of our own: the CRs and the BOM are tokens, as llama.cpp sees the file."""
    body = "Hello world.\nSecond line,\nthird line.\n"
    (tmp_path / "lf.txt").write_bytes(body.encode())
    (tmp_path / "crlf.txt").write_bytes(b"\xef\xbb\xbf" + body.replace("\n", "\r\n").encode())
    lf = smol_tokenizer.tokenize(read_prompt_file(tmp_path / "lf.txt"), add_special=True)
    crlf = smol_tokenizer.tokenize(read_prompt_file(tmp_path / "crlf.txt"), add_special=True)
    assert len(crlf) > len(lf)
    assert smol_tokenizer.detokenize(crlf).encode() == b"\xef\xbb\xbf" + body.replace("\n", "\r\n").encode()[:-1]


def _cli_cases():
    return [pytest.param(r, marks=() if r["n_ctx"] == 512 else (pytest.mark.slow,), id=f"n_ctx={r['n_ctx']}")
            for r in (golden_json("ppl_smollm2_q4_1_botchan_cli.json") or {}).get("results", [])]


@pytest.mark.parametrize("case", _cli_cases())
def test_perplexity_cli_prints_llama_perplexity_numbers(case, smollm2_path, shared_data_dir, capsys):
    """llama-perplexity -f botchan.txt on the raw file (BOM + 4,288 CRLFs) -c N -b N --chunks K: the same
    PPL and ± to the digits it prints."""
    n = case["n_ctx"]
    rc = main(["perplexity", "-m", str(smollm2_path), "-f", str(shared_data_dir / "botchan.txt"), "-c", str(n),
               "-b", str(n), "--chunks", str(case["n_chunk"]), "-t", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"Final estimate: PPL = {case['ppl']:.4f} +/- {case['ppl_err']:.5f}" in out, out


def test_perplexity_cli_refuses_a_batch_smaller_than_the_context(smollm2_path, shared_data_dir, capsys):
    rc = main(["perplexity", "-m", str(smollm2_path), "-f", str(shared_data_dir / "botchan.txt"), "-c", "512",
               "-b", "256"])
    assert rc == 1 and "--batch-size 256" in capsys.readouterr().err
