"""The prompt (many-token) product of repacked Q4_0 weights as LLVM vector code, tiled R rows x T tokens.

ggml's order (repack.b32_q8_0, the spec): per row r, token t and block b of 32, the exact integer dot
isum = sum_j (nibble_j - 8) * xq_j, then acc = fma((float) isum, d_w[r, b] * d_x[t, b], acc) block after block.

How the integers are formed here (any order is exact):
* A tile's R rows are unpacked once into bytes 0..15, laid out per block as 8 groups of 4 values x R rows
  (`unpack_q4_0`): one vector of 4R bytes holds values 4g..4g+3 of the R rows.
* A token's 4 activations 4g..4g+3 are broadcast to the R int32 lanes and multiplied with the nibbles
  (unsigned) as int8 (signed):
  - AVX-512 VNNI (R = 16, T = 8): vpdpbusd adds each lane's 4 products into an int32 accumulator;
  - AVX2 (R = 8, T = 4): vpmaddubsw gives each row two int16 pair sums, which add up over the block's 8 groups
    without overflow (16 * 15 * 127 = 30480 < 2^15); one vpmaddwd with ones makes them int32;
  - portable: the same sums with widening multiplies.
* isum = that sum - 8 * sum(xq of the block) (`block_sums8`).
Then the float steps are ggml's: one lane per row, fma into the token's accumulator of R rows.
tests/test_repack.py checks both against repack.b32_q8_0.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from workbench.cpu import features
from workbench.cpu.fp16 import get_fp16
from workbench.cpu.ir import F32, I8, I16, I32, c64, load, madd, maddubs, splat, x86

# variant -> (rows per tile = float lanes, tokens per tile)
SHAPES = {"vnni512": (16, 8), "avx2": (8, 4), "portable": (8, 4)}


def variant() -> str:
    """The host's kernel: AVX-512 VNNI, AVX2, or portable LLVM code."""
    if features.host_feature("avx512vnni") and features.host_feature("avx512bw"):
        return "vnni512"
    return "avx2" if features.has_avx2() else "portable"


