"""Importance matrices computed as llama-imatrix does (tools/imatrix/imatrix.cpp): the model runs over chunks of
a text while every matmul of the transformer blocks records the squares of what enters it (IMatrixCollector::
collect_imatrix). The result is a workbench.quant.imatrix.Imatrix, which that module loads and saves.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from workbench.eval.perplexity import chunk_batches
from workbench.llama import load
from workbench.llama.experts import route
from workbench.quant.imatrix import Imatrix, ImatrixError, importance

MIN_DENSE_ROWS = 16     # collect_imatrix skips a MUL_MAT of fewer tokens ("why are small batches ignored?")


# ------------------------------------------------------------------------------------ collecting activations

@njit(cache=True)
def accumulate_squares(acc, x, rows):
    """collect_imatrix's inner loop: for r in rows (in that order): acc[j] += x[r, j] * x[r, j], in float32.
    The product is rounded, then added (no fma): llama-imatrix's own code is built without -march=native, and
    this order is the one that reproduces its files bit for bit (the fused form does not)."""
    for r in rows:
        for j in range(x.shape[1]):
            acc[j] += x[r, j] * x[r, j]


class _Collector:
    """IMatrixCollector::collect_imatrix: sums of squares per column and rows seen, per matrix (one for a dense
    weight, one per expert of a stack), and the router's choice of the current layer (`selected`, (T, k))."""

    def __init__(self, n_expert_used: int):
        self.n_expert_used = n_expert_used
        self.in_sum2: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}
        self.selected: np.ndarray | None = None

    def _entry(self, name: str, n_mat: int, n_per_row: int) -> tuple[np.ndarray, np.ndarray]:
        if name not in self.in_sum2:
            self.in_sum2[name] = np.zeros((n_mat, n_per_row), np.float32)
            self.counts[name] = np.zeros(n_mat, np.int64)
        return self.in_sum2[name], self.counts[name]

    def dense(self, name: str, x: np.ndarray) -> None:
        """GGML_OP_MUL_MAT: every row of the ubatch in token order, if it has at least 16 tokens."""
        if len(x) < MIN_DENSE_ROWS:
            return
        sums, counts = self._entry(name, 1, x.shape[1])
        accumulate_squares(sums[0], np.ascontiguousarray(x, np.float32), np.arange(len(x)))
        counts[0] += len(x)

    def expert(self, name: str, n_expert: int, e: int, x: np.ndarray) -> None:
        """GGML_OP_MUL_MAT_ID, the rows of expert e: llama-imatrix walks ids slot by slot (idx), then token by
        token, so expert e adds the tokens that chose it first, then those that chose it second, ... Our MoE
        block hands each expert its tokens in token order (np.nonzero(selected == e)): reorder them."""
        tok, slot = np.nonzero(self.selected == e)
        if len(tok) != len(x):
            raise ImatrixError(f"{name}[{e}]: {len(x)} rows, but the router sent {len(tok)} tokens to this expert")
        sums, counts = self._entry(name, n_expert, x.shape[1])
        accumulate_squares(sums[e], np.ascontiguousarray(x, np.float32), np.argsort(slot, kind="stable"))
        counts[e] += len(x)


class _Recorder:
    """Stands in for a workbench.llama Weight: records what enters the product, then multiplies."""

    def __init__(self, weight, collector: _Collector, router: bool = False):
        self._weight, self._collector, self._router = weight, collector, router

    def __getattr__(self, name):
        return getattr(self._weight, name)

    def mul(self, x):
        self._collector.dense(self._weight.name, x)
        out = self._weight.mul(x)
        if self._router:  # the experts of this layer follow; note whom the router picks (as moe_ffn will)
            self._collector.selected = route(out, self._collector.n_expert_used)[0]
        return out

    def expert(self, e: int):
        return _ExpertRecorder(self._weight, e, self._collector)


class _ExpertRecorder:
    """Expert e of a stack: records its rows as part of the stack's MUL_MAT_ID."""

    def __init__(self, stack, e: int, collector: _Collector):
        self._stack, self._e, self._collector = stack, e, collector
        self._weight = stack.expert(e)

    def __getattr__(self, name):
        return getattr(self._weight, name)

    def mul(self, x):
        self._collector.expert(self._stack.name, self._stack.shape[0], self._e, x)
        return self._weight.mul(x)


