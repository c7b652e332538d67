"""Weight handles: zero-copy views of the quantized blocks in the memory-mapped GGUF, per layer.

Nothing is dequantized at load: a `Weight` is (ggml type, rows of raw bytes) and multiplies through
`workbench.llama.matmul`. Tensor names and shapes are checked against what llama.cpp's
`llama_model_llama::load_arch_tensors` requires; a missing or misshaped tensor raises `WeightError` naming it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workbench.gguf import GGMLType, TensorNames, tensor_name

from workbench.llama.config import LlamaConfig
from workbench.llama.matmul import get_rows, matmul_raw


class WeightError(ValueError):
    """A tensor the model needs is missing or has the wrong shape; the message names the tensor."""


@dataclass(frozen=True)
class Weight:
    """A 2-D weight W (n_rows, n_per_row), or a stack of experts (n_expert, n_rows, n_per_row), as raw rows."""

    name: str
    type: GGMLType
    shape: tuple[int, ...]
    rows: np.ndarray            # uint8 (prod(shape[:-1]), row_bytes), a view of the file
    is_expert: bool = False     # one expert of a stack: multiplied as ggml_mul_mat_id
    quantize_act: bool = True   # activations as ggml converts them (vec_dot_type); False: exact float products

    @property
    def n_per_row(self) -> int:
        return self.shape[-1]

    def mul(self, x: np.ndarray) -> np.ndarray:
        """x (T, n_per_row) -> x @ W^T (T, n_rows), as ggml_mul_mat(W, x)."""
        return matmul_raw(self.rows, self.type, self.n_per_row, x, self.quantize_act, self.name, self.is_expert)

    def expert(self, e: int) -> "Weight":
        """The rows of expert e of a (n_expert, n_rows, n_per_row) stack (a view, no copy)."""
        n = self.shape[1]
        return Weight(f"{self.name}[{e}]", self.type, self.shape[1:], self.rows[e * n:(e + 1) * n], True,
                      self.quantize_act)

    def get_rows(self, ids: np.ndarray) -> np.ndarray:
        """Float rows `ids` (ggml_get_rows): the token embedding of a batch."""
        return get_rows(self.rows, self.type, self.n_per_row, ids)

    def dense(self) -> np.ndarray:
        """All rows as float32 (small tensors only: norms, router)."""
        return self.get_rows(np.arange(self.rows.shape[0])).reshape(self.shape)


@dataclass
class LayerWeights:
    attn_norm: np.ndarray        # (n_embd,)
    wq: Weight                   # (n_head * head_dim, n_embd)
    wk: Weight                   # (n_head_kv * head_dim, n_embd)
    wv: Weight                   # (n_head_kv * head_dim, n_embd)
    wo: Weight                   # (n_embd, n_head * head_dim)
    ffn_norm: np.ndarray         # (n_embd,)
    ffn_gate: Weight | None = None       # dense: (n_ff, n_embd)
    ffn_up: Weight | None = None         # dense: (n_ff, n_embd)
    ffn_down: Weight | None = None       # dense: (n_embd, n_ff)
    gate_inp: Weight | None = None       # MoE router: (n_expert, n_embd)
    gate_exps: Weight | None = None      # MoE: (n_expert, n_ff, n_embd)
    up_exps: Weight | None = None        # MoE: (n_expert, n_ff, n_embd)
    down_exps: Weight | None = None      # MoE: (n_expert, n_embd, n_ff)


@dataclass
class ModelWeights:
    token_embd: Weight           # (n_vocab, n_embd)
    output_norm: np.ndarray      # (n_embd,)
    output: Weight               # (n_vocab, n_embd); token_embd itself when tied (no output.weight)
    rope_freqs: np.ndarray | None  # (n_rot/2,) llama3 frequency factors, or None
    layers: list[LayerWeights]

    @classmethod
    def from_gguf(cls, gf, cfg: LlamaConfig, quantize_act: bool = True) -> "ModelWeights":
        """Every weight of the model, checked against cfg; quantize_act is settled here, once for all weights."""
        tensors = {t.name: t for t in gf.tensors}
        where = gf.path or "GGUF file"

        def get(template, shape, bid=None, required=True):
            name = tensor_name(template, bid)
            t = tensors.get(name)
            if t is None:
                if required:
                    raise WeightError(f"{where}: missing tensor {name!r} (expected shape {shape})")
                return None
            if tuple(t.shape) != tuple(shape):
                raise WeightError(f"{where}: tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(shape)}")
            if t.type.block_size > 1 and t.n_per_row % t.type.block_size:
                raise WeightError(f"{where}: tensor {name!r}: row of {t.n_per_row} is not a multiple of "
                                  f"the {t.type.name} block size {t.type.block_size}")
            return Weight(name, t.type, tuple(t.shape), t.rows(), quantize_act=quantize_act)

        def vec(template, n, bid=None, required=True):
            w = get(template, (n,), bid, required)
            return None if w is None else w.dense()

        E, F, D, H = cfg.n_embd, cfg.n_ff, cfg.head_dim, cfg.n_head
        token_embd = get(TensorNames.TOKEN_EMBD, (cfg.n_vocab, E))
        output = get(TensorNames.OUTPUT, (cfg.n_vocab, E), required=False) or token_embd
        layers = []
        for i in range(cfg.n_layer):
            lw = LayerWeights(
                attn_norm=vec(TensorNames.ATTN_NORM, E, i),
                wq=get(TensorNames.ATTN_Q, (H * D, E), i), wk=get(TensorNames.ATTN_K, (cfg.n_embd_kv, E), i),
                wv=get(TensorNames.ATTN_V, (cfg.n_embd_kv, E), i), wo=get(TensorNames.ATTN_OUT, (E, H * D), i),
                ffn_norm=vec(TensorNames.FFN_NORM, E, i))
            if cfg.is_moe:
                X = cfg.n_expert
                lw.gate_inp = get(TensorNames.FFN_GATE_INP, (X, E), i)
                lw.gate_exps = get(TensorNames.FFN_GATE_EXPS, (X, F, E), i)
                lw.up_exps = get(TensorNames.FFN_UP_EXPS, (X, F, E), i)
                lw.down_exps = get(TensorNames.FFN_DOWN_EXPS, (X, E, F), i)
            else:
                lw.ffn_gate = get(TensorNames.FFN_GATE, (F, E), i)
                lw.ffn_up = get(TensorNames.FFN_UP, (F, E), i)
                lw.ffn_down = get(TensorNames.FFN_DOWN, (E, F), i)
            layers.append(lw)
        return cls(token_embd=token_embd, output_norm=vec(TensorNames.OUTPUT_NORM, E), output=output,
                   rope_freqs=vec(TensorNames.ROPE_FREQS, cfg.n_rot // 2, required=False), layers=layers)
