"""GGUF v3, the file format only: read (mmap, zero-copy), write (streaming, atomic), dump. Imports nothing else
of the workbench; conversion to and from Hugging Face is workbench.hf."""
from workbench.gguf.constants import GGMLType, GGUFValueType, Keys, LlamaFileType, TensorNames, TokenType, key, tensor_name
from workbench.gguf.reader import GGUFError, GGUFFile, Metadata, TensorInfo, read_gguf
from workbench.gguf.writer import GGUFWriter, new_metadata, write_gguf

__all__ = [
    "GGMLType", "GGUFValueType", "Keys", "LlamaFileType", "TensorNames", "TokenType", "key", "tensor_name",
    "GGUFError", "GGUFFile", "Metadata", "TensorInfo", "read_gguf", "GGUFWriter", "new_metadata", "write_gguf",
]
