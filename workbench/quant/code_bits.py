"""Where each weight's code lives in a block, read off the format's own dequantizer.

In most ggml formats every weight of a block has private code bits: flipping one of them changes that weight and
no other (Q4_0's nibbles, Q5_0's nibble plus one bit of qh, Q3_K's two bits of qs plus one of hmask, ...), while
the block's other bits (fp16 scales, packed sub-block scales and mins) change many weights at once. With the
scale bits held fixed, each weight is then an affine function of a level picked by its code:

    value = a * level[code] + b          a, b per weight (from the block's scales), level the format's table

(Q4_0: level = code - 8, a = d; Q4_K: a = d * sc, b = -dmin * m; IQ4_NL: level = kvalues_iq4nl[code]).

`code_layout(type)` finds those bits by flipping each bit of probe blocks and dequantizing (the probes are the
format's own quantization of seeded random rows), checks the affine form on every code, and returns a
`CodeLayout` that reads codes, writes them, and gives (a, b) for every weight of a row of blocks: what
error-compensating quantization (workbench.quant.gptq) needs to round one column at a time on the grid that the
block's scales fix, and still write valid blocks of that type. Formats whose codes are shared between weights
(the IQ1/IQ2/IQ3 lattices, the ternary TQ types) have no such layout: `CodeLayoutError`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from numba import njit, prange

from workbench.gguf.constants import GGMLType
from workbench.quant import dequantize, quantize
from workbench.quant.formats import format_module, parse_type

PROBE_ROWS = 8
PROBE_SEED = 0
MIN_SCALE_SPAN = 16      # a bit shared by fewer weights than the smallest sub-block is a joint code


class CodeLayoutError(ValueError):
    """The format has no private per-weight code bits (or does not fit the affine form)."""


@dataclass(frozen=True)
class CodeLayout:
    """Per-weight code bits of one ggml type, and the level table the codes select.

    byte[p, k], bit[p, k]: bit k of weight p's code (p in 0..block_size-1) sits in bit `bit` of byte `byte` of
    the block. levels[c]: the level code c selects (float64, defined up to the affine map, fixed by the first
    probe); order: the codes sorted by level (ascending)."""

    type: GGMLType
    byte: np.ndarray        # (block_size, n_bits) int64
    bit: np.ndarray         # (block_size, n_bits) int64
    levels: np.ndarray      # (1 << n_bits,) float64

    @property
    def n_bits(self) -> int:
        return self.byte.shape[1]

    @property
    def order(self) -> np.ndarray:
        return np.argsort(self.levels, kind="stable")

    def _positions(self, n_per_row: int):
        """Byte column and bit of every (weight, code bit) of a row of n_per_row weights."""
        t = self.type
        nb = n_per_row // t.block_size
        base = (np.arange(nb) * t.type_size)[:, None, None]
        return (base + self.byte[None]).reshape(n_per_row, -1), np.broadcast_to(self.bit, (nb,) + self.bit.shape)\
            .reshape(n_per_row, -1)

    def codes(self, blocks: np.ndarray, n_per_row: int) -> np.ndarray:
        """The code of every weight: uint16 (rows, n_per_row)."""
        col, bit = self._positions(n_per_row)
        out = np.empty((blocks.shape[0], n_per_row), np.uint16)
        _read_codes(np.ascontiguousarray(blocks), np.ascontiguousarray(col), np.ascontiguousarray(bit), out)
        return out

    def codes_ref(self, blocks: np.ndarray, n_per_row: int) -> np.ndarray:
        """numpy spec of codes."""
        col, bit = self._positions(n_per_row)
        out = np.zeros((blocks.shape[0], n_per_row), np.uint16)
        for k in range(self.n_bits):
            out |= (((blocks[:, col[:, k]] >> bit[:, k].astype(np.uint8)) & 1).astype(np.uint16) << k)
        return out

    def with_codes(self, blocks: np.ndarray, codes: np.ndarray, n_per_row: int) -> np.ndarray:
        """A copy of `blocks` whose weights carry `codes` (rows, n_per_row), or one row of codes for every row;
        every other bit kept."""
        col, bit = self._positions(n_per_row)
        out = np.array(blocks, np.uint8, order="C")
        codes = np.ascontiguousarray(np.asarray(codes).astype(np.uint16, copy=False).reshape(-1, n_per_row))
        if codes.shape[0] not in (1, out.shape[0]):
            raise ValueError(f"codes for {codes.shape[0]} rows, blocks have {out.shape[0]}")
        _write_codes(out, codes, np.ascontiguousarray(col), np.ascontiguousarray(bit))
        return out

    def with_codes_ref(self, blocks: np.ndarray, codes: np.ndarray, n_per_row: int) -> np.ndarray:
        """numpy spec of with_codes."""
        col, bit = self._positions(n_per_row)
        out = blocks.copy()
        codes = np.broadcast_to(np.asarray(codes, np.uint16), (blocks.shape[0], n_per_row))
        for k in range(self.n_bits):
            for b in range(8):                  # one bit position at a time: the columns are then distinct bytes
                sel = np.nonzero(bit[:, k] == b)[0]
                if len(sel):
                    v = (((codes[:, sel] >> k) & 1).astype(np.uint8) << np.uint8(b))
                    out[:, col[sel, k]] = (out[:, col[sel, k]] & np.uint8(~(1 << b) & 0xFF)) | v
        return out

    def affine(self, blocks: np.ndarray, n_per_row: int) -> tuple[np.ndarray, np.ndarray]:
        """(a, b), float64 (rows, n_per_row): weight = a * levels[code] + b with the blocks' scales."""
        lo, hi = self.order[0], self.order[-1]
        v_lo = dequantize(self.with_codes(blocks, np.full((1, n_per_row), lo), n_per_row), self.type, n_per_row)
        v_hi = dequantize(self.with_codes(blocks, np.full((1, n_per_row), hi), n_per_row), self.type, n_per_row)
        a = (v_hi.astype(np.float64) - v_lo) / (self.levels[hi] - self.levels[lo])
        return a, v_lo - a * self.levels[lo]


