"""GGUF v3: read (mmap, zero-copy), write (streaming, atomic), dump; conversion to and from Hugging Face."""
from .constants import GGMLType, GGUFValueType, Keys, LlamaFileType, TensorNames, TokenType, key, tensor_name
from .reader import GGUFError, GGUFFile, Metadata, TensorInfo, read_gguf
from .writer import GGUFWriter, new_metadata, write_gguf

__all__ = [
    "GGMLType", "GGUFValueType", "Keys", "LlamaFileType", "TensorNames", "TokenType", "key", "tensor_name",
    "GGUFError", "GGUFFile", "Metadata", "TensorInfo", "read_gguf", "GGUFWriter", "new_metadata", "write_gguf",
]
