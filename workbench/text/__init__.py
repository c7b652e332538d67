"""Text as llama.cpp handles it: the GGUF tokenizer (SPM, byte-level BPE with its pre-tokenizers, WordPiece for
BERT vocabularies, gemma-4's; `unicode_data` holds llama.cpp's character tables), chat templates and their
capabilities, grammars and JSON schemas for constrained decoding, and text files read byte for byte as its
tools read `-f FILE`."""