@njit(parallel=True, cache=True)
def _read_codes(blocks, col, bit, out):
    """out[r, p] = the code bits col/bit of weight p gathered from row r of blocks (codes_ref's loop)."""
    for r in prange(blocks.shape[0]):
        for p in range(col.shape[0]):
            c = 0
            for k in range(col.shape[1]):
                c |= ((np.int64(blocks[r, col[p, k]]) >> bit[p, k]) & 1) << k
            out[r, p] = c


@njit(parallel=True, cache=True)
def _write_codes(out, codes, col, bit):
    """Bits col/bit of weight p of row r of out set to codes[r, p] (codes[0, p] when one row of codes)."""
    step = 0 if codes.shape[0] == 1 else 1
    for r in prange(out.shape[0]):
        cr = r * step
        for p in range(col.shape[0]):
            c = np.int64(codes[cr, p])
            for k in range(col.shape[1]):
                m = np.int64(1) << bit[p, k]
                v = np.int64(out[r, col[p, k]])
                out[r, col[p, k]] = np.uint8((v | m) if (c >> k) & 1 else (v & (0xFF ^ m)))


def probe_blocks(t: GGMLType) -> np.ndarray:
    rng = np.random.default_rng(PROBE_SEED)
    x = rng.standard_normal((PROBE_ROWS, t.block_size)).astype(np.float32)
    imatrix = (rng.random(t.block_size) + 0.5).astype(np.float32) if getattr(
        format_module(t), "NEEDS_IMATRIX", False) else None
    return quantize(x, t, imatrix=imatrix)


@cache
def code_layout(type_) -> CodeLayout:
    """The CodeLayout of a ggml type (cached); CodeLayoutError when its codes are not private per weight."""
    t = parse_type(type_)
    if t.block_size == 1:
        raise CodeLayoutError(f"{t.name} is a float type: no codes")
    n = t.block_size
    blocks = probe_blocks(t)
    base = dequantize(blocks, t, n)
    owner = np.full(8 * t.type_size, -2)                 # -2: changes nothing, -1: a scale bit, else weight
    spread = np.zeros(8 * t.type_size, np.int64)         # how many weights of a block a flip of the bit changed
    for i in range(8 * t.type_size):
        flipped = blocks.copy()
        flipped[:, i // 8] ^= np.uint8(1 << (i % 8))
        with np.errstate(invalid="ignore"):
            changed = ~(dequantize(flipped, t, n) == base)          # (rows, n); a NaN counts as a change
        who = np.nonzero(changed.any(axis=0))[0]                    # over all probes: a scale's whole span
        spread[i] = len(who)
        owner[i] = -1 if len(who) > 1 else (who[0] if len(who) else -2)
    joint = np.nonzero((spread > 1) & (spread < MIN_SCALE_SPAN))[0]
    if len(joint):
        raise CodeLayoutError(f"{t.name}: bit {joint[0]} of the block changes {spread[joint[0]]} weights at once "
                              f"(a code shared by several weights, not a scale)")
    bits_of = [np.nonzero(owner == p)[0] for p in range(n)]
    n_bits = len(bits_of[0])
    if n_bits == 0 or any(len(b) != n_bits for b in bits_of):
        raise CodeLayoutError(f"{t.name}: weights do not have private code bits of equal width "
                              f"(counts {sorted({len(b) for b in bits_of})}): its codes are shared")
    pos = np.array(bits_of)                              # (n, n_bits) bit index in the block
    layout = CodeLayout(t, pos // 8, pos % 8, np.zeros(1 << n_bits))
    # level table from the first probe weight whose codes give different values (any such weight gives the same
    # table up to the affine map); then every weight of every probe must be affine in it
    table = np.stack([dequantize(layout.with_codes(blocks, np.full((1, n), c), n), t, n)
                      for c in range(1 << n_bits)], axis=-1).astype(np.float64)   # (rows, n, 2**n_bits)
    flat = table.reshape(-1, table.shape[-1])
    live = np.nonzero(np.ptp(flat, axis=1) > 0)[0]
    if not len(live):
        raise CodeLayoutError(f"{t.name}: the probe blocks dequantize to constants")
    ref = flat[live[0]]
    levels = (ref - ref.min()) / np.ptp(ref)
    layout = CodeLayout(t, layout.byte, layout.bit, levels)
    a, b = layout.affine(blocks, n)
    fit = a[..., None] * levels + b[..., None]
    bad = np.abs(fit - table).max()
    if not bad <= 1e-5 * np.abs(table).max():
        raise CodeLayoutError(f"{t.name}: a weight is not an affine function of one level table (off by {bad:.3g})")
    return layout
