"""Text files read the way llama.cpp's tools read `-f FILE`, so the same file gives the same tokens.

common/arg.cpp's `read_file` takes the bytes as they are (std::ifstream in binary-equivalent mode on POSIX: a
UTF-8 BOM and every CR stay), and the `-f` handler drops one trailing '\\n'. Python's `Path.read_text` would
instead turn every CRLF into LF (universal newlines), which scores another text: botchan.txt has 4,288 CRLFs
and a BOM, and its perplexity moves from 26.01 to 28.x at n_ctx 512.
The tokenizer then sees the bytes decoded as UTF-8; an invalid byte becomes U+FFFD, one per byte, as
llama.cpp's unicode_cpts_from_utf8 does.
"""
from __future__ import annotations

import codecs
from pathlib import Path


def _one_replacement_per_byte(err: UnicodeDecodeError):
    return "\ufffd", err.start + 1


codecs.register_error("workbench.llama_cpp_replace", _one_replacement_per_byte)


def decode_utf8(raw: bytes) -> str:
    """Bytes as llama.cpp's tokenizer sees them: UTF-8, one U+FFFD for each byte it cannot decode."""
    return raw.decode("utf-8", errors="workbench.llama_cpp_replace")


def prompt_bytes(raw: bytes) -> bytes:
    """What llama.cpp's `-f` keeps of a file's bytes: all but one trailing '\\n' (BOM and CR kept)."""
    return raw[:-1] if raw.endswith(b"\n") else raw


def decode_prompt_bytes(raw: bytes) -> str:
    """The string llama.cpp's `-f` gives for these file bytes: one trailing '\\n' dropped, BOM and CR kept."""
    return decode_utf8(prompt_bytes(raw))


def read_prompt_bytes(path) -> bytes:
    """A file's bytes as llama-perplexity / llama-imatrix / llama-cli keep them for `-f path`."""
    path = Path(path)
    try:
        return prompt_bytes(path.read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"error: failed to open file '{path}'") from None


def read_prompt_file(path) -> str:
    """The contents of a text file as llama-perplexity / llama-imatrix / llama-cli see `-f path`."""
    return decode_utf8(read_prompt_bytes(path))