@njit(cache=True)
def unpack_q4_0(W, r0, R, nb, buf, dw):
    """Rows r0..r0+R-1 of Q4_0 blocks -> buf[b*32R + g*4R + r*4 + i] = value 4g+i of block b of row r0+r as its
    nibble 0..15 (values j < 16 are the low nibbles of bytes j, j >= 16 their high nibbles); dw[b*R + r] its d."""
    for r in range(R):
        row = W[r0 + r]
        for b in range(nb):
            o = b * 18
            dw[b * R + r] = get_fp16(row, o)
            base = b * 32 * R + r * 4
            for j in range(16):
                byte = row[o + 2 + j]
                buf[base + (j // 4) * 4 * R + j % 4] = byte & np.uint8(15)
                buf[base + (j // 4 + 4) * 4 * R + j % 4] = byte >> np.uint8(4)


@njit(cache=True, parallel=True)
def block_sums8(xq, nb):
    """8 * the sum of each token's 32 int8 activations per block: (T, nb) int32."""
    T = xq.shape[0]
    out = np.empty((T, nb), np.int32)
    for t in prange(T):
        for b in range(nb):
            s = np.int32(0)
            for i in range(32):
                s += np.int32(xq[t, 32 * b + i])
            out[t, b] = 8 * s
    return out


def _tile_codegen(kind):
    R, TOK = SHAPES[kind]
    vf, vi = ir.VectorType(F32, R), ir.VectorType(I32, R)
    vb, vs = ir.VectorType(I8, 4 * R), ir.VectorType(I16, 2 * R)
    fma_fn = ir.FunctionType(vf, [vf, vf, vf])

    def products(builder, acc, w, y):
        """acc (int32 per row, or int16 pairs on AVX2) plus the products of w (nibbles) and y (int8 x 4)."""
        if kind == "vnni512":
            return x86(builder, "llvm.x86.avx512.vpdpbusd.512", vi, [acc, builder.bitcast(w, vi), builder.bitcast(y, vi)])
        return builder.add(acc, maddubs(builder, w, y, kind == "avx2"))

    def codegen(context, builder, sig, args):
        buf, dw, xq, ys8, dx, tile = (
            builder.bitcast(context.make_array(sig.args[i])(context, builder, args[i]).data, I8.as_pointer())
            for i in range(6))
        t0, nb, K = args[6], args[7], args[8]
        dw, dx = builder.bitcast(dw, F32.as_pointer()), builder.bitcast(dx, F32.as_pointer())
        ys8 = builder.bitcast(ys8, I32.as_pointer())
        fma = cgutils.get_or_insert_function(builder.module, fma_fn, f"llvm.fma.v{R}f32")
        accs = [cgutils.alloca_once_value(builder, ir.Constant(vf, [0.0] * R)) for _ in range(TOK)]
        zero = ir.Constant(vi, [0] * R) if kind == "vnni512" else ir.Constant(vs, [0] * (2 * R))
        tok = [builder.add(t0, c64(t)) for t in range(TOK)]
        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            wbase = builder.mul(b, c64(32 * R))
            ints = [zero] * TOK
            for g in range(8):
                w = load(builder, buf, builder.add(wbase, c64(4 * R * g)), vb)
                for t in range(TOK):
                    at = builder.add(builder.mul(tok[t], K), builder.add(builder.mul(b, c64(32)), c64(4 * g)))
                    y = builder.bitcast(splat(builder, load(builder, xq, at, I32), R), vb)
                    ints[t] = products(builder, ints[t], w, y)
            dwb = builder.load(builder.bitcast(builder.gep(dw, [builder.mul(b, c64(R))]), vf.as_pointer()), align=4)
            for t in range(TOK):
                isum = ints[t] if kind == "vnni512" else madd(builder, ints[t], ir.Constant(vs, [1] * (2 * R)),
                                                                kind == "avx2")
                tb = builder.add(builder.mul(tok[t], nb), b)
                isum = builder.sub(isum, splat(builder, builder.load(builder.gep(ys8, [tb])), R))
                dd = builder.fmul(dwb, splat(builder, builder.load(builder.gep(dx, [tb])), R))
                builder.store(builder.call(fma, [builder.sitofp(isum, vf), dd, builder.load(accs[t])]), accs[t])
        out = builder.bitcast(tile, vf.as_pointer())
        for t in range(TOK):
            builder.store(builder.load(accs[t]), builder.gep(out, [c64(t)]), align=4)
        return context.get_dummy_value()
    return codegen


def _make_tile(kind):
    def tile_intrinsic(typingctx, buf, dw, xq, ys8, dx, tile, t0, nb, K):
        return types.void(buf, dw, xq, ys8, dx, tile, t0, nb, K), _tile_codegen(kind)
    tile_intrinsic.__name__ = f"_q4_0_tile_{kind}"
    return intrinsic(tile_intrinsic)


def _make_gemm(kind):
    tile_kernel = _make_tile(kind)
    R, TOK = SHAPES[kind]

    def gemm(W, K, xq, dx, T, out, n_threads):
        """out[t, r] for t < T (xq, dx padded to whole tiles of tokens), tiles of rows spread over the threads."""
        nb = K // 32
        Tp = xq.shape[0]
        ys8 = block_sums8(xq, nb)
        n_tiles = W.shape[0] // R
        nw = min(n_threads, n_tiles)
        for wk in prange(nw):
            buf = np.empty(nb * 32 * R, np.uint8)
            dw = np.empty(nb * R, np.float32)
            tile = np.empty(TOK * R, np.float32)
            for c in range(wk * n_tiles // nw, (wk + 1) * n_tiles // nw):
                r0 = c * R
                unpack_q4_0(W, r0, R, nb, buf, dw)
                for t0 in range(0, Tp, TOK):
                    tile_kernel(buf, dw, xq, ys8, dx, tile, np.int64(t0), np.int64(nb), np.int64(K))
                    for t in range(min(TOK, T - t0)):
                        for r in range(R):
                            out[t0 + t, r0 + r] = tile[t * R + r]
    gemm.__name__ = f"q4_0_gemm_{kind}"
    return njit(cache=True, parallel=True)(gemm)


GEMM = {kind: _make_gemm(kind) for kind in SHAPES}


def q4_0_gemm(rows, K, xq, dx, out, n_threads, kind=None):
    """out (T, N) = the repacked Q4_0 product (ggml's order) for rows (N, K/32*18), xq (T, K) int8 and dx (T, K/32)
    the Q8_0 activations; False (nothing written) when N is not a whole number of the kernel's row tiles."""
    kind = kind or variant()
    R, TOK = SHAPES[kind]
    if rows.shape[0] % R:
        return False
    T = xq.shape[0]
    Tp = -(-T // TOK) * TOK
    if Tp != T:
        xq = np.concatenate([xq, np.zeros((Tp - T, K), np.int8)])
        dx = np.concatenate([dx, np.zeros((Tp - T, dx.shape[1]), np.float32)])
    GEMM[kind](rows, K, np.ascontiguousarray(xq), np.ascontiguousarray(dx), T, out, n_threads)
    return True
