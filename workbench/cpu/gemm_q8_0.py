"""Q8_0 on AVX-512 VNNI in ggml's float order: prompt batches with two tokens per 512-bit vector, generation with two
rows per vector (see gemm_tiles for the other integer tiles; vec_dot_avx2 holds the same order with 256-bit vectors).

Per (row, token): 8 float lanes; per block of 32, lane l gets acc_l = fma(d_w * d_x, (float) isum_l, acc_l), isum_l
the exact dot of the 4 int8 values 4l..4l+3; at the end hsum_float_8 (vec_dot_avx2's tile, the spec). Here one
512-bit vector carries the 8 lanes of TWO tokens for one row: the weights as unsigned bytes w + 128 (xor 0x80),
vpdpbusd into an accumulator that starts at -128 * (the lane's sum of x), so isum_l is exact; each half ends in its
own hsum_float_8. Activations packed per pair of tokens (`pack_q8_0_pairs`). For one token (`q8_0_matvec_vnni`) the
vector's halves are two rows instead, against the same token.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from workbench.cpu.act_quant import q8_lanes
from workbench.cpu.gemm_tiles import block_sums, fma_fn, tile_out, variant
from workbench.cpu.ir import F32, I8, I32, c64, fp16, hsum_float_8, load, splat, x86

Q8_0_ROWS, Q8_0_PAIRS = 4, 4       # tile: 4 rows x 4 pairs of tokens (16 accumulators)


@njit(cache=True, parallel=True)
def pack_q8_0_pairs(xq, dx):
    """Q8_0 activations by pairs of tokens (an odd last token paired with zeros): xp[p, b] the 32 int8 of tokens 2p
    and 2p + 1 in block b, neg[p, b] -128 * the sums of their 4-value lanes (int32 x 16), dxp[p, b] their d_x, 8 each."""
    T, K = xq.shape
    nb = K // 32
    TP = (T + 1) // 2
    xp = np.zeros((TP, nb, 64), np.int8)
    neg = np.zeros((TP, nb, 16), np.int32)
    dxp = np.zeros((TP, nb, 16), np.float32)
    for p in prange(TP):
        for h in range(min(2, T - 2 * p)):
            t = 2 * p + h
            for b in range(nb):
                for i in range(32):
                    xp[p, b, 32 * h + i] = xq[t, 32 * b + i]
                for lane in range(8):
                    s = np.int32(0)
                    for i in range(4):
                        s += np.int32(xq[t, 32 * b + 4 * lane + i])
                    neg[p, b, 8 * h + lane] = -128 * s
                    dxp[p, b, 8 * h + lane] = dx[t, b]
    return xp, neg, dxp


def _q8_0_pairs_codegen(rm, rn):
    V16F, V16I, V64B = ir.VectorType(F32, 16), ir.VectorType(I32, 16), ir.VectorType(I8, 64)

    def codegen(context, builder, sig, args):
        W, r, nb, xp, neg, dxp, p0, tile = args
        wa = context.make_array(sig.args[0])(context, builder, W)
        stride = cgutils.unpack_tuple(builder, wa.strides)[0]
        base = builder.bitcast(wa.data, I8.as_pointer())
        rows = [builder.gep(base, [builder.mul(builder.add(r, c64(i)), stride)]) for i in range(rm)]
        xp, neg, dxp, tile = (builder.bitcast(context.make_array(sig.args[i])(context, builder, args[i]).data,
                                              I8.as_pointer()) for i in (3, 4, 5, 7))
        fma = fma_fn(builder, V16F)
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(V16F, [0.0] * 16)) for _ in range(rn)]
                for _ in range(rm)]
        dup = ir.Constant(ir.VectorType(I32, 64), list(range(32)) * 2)
        flip = ir.Constant(ir.VectorType(I8, 32), [-128] * 32)
        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            o = builder.mul(b, c64(34))
            ws, ds = [], []
            for row in rows:
                w = builder.xor(load(builder, row, builder.add(o, c64(2)), ir.VectorType(I8, 32)), flip)
                ws.append(builder.bitcast(builder.shuffle_vector(w, w, dup), V16I))
                ds.append(splat(builder, fp16(builder, row, o), 16))
            for j in range(rn):
                at = builder.add(builder.mul(builder.add(p0, c64(j)), nb), b)        # (pair, block)
                x = builder.bitcast(load(builder, xp, builder.mul(at, c64(64)), V64B), V16I)
                n0 = load(builder, neg, builder.mul(at, c64(64)), V16I)
                dx = load(builder, dxp, builder.mul(at, c64(64)), V16F)
                for i in range(rm):
                    isum = x86(builder, "llvm.x86.avx512.vpdpbusd.512", V16I, [n0, ws[i], x])
                    dd = builder.fmul(ds[i], dx)
                    builder.store(builder.call(fma, [dd, builder.sitofp(isum, V16F), builder.load(accs[i][j])]),
                                  accs[i][j])
        out = builder.bitcast(tile, F32.as_pointer())
        for i in range(rm):
            for j in range(rn):
                acc = builder.load(accs[i][j])
                for h in range(2):
                    half = builder.shuffle_vector(acc, acc, ir.Constant(ir.VectorType(I32, 8), list(range(8 * h, 8 * h + 8))))
                    builder.store(hsum_float_8(builder, half), builder.gep(out, [c64((2 * j + h) * rm + i)]))
        return context.get_dummy_value()
    return codegen


def _q8_0_pairs_tile(rm, rn):
    def tile_intrinsic(typingctx, W, r, nb, xp, neg, dxp, p0, tile):
        return types.void(W, r, nb, xp, neg, dxp, p0, tile), _q8_0_pairs_codegen(rm, rn)
    tile_intrinsic.__name__ = f"_q8_0_pairs_{rm}x{rn}"
    return intrinsic(tile_intrinsic)


_q8_0_tile = _q8_0_pairs_tile(Q8_0_ROWS, Q8_0_PAIRS)
_q8_0_tile_r1 = _q8_0_pairs_tile(1, Q8_0_PAIRS)
_Q8_0_BLOCK_BYTES = 1 << 18     # a block of token pairs whose activations stay in L2 while a thread's rows pass


@njit(cache=True, parallel=True)
def _q8_0_gemm_vnni512(W, K, xp, neg, dxp, T, out, n_threads):
    N = W.shape[0]
    nb = K // 32
    TP = xp.shape[0]
    PP = -(-TP // Q8_0_PAIRS) * Q8_0_PAIRS
    n_groups = -(-N // Q8_0_ROWS)
    nw = min(n_threads, n_groups)
    pblock = max(Q8_0_PAIRS, _Q8_0_BLOCK_BYTES // (64 * nb) // Q8_0_PAIRS * Q8_0_PAIRS)
    for wk in prange(nw):
        tile = np.empty(2 * Q8_0_PAIRS * Q8_0_ROWS, np.float32)
        for pb in range(0, PP, pblock):
            for g in range(wk * n_groups // nw, (wk + 1) * n_groups // nw):
                r0 = g * Q8_0_ROWS
                rm = min(Q8_0_ROWS, N - r0)
                for p0 in range(pb, min(PP, pb + pblock), Q8_0_PAIRS):
                    if rm == Q8_0_ROWS:
                        _q8_0_tile(W, r0, nb, xp, neg, dxp, p0, tile)
                        tile_out(tile, out, 2 * p0, r0, Q8_0_ROWS, 2 * Q8_0_PAIRS, T)
                    else:
                        for i in range(rm):
                            _q8_0_tile_r1(W, r0 + i, nb, xp, neg, dxp, p0, tile)
                            tile_out(tile, out, 2 * p0, r0 + i, 1, 2 * Q8_0_PAIRS, T)


def q8_0_gemm(rows, K, xq, dx, out, n_threads):
    """out (T, N) = tinyBLAS_Q0_AVX's Q8_0 product (= ggml_vec_dot_q8_0_q8_0 per (row, token)) on an AVX-512 VNNI
    host; False (nothing written) elsewhere: vec_dot_avx2's tiles hold the same order on AVX2."""
    if variant() != "vnni512":
        return False
    xp, neg, dxp = pack_q8_0_pairs(xq, dx)
    PP = -(-xp.shape[0] // Q8_0_PAIRS) * Q8_0_PAIRS          # whole tiles of pairs (zero pairs after the last)
    if PP != xp.shape[0]:
        pad = PP - xp.shape[0]
        xp = np.concatenate([xp, np.zeros((pad,) + xp.shape[1:], np.int8)])
        neg = np.concatenate([neg, np.zeros((pad,) + neg.shape[1:], np.int32)])
        dxp = np.concatenate([dxp, np.zeros((pad,) + dxp.shape[1:], np.float32)])
    _q8_0_gemm_vnni512(rows, K, xp, neg, dxp, xq.shape[0], out, n_threads)
    return True


# --- one token: two rows per vector --------------------------------------------------------------------------

GEMV_PAIRS = 4     # row pairs per call (8 rows): the token's block is loaded once for them


def _q8_0_rows_codegen(context, builder, sig, args):
    """Rows r .. r + 2 * GEMV_PAIRS - 1 (clamped to the last row: a partial group reads it again) against one token:
    tile[i] = row r + i's result."""
    V16F, V16I = ir.VectorType(F32, 16), ir.VectorType(I32, 16)
    W, r, nb, xq, neg, dx, tile = args
    wa = context.make_array(sig.args[0])(context, builder, W)
    stride = cgutils.unpack_tuple(builder, wa.strides)[0]
    last = builder.sub(cgutils.unpack_tuple(builder, wa.shape)[0], c64(1))
    base = builder.bitcast(wa.data, I8.as_pointer())
    rows = []
    for i in range(2 * GEMV_PAIRS):
        ri = builder.add(r, c64(i))
        ri = builder.select(builder.icmp_signed("<", ri, last), ri, last)
        rows.append(builder.gep(base, [builder.mul(ri, stride)]))
    xq, neg, dx, tile = (builder.bitcast(context.make_array(sig.args[i])(context, builder, args[i]).data,
                                         I8.as_pointer()) for i in (3, 4, 5, 6))
    fma = fma_fn(builder, V16F)
    accs = [cgutils.alloca_once_value(builder, ir.Constant(V16F, [0.0] * 16)) for _ in range(GEMV_PAIRS)]
    dup = ir.Constant(ir.VectorType(I32, 64), list(range(32)) * 2)
    dup8 = ir.Constant(ir.VectorType(I32, 16), list(range(8)) * 2)
    pair = ir.Constant(ir.VectorType(I32, 64), list(range(64)))
    flip = ir.Constant(ir.VectorType(I8, 32), [-128] * 32)
    with cgutils.for_range(builder, nb) as loop:
        b = loop.index
        o = builder.mul(b, c64(34))
        x = load(builder, xq, builder.mul(b, c64(32)), ir.VectorType(I8, 32))
        x = builder.bitcast(builder.shuffle_vector(x, x, dup), V16I)
        n8 = load(builder, neg, builder.mul(b, c64(32)), ir.VectorType(I32, 8))
        n0 = builder.shuffle_vector(n8, n8, dup8)
        dxb = splat(builder, load(builder, dx, builder.mul(b, c64(4)), F32), 16)
        for i in range(GEMV_PAIRS):
            w0, w1 = (builder.xor(load(builder, rows[2 * i + h], builder.add(o, c64(2)), ir.VectorType(I8, 32)), flip)
                      for h in range(2))
            w = builder.bitcast(builder.shuffle_vector(w0, w1, pair), V16I)
            isum = x86(builder, "llvm.x86.avx512.vpdpbusd.512", V16I, [n0, w, x])
            d0, d1 = (fp16(builder, rows[2 * i + h], o) for h in range(2))
            dw = builder.shuffle_vector(splat(builder, d0, 8), splat(builder, d1, 8),
                                        ir.Constant(ir.VectorType(I32, 16), list(range(16))))
            dd = builder.fmul(dw, dxb)
            builder.store(builder.call(fma, [dd, builder.sitofp(isum, V16F), builder.load(accs[i])]), accs[i])
    out = builder.bitcast(tile, F32.as_pointer())
    for i in range(GEMV_PAIRS):
        acc = builder.load(accs[i])
        for h in range(2):
            half = builder.shuffle_vector(acc, acc, ir.Constant(ir.VectorType(I32, 8), list(range(8 * h, 8 * h + 8))))
            builder.store(hsum_float_8(builder, half), builder.gep(out, [c64(2 * i + h)]))
    return context.get_dummy_value()


@intrinsic
def _q8_0_rows(typingctx, W, r, nb, xq, neg, dx, tile):
    return types.void(W, r, nb, xq, neg, dx, tile), _q8_0_rows_codegen


@njit(cache=True, parallel=True)
def q8_0_matvec_vnni(W, K, x, out):
    """out (N,) = ggml_vec_dot_q8_0_q8_0 of each row with x (K,) float32 quantized to Q8_0 (q8_0_matvec_avx2's
    sums), on AVX-512 VNNI: 8 rows per call, two per vector."""
    xq, _, dx, _ = q8_lanes(x, 0, False)
    nb = K // 32
    neg = block_sums(xq.reshape(1, K), 4, -128)[0]          # per 4-value lane: vpdpbusd's start
    N = W.shape[0]
    R = 2 * GEMV_PAIRS
    for g in prange(-(-N // R)):
        tile = np.empty(R, np.float32)
        _q8_0_rows(W, g * R, nb, xq, neg, dx, tile)
        for i in range(min(R, N - g * R)):
            out[g * R + i] = tile[i]
