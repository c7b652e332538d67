"""Text as llama.cpp handles it: the GGUF tokenizer (SPM, byte-level BPE and their pre-tokenizers), chat
templates, and text files read byte for byte as its tools read `-f FILE`."""
