"""The GGUF vocabulary: magic, versions, value types, ggml tensor types, key and tensor-name templates.

This is the only module that spells a GGUF key, a type id or a tensor-name template (house style).
Values follow ggml's `ggml.h` / `gguf.h` and llama.cpp's `llama.h` at the commit the goldens came from.
"""
from __future__ import annotations

import math
from enum import IntEnum

import numpy as np

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3                  # what the writer emits
GGUF_READ_VERSIONS = (1, 2, 3)    # what the reader accepts (v1 used 32-bit counts and lengths)
GGUF_DEFAULT_ALIGNMENT = 32
GGML_MAX_DIMS = 4
GGML_MAX_NAME = 64                # tensor names must be shorter than this (gguf.cpp)
QK_K = 256                        # super-block size of the k-quants and i-quants
QUANTIZATION_VERSION = 2          # general.quantization_version written by llama-quantize
# kvalues_iq4nl (ggml-common.h): the 16 levels of IQ4_NL and IQ4_XS
KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)


class GGUFValueType(IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# numpy little-endian dtype of each fixed-size value type
VALUE_DTYPES: dict[GGUFValueType, np.dtype] = {
    GGUFValueType.UINT8: np.dtype("<u1"),
    GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"),
    GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"),
    GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"),
    GGUFValueType.BOOL: np.dtype("<u1"),
    GGUFValueType.UINT64: np.dtype("<u8"),
    GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
}


class GGMLType(IntEnum):
    """ggml tensor types (`enum ggml_type`). Gaps are types whose support was removed from ggml."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39
    NVFP4 = 40
    Q1_0 = 41
    Q2_0 = 42

    @classmethod
    def parse(cls, value: "GGMLType | str | int") -> "GGMLType":
        """Accept a GGMLType, its name (case-insensitive, 'q4_k') or its id."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                raise ValueError(f"unknown ggml type name {value!r}") from None
        try:
            return cls(int(value))
        except ValueError:
            raise ValueError(f"unknown ggml type id {value!r}") from None

    @property
    def block_size(self) -> int:
        """Elements per block."""
        return GGML_BLOCK_SIZES[self][0]

    @property
    def type_size(self) -> int:
        """Bytes per block."""
        return GGML_BLOCK_SIZES[self][1]

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size

    def row_bytes(self, n_per_row: int) -> int:
        """Bytes of one row of `n_per_row` elements (must be a multiple of the block size)."""
        if n_per_row % self.block_size:
            raise ValueError(f"{self.name}: row of {n_per_row} is not a multiple of the block size {self.block_size}")
        return n_per_row // self.block_size * self.type_size

    def nbytes(self, shape) -> int:
        """Bytes of a tensor of numpy-order `shape` (last axis is the row)."""
        n = math.prod(int(d) for d in shape)  # Python ints: no silent int64 overflow on hostile shapes
        return n // self.block_size * self.type_size


# (elements per block, bytes per block), as ggml's type traits / gguf-py's GGML_QUANT_SIZES
GGML_BLOCK_SIZES: dict[GGMLType, tuple[int, int]] = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.Q4_0: (32, 2 + 16),
    GGMLType.Q4_1: (32, 2 + 2 + 16),
    GGMLType.Q5_0: (32, 2 + 4 + 16),
    GGMLType.Q5_1: (32, 2 + 2 + 4 + 16),
    GGMLType.Q8_0: (32, 2 + 32),
    GGMLType.Q8_1: (32, 2 + 2 + 32),
    GGMLType.Q2_K: (256, 2 + 2 + QK_K // 16 + QK_K // 4),
    GGMLType.Q3_K: (256, 2 + QK_K // 4 + QK_K // 8 + 12),
    GGMLType.Q4_K: (256, 2 + 2 + QK_K // 2 + 12),
    GGMLType.Q5_K: (256, 2 + 2 + QK_K // 2 + QK_K // 8 + 12),
    GGMLType.Q6_K: (256, 2 + QK_K // 2 + QK_K // 4 + QK_K // 16),
    GGMLType.Q8_K: (256, 4 + QK_K + QK_K // 8),
    GGMLType.IQ2_XXS: (256, 2 + QK_K // 4),
    GGMLType.IQ2_XS: (256, 2 + QK_K // 4 + QK_K // 32),
    GGMLType.IQ3_XXS: (256, 2 + QK_K // 4 + QK_K // 8),
    GGMLType.IQ1_S: (256, 2 + QK_K // 8 + QK_K // 16),
    GGMLType.IQ4_NL: (32, 2 + 16),
    GGMLType.IQ3_S: (256, 2 + QK_K // 4 + QK_K // 8 + QK_K // 32 + 4),
    GGMLType.IQ2_S: (256, 2 + QK_K // 4 + QK_K // 16),
    GGMLType.IQ4_XS: (256, 2 + 2 + QK_K // 2 + QK_K // 64),
    GGMLType.I8: (1, 1),
    GGMLType.I16: (1, 2),
    GGMLType.I32: (1, 4),
    GGMLType.I64: (1, 8),
    GGMLType.F64: (1, 8),
    GGMLType.IQ1_M: (256, QK_K // 8 + QK_K // 16 + QK_K // 32),
    GGMLType.BF16: (1, 2),
    GGMLType.TQ1_0: (256, 2 + 4 * 13),
    GGMLType.TQ2_0: (256, 2 + 64),
    GGMLType.MXFP4: (32, 1 + 16),
    GGMLType.NVFP4: (64, 4 + 32),
    GGMLType.Q1_0: (128, 2 + 16),
    GGMLType.Q2_0: (64, 2 + 16),
}

# numpy dtype of the element types that are stored unblocked
PLAIN_DTYPES: dict[GGMLType, np.dtype] = {
    GGMLType.F32: np.dtype("<f4"),
    GGMLType.F16: np.dtype("<f2"),
    GGMLType.F64: np.dtype("<f8"),
    GGMLType.I8: np.dtype("<i1"),
    GGMLType.I16: np.dtype("<i2"),
    GGMLType.I32: np.dtype("<i4"),
    GGMLType.I64: np.dtype("<i8"),
    GGMLType.BF16: np.dtype("<u2"),  # raw bit pattern; see workbench.quant for conversion
}


class LlamaFileType(IntEnum):
    """llama.cpp's `enum llama_ftype` (`general.file_type`); names as llama-quantize spells them."""

    ALL_F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q8_0 = 7
    Q5_0 = 8
    Q5_1 = 9
    Q2_K = 10
    Q3_K_S = 11
    Q3_K_M = 12
    Q3_K_L = 13
    Q4_K_S = 14
    Q4_K_M = 15
    Q5_K_S = 16
    Q5_K_M = 17
    Q6_K = 18
    IQ2_XXS = 19
    IQ2_XS = 20
    Q2_K_S = 21
    IQ3_XS = 22
    IQ3_XXS = 23
    IQ1_S = 24
    IQ4_NL = 25
    IQ3_S = 26
    IQ3_M = 27
    IQ2_S = 28
    IQ2_M = 29
    IQ4_XS = 30
    IQ1_M = 31
    BF16 = 32
    TQ1_0 = 36
    TQ2_0 = 37
    MXFP4_MOE = 38
    GUESSED = 1024

    @classmethod
    def parse(cls, value: "LlamaFileType | str | int") -> "LlamaFileType":
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            name = value.strip().upper()
            name = {"F32": "ALL_F32", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q3_K": "Q3_K_M"}.get(name, name)
            try:
                return cls[name]
            except KeyError:
                raise ValueError(f"unknown ftype {value!r}; known: {', '.join(m.name for m in cls)}") from None
        return cls(int(value))


class Keys:
    """Metadata key names and templates (`{arch}` is `general.architecture`)."""

    class General:
        ARCHITECTURE = "general.architecture"
        QUANTIZATION_VERSION = "general.quantization_version"
        ALIGNMENT = "general.alignment"
        FILE_TYPE = "general.file_type"
        NAME = "general.name"
        TYPE = "general.type"
        BASENAME = "general.basename"
        FINETUNE = "general.finetune"
        SIZE_LABEL = "general.size_label"
        LICENSE = "general.license"
        AUTHOR = "general.author"
        VERSION = "general.version"
        ORGANIZATION = "general.organization"
        DESCRIPTION = "general.description"
        TAGS = "general.tags"
        LANGUAGES = "general.languages"
        # recommended sampler settings (llama.cpp's LLM_KV_GENERAL_SAMPLING_*)
        SAMPLING_SEQUENCE = "general.sampling.sequence"
        SAMPLING_TOP_K = "general.sampling.top_k"
        SAMPLING_TOP_P = "general.sampling.top_p"
        SAMPLING_MIN_P = "general.sampling.min_p"
        SAMPLING_XTC_PROBABILITY = "general.sampling.xtc_probability"
        SAMPLING_XTC_THRESHOLD = "general.sampling.xtc_threshold"
        SAMPLING_TEMP = "general.sampling.temp"
        SAMPLING_PENALTY_LAST_N = "general.sampling.penalty_last_n"
        SAMPLING_PENALTY_REPEAT = "general.sampling.penalty_repeat"
        SAMPLING_MIROSTAT = "general.sampling.mirostat"
        SAMPLING_MIROSTAT_TAU = "general.sampling.mirostat_tau"
        SAMPLING_MIROSTAT_ETA = "general.sampling.mirostat_eta"
        # The model-card keys are "general." + a field name: general.author, general.license.link,
        # general.base_model.{i}.repo_url, ... (gguf-py's Metadata.set_gguf_meta_model); the converter builds
        # them from the field names it reads, with this prefix.
        PREFIX = "general."

    class LLM:
        VOCAB_SIZE = "{arch}.vocab_size"
        CONTEXT_LENGTH = "{arch}.context_length"
        EMBEDDING_LENGTH = "{arch}.embedding_length"
        BLOCK_COUNT = "{arch}.block_count"
        FEED_FORWARD_LENGTH = "{arch}.feed_forward_length"
        EXPERT_COUNT = "{arch}.expert_count"
        EXPERT_USED_COUNT = "{arch}.expert_used_count"
        POOLING_TYPE = "{arch}.pooling_type"

    class Attention:
        HEAD_COUNT = "{arch}.attention.head_count"
        HEAD_COUNT_KV = "{arch}.attention.head_count_kv"
        LAYERNORM_RMS_EPS = "{arch}.attention.layer_norm_rms_epsilon"
        KEY_LENGTH = "{arch}.attention.key_length"
        VALUE_LENGTH = "{arch}.attention.value_length"
        SCALE = "{arch}.attention.scale"

    class Rope:
        DIMENSION_COUNT = "{arch}.rope.dimension_count"
        FREQ_BASE = "{arch}.rope.freq_base"
        SCALING_TYPE = "{arch}.rope.scaling.type"
        SCALING_FACTOR = "{arch}.rope.scaling.factor"
        SCALING_ORIG_CTX_LEN = "{arch}.rope.scaling.original_context_length"
        SCALING_ATTN_FACTOR = "{arch}.rope.scaling.attn_factor"
        SCALING_YARN_LOG_MUL = "{arch}.rope.scaling.yarn_log_multiplier"
        SCALING_YARN_EXT_FACTOR = "{arch}.rope.scaling.yarn_ext_factor"
        SCALING_YARN_ATTN_FACTOR = "{arch}.rope.scaling.yarn_attn_factor"
        SCALING_YARN_BETA_FAST = "{arch}.rope.scaling.yarn_beta_fast"
        SCALING_YARN_BETA_SLOW = "{arch}.rope.scaling.yarn_beta_slow"
        SCALE_LINEAR = "{arch}.rope.scale_linear"  # old name of rope.scaling.factor (LLM_KV_ROPE_SCALE_LINEAR)

    class Tokenizer:
        MODEL = "tokenizer.ggml.model"
        PRE = "tokenizer.ggml.pre"
        LIST = "tokenizer.ggml.tokens"
        TOKEN_TYPE = "tokenizer.ggml.token_type"
        SCORES = "tokenizer.ggml.scores"
        MERGES = "tokenizer.ggml.merges"
        BOS_ID = "tokenizer.ggml.bos_token_id"
        EOS_ID = "tokenizer.ggml.eos_token_id"
        EOT_ID = "tokenizer.ggml.eot_token_id"
        EOM_ID = "tokenizer.ggml.eom_token_id"
        UNK_ID = "tokenizer.ggml.unknown_token_id"
        SEP_ID = "tokenizer.ggml.seperator_token_id"  # (sic) llama.cpp's and gguf-py's spelling
        PAD_ID = "tokenizer.ggml.padding_token_id"
        MASK_ID = "tokenizer.ggml.mask_token_id"
        ADD_BOS = "tokenizer.ggml.add_bos_token"
        ADD_EOS = "tokenizer.ggml.add_eos_token"
        ADD_SEP = "tokenizer.ggml.add_sep_token"
        ADD_SPACE_PREFIX = "tokenizer.ggml.add_space_prefix"
        NORMALIZER_LOWERCASE = "tokenizer.ggml.normalizer.lowercase"
        NORMALIZER_STRIP_ACCENTS = "tokenizer.ggml.normalizer.strip_accents"
        CHAT_TEMPLATE = "tokenizer.chat_template"
        CHAT_TEMPLATES = "tokenizer.chat_templates"  # names of the extra tokenizer.chat_template.<name>
        # fill-in-the-middle special tokens
        FIM_PRE_ID = "tokenizer.ggml.fim_pre_token_id"
        FIM_SUF_ID = "tokenizer.ggml.fim_suf_token_id"
        FIM_MID_ID = "tokenizer.ggml.fim_mid_token_id"
        FIM_PAD_ID = "tokenizer.ggml.fim_pad_token_id"
        FIM_REP_ID = "tokenizer.ggml.fim_rep_token_id"
        FIM_SEP_ID = "tokenizer.ggml.fim_sep_token_id"

    class Imatrix:
        FILE = "quantize.imatrix.file"
        DATASET = "quantize.imatrix.dataset"
        N_ENTRIES = "quantize.imatrix.entries_count"
        N_CHUNKS = "quantize.imatrix.chunks_count"


def key(template: str, arch: str) -> str:
    """Fill an `{arch}` key template: key(Keys.LLM.BLOCK_COUNT, "llama") -> "llama.block_count"."""
    return template.format(arch=arch)


# Metadata arrays that gguf-dump --json gives as lengths only (they are huge and say little).
BULK_ARRAY_KEYS = (Keys.Tokenizer.LIST, Keys.Tokenizer.TOKEN_TYPE, Keys.Tokenizer.SCORES, Keys.Tokenizer.MERGES)


class TensorNames:
    """Tensor-name templates of llama-family models ({bid} is the block index)."""

    TOKEN_EMBD = "token_embd"
    OUTPUT_NORM = "output_norm"
    OUTPUT = "output"
    ROPE_FREQS = "rope_freqs"
    ATTN_NORM = "blk.{bid}.attn_norm"
    ATTN_Q = "blk.{bid}.attn_q"
    ATTN_K = "blk.{bid}.attn_k"
    ATTN_V = "blk.{bid}.attn_v"
    ATTN_OUT = "blk.{bid}.attn_output"
    FFN_NORM = "blk.{bid}.ffn_norm"
    FFN_GATE = "blk.{bid}.ffn_gate"
    FFN_UP = "blk.{bid}.ffn_up"
    FFN_DOWN = "blk.{bid}.ffn_down"
    FFN_GATE_INP = "blk.{bid}.ffn_gate_inp"
    FFN_GATE_EXPS = "blk.{bid}.ffn_gate_exps"
    FFN_UP_EXPS = "blk.{bid}.ffn_up_exps"
    FFN_DOWN_EXPS = "blk.{bid}.ffn_down_exps"


def tensor_name(template: str, bid: int | None = None, suffix: str = "weight") -> str:
    """tensor_name(TensorNames.ATTN_Q, 3) -> "blk.3.attn_q.weight"."""
    name = template.format(bid=bid) if "{bid}" in template else template
    return f"{name}.{suffix}" if suffix else name


class TokenType(IntEnum):
    """llama.cpp's `llama_token_type` as stored in tokenizer.ggml.token_type."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6
