"""Which file fits my machine: per-tensor types, file size, bits per weight and memory for a llama-family model
and any llama-quantize ftype, before downloading anything.

    plan("SmolLM2.F16.gguf", ftypes=["Q4_K_M", "Q8_0"], n_ctx=4096)     # a GGUF: only its header is read
    plan("models/Llama-3.1-70B/config.json", ftypes=["Q4_K_M"])          # a HF folder or its config.json
    plan("n_embd=4096,n_ff=14336,n_layer=32,n_head=32,n_head_kv=8,n_vocab=32000")  # a bare shape

Types: `workbench.quant.mixes.plan_types`, llama-quantize's own rules (llama_tensor_get_type, fallbacks for
rows that are not a multiple of 256). File bytes: the GGUF header as llama-quantize writes it (the source
metadata, split keys dropped, general.quantization_version and general.file_type moved to the end:
`quantize_model`) + every tensor's data padded to the alignment. From a GGUF the header is exact; from a
HF folder the converter's own metadata functions give it exactly when the tokenizer files are there; from
config.json alone the tokenizer arrays are estimated (TOKENIZER_BYTES_*). Memory: see `memory`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from workbench.gguf.constants import GGMLType as T, GGUFValueType as VT, Keys, LlamaFileType as F, TensorNames, key, \
    tensor_name
from workbench.gguf.reader import Metadata, TensorInfo, read_gguf
from workbench.gguf.writer import encode_kv
from workbench.hf.config import CONFIG_DEFAULTS, SUPPORTED_ARCHITECTURES, hparam_metadata, load_hparams, rope_parameters
from workbench.hf.convert import build_metadata
from workbench.quant.mixes import DEFAULT_TYPE, ModelShape, plan_types
from workbench.quant.quantize_model import quantized_metadata

MiB, GB = 1 << 20, 10 ** 9
# the ftypes a plan covers by default: the 17 of the SmolLM2 goldens plus the low-bit IQ family
DEFAULT_FTYPES = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0",
                  "IQ4_XS", "IQ4_NL", "Q3_K_L", "Q3_K_M", "Q3_K_S", "IQ3_M", "IQ3_XXS", "Q2_K", "Q2_K_S", "IQ2_M",
                  "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S")
KV_TYPES = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0, "q4_0": T.Q4_0, "q4_1": T.Q4_1,
            "iq4_nl": T.IQ4_NL, "q5_0": T.Q5_0, "q5_1": T.Q5_1}

# --- measured constants (bench/bench_memory.py, AMD EPYC, AVX2, 2 cores; see its docstring) ----------------
LLAMA_CPP_FLOOR = 44 * MiB        # python + llama_cpp imported (libllama, ggml-cpu), before any model
LLAMA_CPP_PER_TOKEN = 400         # bytes per vocabulary entry: llama_vocab's id_to_token, token->piece cache, maps
WORKBENCH_FLOOR = 170 * MiB       # python + numpy + numba + LLVM + the JIT kernels loaded from numba's cache
N_UBATCH = 512                    # llama.cpp's default micro-batch (llama_context_default_params)
# tensors ggml-cpu repacks on x86 AVX2 into an extra buffer (ggml_repack_get_optimal_repack_type) when ne[1] % 8
REPACK_AVX2 = (T.Q4_0, T.Q4_K, T.IQ4_NL, T.MXFP4)
# config.json alone: tokenizer.* arrays, from the SmolLM2 (BPE) and Mistral-7B (SentencePiece) GGUFs' headers
TOKENIZER_BYTES_SPM = 8 + 6 + 4 + 4   # per token: string length + mean text + score f32 + type i32
TOKENIZER_BYTES_BPE = 8 + 7 + 4 + 8 + 11  # per token: string + type, and about one merge (length + text)
SPM_VOCABS = (32000, 32001, 32002, 32768, 55296)  # Llama-1/2, Mistral, Chinese-LLaMA-2 (SentencePiece)


class PlanError(ValueError):
    """A shape that cannot be planned; the message names the field."""


@dataclass(frozen=True)
class Shape:
    """A llama-family model's dimensions (what a plan needs)."""

    n_embd: int                  # hidden size
    n_ff: int                    # feed-forward size (per expert)
    n_layer: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    n_expert: int = 0            # 0: dense
    n_expert_used: int = 0
    n_ctx_train: int = 4096
    tied: bool = False           # no output.weight: token_embd is the output matrix
    head_dim: int = 0            # 0: n_embd // n_head
    rope_freqs: bool = False     # llama3 rope scaling adds a rope_freqs tensor
    arch: str = "llama"

    def checked(self) -> "Shape":
        if self.arch != "llama":
            raise PlanError(f"arch={self.arch!r}: only the llama family (Llama, Mistral, Mixtral) is planned")
        for f in ("n_embd", "n_ff", "n_layer", "n_head", "n_head_kv", "n_vocab", "n_ctx_train"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise PlanError(f"{f}={v!r}: must be a positive integer")
        if not self.head_dim and self.n_embd % self.n_head:
            raise PlanError(f"n_head={self.n_head} does not divide n_embd={self.n_embd}")
        if self.n_head % self.n_head_kv:
            raise PlanError(f"n_head_kv={self.n_head_kv} does not divide n_head={self.n_head}")
        if self.n_expert < 0 or self.n_expert == 1 or (self.n_expert and not 0 < self.n_expert_used <= self.n_expert):
            raise PlanError(f"n_expert={self.n_expert}, n_expert_used={self.n_expert_used}: need 0, or >= 2 experts "
                            f"with 1 <= n_expert_used <= n_expert")
        return replace(self, head_dim=self.head_dim or self.n_embd // self.n_head)

    @property
    def n_embd_kv(self) -> int:
        return self.n_head_kv * (self.head_dim or self.n_embd // self.n_head)


FIELD_ALIASES = {"hidden_size": "n_embd", "intermediate_size": "n_ff", "num_hidden_layers": "n_layer",
                 "num_attention_heads": "n_head", "num_key_value_heads": "n_head_kv", "vocab_size": "n_vocab",
                 "num_local_experts": "n_expert", "num_experts_per_tok": "n_expert_used",
                 "max_position_embeddings": "n_ctx_train", "tie_word_embeddings": "tied"}


def shape_from_dict(d: dict) -> Shape:
    """From n_embd=..., ... (or the config.json names); n_head_kv defaults to n_head."""
    d = {FIELD_ALIASES.get(k, k): v for k, v in d.items()}
    unknown = set(d) - set(Shape.__dataclass_fields__)
    if unknown:
        raise PlanError(f"unknown shape field(s) {sorted(unknown)}; known: {list(Shape.__dataclass_fields__)}")
    for f in ("n_embd", "n_ff", "n_layer", "n_head", "n_vocab"):
        if d.get(f) is None:
            raise PlanError(f"{f} missing from the shape")
    if d.get("n_head_kv") is None:
        d["n_head_kv"] = d["n_head"]
    d["tied"] = str(d.get("tied", False)).lower() in ("1", "true", "yes")
    d = {k: (int(v) if k not in ("tied", "arch", "rope_freqs") and isinstance(v, (str, float)) else v)
         for k, v in d.items()}
    return Shape(**d).checked()


def shape_from_config(hp: dict, where: str = "config.json") -> Shape:
    """From a HF config.json (Llama / Mistral / Mixtral), with transformers' defaults for missing keys."""
    arch = (hp.get("architectures") or [None])[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise PlanError(f"{where}: architectures={arch!r} is not planned (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    family = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "MixtralForCausalLM": "mixtral"}[arch]
    hp = {**{k: v for k, v in CONFIG_DEFAULTS[family].items() if k != "vocab_size"}, **hp}
    if hp.get("vocab_size") is None:
        raise PlanError(f"{where}: vocab_size missing (the vocabulary size decides token_embd and output)")
    d = {k: hp.get(k) for k in FIELD_ALIASES if k in hp or k == "num_key_value_heads"}
    if family != "mixtral":
        d.pop("num_local_experts", None), d.pop("num_experts_per_tok", None)
    d["rope_freqs"] = str(rope_parameters(hp).get("rope_type", "")).lower() == "llama3"
    if hp.get("head_dim"):
        d["head_dim"] = hp["head_dim"]
    try:
        return shape_from_dict(d)
    except PlanError as e:
        raise PlanError(f"{where}: {e}") from None


def shape_from_metadata(md) -> Shape:
    """From GGUF metadata (llama.* keys)."""
    arch = md.get(Keys.General.ARCHITECTURE)
    if arch != "llama":
        raise PlanError(f"general.architecture={arch!r}: only 'llama' is planned")
    L, A = Keys.LLM, Keys.Attention
    fields = {"n_embd": L.EMBEDDING_LENGTH, "n_ff": L.FEED_FORWARD_LENGTH, "n_layer": L.BLOCK_COUNT,
              "n_head": A.HEAD_COUNT, "n_head_kv": A.HEAD_COUNT_KV, "n_ctx_train": L.CONTEXT_LENGTH,
              "n_expert": L.EXPERT_COUNT, "n_expert_used": L.EXPERT_USED_COUNT, "head_dim": A.KEY_LENGTH}
    d = {f: md.get(key(k, arch)) for f, k in fields.items() if md.get(key(k, arch)) is not None}
    d["n_vocab"] = md.get(key(L.VOCAB_SIZE, arch)) or len(md.get(Keys.Tokenizer.LIST, []) or []) or None
    return shape_from_dict(d)


def model_tensors(s: Shape, src: T = T.F16) -> list[TensorInfo]:
    """The tensors convert_hf_to_gguf writes for this shape (1-D and norms F32, router F32, the rest `src`)."""
    N = TensorNames
    out = [TensorInfo(tensor_name(N.ROPE_FREQS), T.F32, (s.head_dim // 2,))] if s.rope_freqs else []
    out.append(TensorInfo(tensor_name(N.TOKEN_EMBD), src, (s.n_vocab, s.n_embd)))
    out.append(TensorInfo(tensor_name(N.OUTPUT_NORM), T.F32, (s.n_embd,)))
    if not s.tied:
        out.append(TensorInfo(tensor_name(N.OUTPUT), src, (s.n_vocab, s.n_embd)))
    q, kv = s.n_head * s.head_dim, s.n_embd_kv
    for i in range(s.n_layer):
        out += [TensorInfo(tensor_name(N.ATTN_NORM, i), T.F32, (s.n_embd,)),
                TensorInfo(tensor_name(N.ATTN_Q, i), src, (q, s.n_embd)),
                TensorInfo(tensor_name(N.ATTN_K, i), src, (kv, s.n_embd)),
                TensorInfo(tensor_name(N.ATTN_V, i), src, (kv, s.n_embd)),
                TensorInfo(tensor_name(N.ATTN_OUT, i), src, (s.n_embd, q)),
                TensorInfo(tensor_name(N.FFN_NORM, i), T.F32, (s.n_embd,))]
        if s.n_expert:
            e = s.n_expert
            out += [TensorInfo(f"blk.{i}.ffn_gate_inp.weight", T.F32, (e, s.n_embd)),
                    TensorInfo(f"blk.{i}.ffn_gate_exps.weight", src, (e, s.n_ff, s.n_embd)),
                    TensorInfo(f"blk.{i}.ffn_down_exps.weight", src, (e, s.n_embd, s.n_ff)),
                    TensorInfo(f"blk.{i}.ffn_up_exps.weight", src, (e, s.n_ff, s.n_embd))]
        else:
            out += [TensorInfo(tensor_name(N.FFN_GATE, i), src, (s.n_ff, s.n_embd)),
                    TensorInfo(tensor_name(N.FFN_DOWN, i), src, (s.n_embd, s.n_ff)),
                    TensorInfo(tensor_name(N.FFN_UP, i), src, (s.n_ff, s.n_embd))]
    return out


@dataclass
class Source:
    """What a plan starts from: the shape, the source tensors, and the header metadata bytes (exact or not)."""

    shape: Shape
    tensors: list
    metadata: Metadata | None      # exact source metadata (GGUF, or a HF folder with its tokenizer)
    extra_header: int = 0          # estimated bytes of metadata we could not build (tokenizer arrays)
    alignment: int = 32
    exact_header: bool = True
    name: str = ""
    kv_bytes: int | None = None    # encoded metadata bytes after llama-quantize's edits (the same for every ftype)


def _load_source(model) -> Source:
    if isinstance(model, Source):
        return model
    if isinstance(model, Shape):
        return _config_source(model.checked(), None, "shape")
    if isinstance(model, dict):
        s = shape_from_config(model) if "architectures" in model else shape_from_dict(model)
        return _config_source(s, None, "shape")
    text = os.fspath(model)
    p = Path(text)
    if p.is_dir() or p.name == "config.json":
        folder = p if p.is_dir() else p.parent
        cfg = folder / "config.json"
        if not cfg.is_file():
            raise FileNotFoundError(f"{folder}: no config.json")
        return _config_source(shape_from_config(json.loads(cfg.read_text()), str(cfg)), folder, folder.name)
    if p.is_file():
        gf = read_gguf(p)  # maps the file: only the header pages are read
        try:
            shape = shape_from_metadata(gf.metadata)
            tensors = [TensorInfo(t.name, t.type, t.shape) for t in gf.tensors]
            return Source(shape, tensors, gf.metadata.copy(), 0, gf.alignment, True, p.name)
        finally:
            gf.close()
    if "=" in text:
        d = dict(kv.split("=", 1) for kv in text.replace(" ", "").split(",") if kv)
        return _config_source(shape_from_dict(d), None, "shape")
    raise FileNotFoundError(f"{text}: not a GGUF file, HF folder, config.json or key=value shape")


def _config_source(s: Shape, folder: Path | None, name: str) -> Source:
    """Metadata as convert_hf_to_gguf would write it: exact for the hyper-parameters (and for the tokenizer
    and general.* keys when the folder has the files); estimated for a tokenizer we cannot see."""
    tensors = model_tensors(s)
    if folder is not None and ((folder / "tokenizer.model").is_file() or (folder / "tokenizer.json").is_file()):
        hp = load_hparams(folder)
        return Source(s, tensors, build_metadata(folder, hp, F.F16, tensors), 0, 32, True, name)
    hp = {"num_hidden_layers": s.n_layer, "max_position_embeddings": s.n_ctx_train, "hidden_size": s.n_embd,
          "intermediate_size": s.n_ff, "num_attention_heads": s.n_head, "num_key_value_heads": s.n_head_kv,
          "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "head_dim": s.head_dim, "vocab_size": s.n_vocab,
          "_family": "mixtral" if s.n_expert else "llama", "num_local_experts": s.n_expert,
          "num_experts_per_tok": s.n_expert_used}
    md = Metadata()
    md.set(Keys.General.ARCHITECTURE, "llama", VT.STRING)
    md.set(Keys.General.TYPE, "model", VT.STRING)
    md.set(Keys.General.NAME, name[:40], VT.STRING)
    for k, v, t in hparam_metadata(hp, F.F16):
        md.set(k, v, t)
    spm = s.n_vocab in SPM_VOCABS
    per_token = TOKENIZER_BYTES_SPM if spm else TOKENIZER_BYTES_BPE
    extra = s.n_vocab * per_token + 400  # + tokenizer scalars (model, pre, bos/eos ids, chat template is not known)
    return Source(s, tensors, md, extra, 32, False, name)


def header_bytes(md, tensors, alignment: int, kv_bytes: int | None = None) -> int:
    """GGUF header as gguf.cpp / GGUFWriter writes it: magic, counts, KVs, tensor infos, padding."""
    if kv_bytes is None:
        kv_bytes = sum(len(encode_kv(k, v, md.types.get(k))) for k, v in md.items())
    n = 4 + 4 + 8 + 8 + kv_bytes
    n += sum(8 + len(t.name.encode()) + 4 + 8 * len(t.shape) + 4 + 8 for t in tensors)
    return -(-n // alignment) * alignment


def ggml_name(t: T) -> str:
    """ggml_type_name: lower case, k-quants with a capital K ("q4_K")."""
    return t.name.lower().replace("_k", "_K")


def kv_cache_bytes(s: Shape, n_ctx: int, kv_type: str = "f16", pad: int = 256) -> int:
    """llama_kv_cache: K and V of (n_ctx padded to 256) cells x n_embd_kv per layer (llama_context pads n_ctx)."""
    if kv_type not in KV_TYPES:
        raise PlanError(f"kv_type={kv_type!r}: expected one of {list(KV_TYPES)}")
    cells = -(-n_ctx // pad) * pad
    return 2 * s.n_layer * KV_TYPES[kv_type].nbytes((cells, s.n_embd_kv))


def compute_buffer_bytes(s: Shape, n_ctx: int) -> int:
    """llama.cpp's CPU compute buffer (sched_reserve, no flash attention): the largest of the logits of a full
    micro-batch and the attention scores at a full context, plus a few activations. Fitted to the sizes
    llama.cpp logs for SmolLM2 at n_ctx 512..8192 (within 2%)."""
    cells = -(-n_ctx // 256) * 256
    logits = N_UBATCH * (s.n_vocab + 2 * s.n_embd) * 4
    attn = N_UBATCH * cells * (s.n_head + 1) * 4 + N_UBATCH * 2 * (s.n_embd + s.n_ff) * 4
    return max(logits, attn)


def memory(s: Shape, tensors, types, n_ctx: int, kv_type: str = "f16", repack: bool = True) -> dict:
    """Bytes to run the file, per engine. Resident = what a loaded model holds after a short prompt:
      llama.cpp: the mapped weights (all touched: mmap + populate) + on x86 AVX2 a repacked copy of the Q4_0 /
        Q4_K / IQ4_NL matrices (rows % 8 == 0, not token_embd) + the KV cache (zeroed at creation, so resident)
        + runtime floor (LLAMA_CPP_FLOOR + LLAMA_CPP_PER_TOKEN per vocabulary entry). Its compute buffer is
        reserved but only touched as prompts use it: `llama_peak` adds it (a full micro-batch at a full context).
      workbench: the mapped weights (zero-copy) + the KV cache when full ((n_layer, n_ctx, n_embd_kv) per K and
        V, lazily mapped) + WORKBENCH_FLOOR. Activations of a short prompt are a few MiB and left out.
    Both leave out the OS page cache beyond the mapping, other processes, and GPU offload."""
    weights = sum(t.nbytes for t in tensors)
    repacked = 0
    if repack:
        repacked = sum(ty.nbytes(t.shape) for t, ty in zip(tensors, types)
                       if ty in REPACK_AVX2 and len(t.shape) >= 2 and t.shape[-2] % 8 == 0
                       and t.name != "token_embd.weight")
    kv_ll = kv_cache_bytes(s, n_ctx, kv_type)
    kv_wb = kv_cache_bytes(s, n_ctx, "f32" if kv_type == "f32" else "f16", pad=1)
    compute = compute_buffer_bytes(s, n_ctx)
    floor_ll = LLAMA_CPP_FLOOR + LLAMA_CPP_PER_TOKEN * s.n_vocab
    llama = floor_ll + weights + repacked + kv_ll
    # llama_need: what must fit to run without paging: the mapped originals of repacked tensors are clean
    # page cache the kernel may drop (llama.cpp reads them once), the compute buffer is needed in full
    return {"weights": weights, "repacked": repacked, "kv_cache": kv_ll, "compute_buffer": compute,
            "llama_floor": floor_ll, "llama_cpp": llama, "llama_peak": llama + compute,
            "llama_need": llama + compute - repacked,
            "workbench_kv": kv_wb, "workbench_floor": WORKBENCH_FLOOR, "workbench": WORKBENCH_FLOOR + weights + kv_wb}


def _plan_one(src: Source, ftype, n_ctx: int, kv_type: str, has_imatrix: bool, repack: bool) -> dict:
    ft = F.parse(ftype)
    if ft not in DEFAULT_TYPE:
        raise PlanError(f"ftype {ftype!r} is not a llama-quantize output type")
    s = src.shape
    ms = ModelShape("llama", s.n_layer, s.n_head, s.n_head_kv, s.n_expert)
    plans = plan_types(src.tensors, ms, ft, has_imatrix=has_imatrix)
    by_name = {t.name: t for t in src.tensors}
    out_tensors = [TensorInfo(p.name, p.dst_type, by_name[p.name].shape) for p in plans]
    data = sum(-(-t.nbytes // src.alignment) * src.alignment for t in out_tensors)
    if src.kv_bytes is None:
        md = quantized_metadata(src.metadata, ft)
        src.kv_bytes = sum(len(encode_kv(k, v, md.types.get(k))) for k, v in md.items())
    head = header_bytes(None, out_tensors, src.alignment, src.kv_bytes)
    if src.extra_header:
        head = -(-(head + src.extra_header) // src.alignment) * src.alignment
    n_params = sum(t.n_elements for t in out_tensors)
    mem = memory(s, out_tensors, [t.type for t in out_tensors], n_ctx, kv_type, repack)
    return {"ftype": ft.name if ft != F.ALL_F32 else "F32", "file_bytes": head + data, "header_bytes": head,
            "header_exact": src.exact_header, "n_params": n_params,
            "bpw": 8 * sum(t.nbytes for t in out_tensors) / n_params,
            "needs_imatrix": any(p.requires_imatrix for p in plans), "n_ctx": n_ctx, "kv_type": kv_type,
            "memory": mem,
            "tensors": [{"name": t.name, "type": ggml_name(t.type), "shape": list(t.shape)} for t in out_tensors]}


def plan(model, ftypes=DEFAULT_FTYPES, n_ctx: int = 4096, kv_type: str = "f16", has_imatrix: bool = False,
         repack: bool = True) -> list[dict]:
    """One dict per ftype: ftype, file_bytes, header_bytes, bpw, n_params, needs_imatrix, memory (bytes per
    part and per engine, see `memory`), tensors (name, ggml type name, numpy shape). `model`: a GGUF path
    (header only), a HF folder or config.json, a Shape, a dict or a "k=v,..." string."""
    if isinstance(ftypes, str):
        ftypes = [ftypes]
    if not isinstance(n_ctx, int) or n_ctx < 1:
        raise PlanError(f"n_ctx={n_ctx!r}: must be a positive integer")
    src = _load_source(model)
    return [_plan_one(src, ft, n_ctx, kv_type, has_imatrix, repack) for ft in ftypes]


def plan_table(model, ftypes=DEFAULT_FTYPES, n_ctx: int = 4096, kv_type: str = "f16", has_imatrix: bool = False):
    """The plan as a DataFrame in GB (10^9 bytes, as model cards use): file, bpw, memory per engine."""
    import pandas as pd

    rows = []
    for r in plan(model, ftypes, n_ctx, kv_type, has_imatrix):
        m = r["memory"]
        rows.append({"ftype": r["ftype"], "file_GB": r["file_bytes"] / GB, "bpw": r["bpw"],
                     "kv_GB": m["kv_cache"] / GB, "llama_cpp_GB": m["llama_cpp"] / GB,
                     "llama_need_GB": m["llama_need"] / GB, "workbench_GB": m["workbench"] / GB,
                     "needs_imatrix": r["needs_imatrix"]})
    return pd.DataFrame(rows)


def best_ftype(model, mem_gb: float, n_ctx: int = 4096, ftypes=DEFAULT_FTYPES, kv_type: str = "f16",
               engine: str = "llama_need") -> dict | None:
    """The largest file (most bits) whose memory for `engine` at n_ctx fits in mem_gb; None if none fits."""
    fits = [r for r in plan(model, ftypes, n_ctx, kv_type) if r["memory"][engine] <= mem_gb * GB]
    return max(fits, key=lambda r: r["file_bytes"], default=None)


def max_context(model, ftype: str, mem_gb: float, kv_type: str = "f16", engine: str = "llama_need",
                limit: int | None = None) -> int:
    """The longest context (a multiple of 256, at most n_ctx_train unless `limit`) that fits in mem_gb; 0 if none."""
    src = _load_source(model)
    hi = limit or src.shape.n_ctx_train
    fits = lambda c: _plan_one(src, ftype, c, kv_type, False, True)["memory"][engine] <= mem_gb * GB  # noqa: E731
    lo, hi = 0, hi // 256
    while lo < hi:  # memory grows with the context: bisect on multiples of 256
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid * 256) else (lo, mid - 1)
    return lo * 256


def memory_by_context(model, ftypes=("Q8_0", "Q4_K_M", "Q2_K"), contexts=None, kv_type: str = "f16",
                      engine: str = "llama_need"):
    """Long DataFrame: ftype, n_ctx, GB (memory for `engine`), for the plot."""
    import pandas as pd

    src = _load_source(model)
    contexts = contexts or [c for c in (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
                            if c <= max(src.shape.n_ctx_train, 512)]
    return pd.DataFrame([{"ftype": ft, "n_ctx": c, "GB": _plan_one(src, ft, c, kv_type, False, True)["memory"][engine] / GB}
                         for ft in ftypes for c in contexts])


def plot_memory_by_context(df, ram_gb: float | None = None, title: str = ""):
    """Memory vs context per ftype (log-2 context axis), the machine's RAM as a horizontal line."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for ft, g in df.groupby("ftype", sort=False):
        ax.plot(g["n_ctx"], g["GB"], marker="o", label=ft)
    if ram_gb:
        ax.axhline(ram_gb, color="k", ls="--", lw=1)
        ax.text(df["n_ctx"].min(), ram_gb, f" RAM {ram_gb:.0f} GB", va="bottom")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("memory (GB)")
    ax.set_title(title or "memory to run vs context")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def machine_ram_gb() -> float:
    """Physical memory of this machine in GB (10^9)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB



# Published figures (GB = 10^9 bytes) to set beside a plan. TheBloke's "max RAM" = file + 2.5 GB (his README's
# rule, not a measurement); the Chinese-Mixtral README's size table: only the two ends are reproduced here.
MIXTRAL_8X7B = "n_embd=4096,n_ff=14336,n_layer=32,n_head=32,n_head_kv=8,n_vocab=32000,n_expert=8,n_expert_used=2," \
               "n_ctx_train=32768"
LLAMA2_7B = "n_embd=4096,n_ff=11008,n_layer=32,n_head=32,n_head_kv=32,n_vocab=32000,n_ctx_train=4096"
PUBLISHED = {
    "Mixtral-8x7B": [("TheBloke Mixtral-8x7B-v0.1-GGUF (Dec 2023)", "Q4_K_M", 26.44, 28.94),
                     ("Chinese-Mixtral README", "F16", 87.0, None),
                     ("Chinese-Mixtral README", "IQ2_XXS", 11.4, None)],
}


def compare_published(model, figures, n_ctx: int = 4096):
    """A plan beside published (source, ftype, file GB, RAM GB) rows: our file size and llama.cpp memory."""
    import pandas as pd

    rows = []
    for source, ft, file_gb, ram_gb in figures:
        r = plan(model, ft, n_ctx=n_ctx)[0]
        rows.append({"source": source, "ftype": ft, "published_file_GB": file_gb, "plan_file_GB": r["file_bytes"] / GB,
                     "plan_file_GiB": r["file_bytes"] / 2**30, "published_RAM_GB": ram_gb,
                     "plan_llama_need_GB": r["memory"]["llama_need"] / GB})
    return pd.DataFrame(rows)
