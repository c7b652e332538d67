"""GGUF v3: read (mmap, zero-copy), write (streaming, atomic), dump; conversion to and from Hugging Face."""
from .constants import GGMLType, GGUFValueType, Keys, LlamaFileType, TensorNames, TokenType, key, tensor_name
from .reader import GGUFError, GGUFFile, Metadata, TensorInfo, read_gguf
from .writer import GGUFWriter, new_metadata, write_gguf


def convert_hf(model_dir, outfile, outtype="auto", **kwargs):
    """Hugging Face checkpoint -> GGUF, as llama.cpp's convert_hf_to_gguf.py (see workbench.gguf.convert)."""
    from .convert import convert_hf as _convert

    return _convert(model_dir, outfile, outtype=outtype, **kwargs)


def export_hf(gguf_path, out_dir, dtype="f16", **kwargs):
    """GGUF -> Hugging Face folder (see workbench.gguf.export)."""
    from .export import export_hf as _export

    return _export(gguf_path, out_dir, dtype=dtype, **kwargs)

__all__ = [
    "GGMLType", "GGUFValueType", "Keys", "LlamaFileType", "TensorNames", "TokenType", "key", "tensor_name",
    "GGUFError", "GGUFFile", "Metadata", "TensorInfo", "read_gguf", "GGUFWriter", "new_metadata", "write_gguf",
    "convert_hf", "export_hf",
]
