"""One module per ggml type, named after it (q4_k.py for Q4_K) and found by name (workbench.quant.formats): each
holds the readable numpy reference and the numba kernel of its quantize / dequantize, bit for bit as ggml-quants.c."""