# ------------------------------------------------------------------------------------ computing one

_LAYER_WEIGHTS = ("wq", "wk", "wv", "wo", "ffn_gate", "ffn_up", "ffn_down", "gate_inp", "gate_exps", "up_exps",
                  "down_exps")


def compute_imatrix(model_path, text: str, n_ctx: int = 512, n_chunks: int | None = None, dataset: str = "",
                    progress: bool = True, n_batch: int | None = None, process_output: bool = False,
                    parse_special: bool = False, n_threads: int | None = None) -> Imatrix:
    """llama-imatrix (tools/imatrix/imatrix.cpp, compute_imatrix): sums of squared activations entering each
    matmul of the transformer blocks, per column, per expert for MoE stacks, over non-overlapping n_ctx chunks
    of `text` (BOS in front of each chunk when the model adds one), n_batch tokens per decode.

    `text` must be the file as llama.cpp reads `-f` (workbench.text.files.read_prompt_file); `dataset` is what
    imatrix.datasets records (llama-imatrix: the -f path as given). n_batch defaults to n_ctx; llama-imatrix's
    default (2048) packs n_batch / n_ctx chunks into one batch as parallel sequences, which reorders its sums:
    that mode is not reproduced (pass -b equal to -c to llama-imatrix to compare)."""
    from tqdm.auto import tqdm

    n_batch = n_ctx if n_batch is None else int(n_batch)
    if n_ctx <= 0 or n_batch <= 0:
        raise ImatrixError(f"n_ctx={n_ctx} and n_batch={n_batch} must be positive")
    if n_batch >= 2 * n_ctx:
        raise ImatrixError(f"n_batch={n_batch} is at least twice n_ctx={n_ctx}: llama-imatrix would evaluate "
                           f"{n_batch // n_ctx} chunks per batch as parallel sequences, which is not reproduced; "
                           f"use n_batch <= n_ctx")
    n_batch = min(n_batch, n_ctx)                           # one sequence: n_batch = min(n_batch, n_kv)
    model = load(model_path, n_ctx=n_ctx, n_threads=n_threads, flash_attn=True)   # llama-imatrix's AUTO: on
    toks = np.asarray(model.tokenize(text, add_special=True, parse_special=parse_special), np.int32)
    if len(toks) < 2 * n_ctx:
        raise ImatrixError(f"you need at least {2 * n_ctx} tokens for a context of {n_ctx} tokens; "
                           f"the text tokenizes to only {len(toks)} tokens")
    n_chunk = len(toks) // n_ctx
    if n_chunks is not None and n_chunks >= 0:
        n_chunk = min(int(n_chunks), n_chunk)

    collector = _Collector(model.config.n_expert_used)
    for lw in model.weights.layers:
        for attr in _LAYER_WEIGHTS:
            w = getattr(lw, attr)
            if w is not None:
                setattr(lw, attr, _Recorder(w, collector, router=attr == "gate_inp"))
    if process_output and model.weights.output.name == "output.weight":   # not a tied token_embd
        model.weights.output = _Recorder(model.weights.output, collector)

    bos = model.bos_id if model.add_bos else None
    for _, batch in tqdm(chunk_batches(toks, n_ctx, n_chunk, bos), total=n_chunk, desc="imatrix",
                         disable=not progress):
        model.reset()                                   # llama_memory_clear before each chunk
        for s in range(0, n_ctx, n_batch):              # every token is an output: the last layer sees all
            model.eval(batch[s:s + n_batch], all_logits=process_output)

    for name, sums in collector.in_sum2.items():
        if not np.isfinite(sums).all():
            raise ImatrixError(f"non-finite values detected in {name}")
    counts = collector.counts
    chunk_count = max((int(c.max()) // n_ctx for c in counts.values()), default=0)   # m_last_chunk
    return Imatrix(importance(collector.in_sum2, counts), file="", datasets=[dataset] if dataset else [],
                   chunk_count=chunk_count, chunk_size=n_ctx, in_sum2=collector.in_sum2, counts=counts)
