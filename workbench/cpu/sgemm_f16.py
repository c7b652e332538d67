"""F16 weights in ggml's float order, as LLVM vector code (<8 x half> -> float, llvm.fma; see vec_dot_ir).

- one token (generation, and every ggml_mul_mat_id): ggml_vec_dot_f16 (arch-independent vec.c with the
  AVX2 mappings): 4 x 8 fma lanes over chunks of 32 elements, GGML_F16_VEC_REDUCE, the tail in double;
- prompt batches: llamafile_sgemm's tinyBLAS (K % 8 == 0): per (token, row) 8 fma lanes over k, then
  hsum_float_8, computed in register tiles of 2 rows x 4 tokens.
vec_dot.float_rows_exact / float_rows_batch state the same orders element by element (tests compare).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from workbench.cpu.features import has_avx512f
from workbench.cpu.fp16 import round_fp16
from workbench.cpu.ir import F32, I32, I64, V8F, fma, half_to_f32, half_to_float, hsum_float_8, load, ptr


@intrinsic
def _f16_row32(typingctx, W16, r, n32, xh):
    """GGML_F16_VEC_REDUCE of ggml_vec_dot_f16's 4 x 8 accumulators over the first 32 * n32 elements of row r
    of W16 (fp16 bits) times xh (float32 values of fp16): acc_j = fma(w, x, acc_j) per chunk of 32."""
    sig = types.float32(W16, r, n32, xh)

    def codegen(context, builder, sig, args):
        wa = context.make_array(sig.args[0])(context, builder, args[0])
        stride0 = cgutils.unpack_tuple(builder, wa.strides)[0]
        row = builder.gep(builder.bitcast(wa.data, ir.IntType(8).as_pointer()), [builder.mul(args[1], stride0)])
        xh = builder.bitcast(context.make_array(sig.args[3])(context, builder, args[3]).data,
                             ir.IntType(8).as_pointer())
        zero = ir.Constant(V8F, [0.0] * 8)
        accs = [cgutils.alloca_once_value(builder, zero) for _ in range(4)]
        with cgutils.for_range(builder, args[2]) as loop:
            for j in range(4):
                e = builder.add(builder.mul(loop.index, ir.Constant(I64, 32)), ir.Constant(I64, 8 * j))
                w = half_to_f32(builder, load(builder, row, builder.mul(e, ir.Constant(I64, 2)),
                                               ir.VectorType(ir.IntType(16), 8)))
                x = load(builder, xh, builder.mul(e, ir.Constant(I64, 4)), V8F)
                builder.store(fma(builder, w, x, builder.load(accs[j])), accs[j])
        a0, a1, a2, a3 = (builder.load(a) for a in accs)
        v = builder.fadd(builder.fadd(a0, a2), builder.fadd(a1, a3))     # x[i] of _reduce32
        lane = [builder.extract_element(v, ir.Constant(I32, i)) for i in range(8)]
        t = [builder.fadd(lane[i], lane[i + 4]) for i in range(4)]
        return builder.fadd(builder.fadd(t[0], t[1]), builder.fadd(t[2], t[3]))

    return sig, codegen


@njit(cache=True, parallel=True)
def f16_matvec(W16, K, x, out):
    """out[r] = ggml_vec_dot_f16(row r, fp16(x)) for one token: W16 (N, K) uint16 fp16 bits; 32 lanes
    (4 x 8) over chunks of 32 elements, GGML_F16_VEC_REDUCE, then the tail (K % 32) in double, as
    vec_dot.float_rows_exact does element by element."""
    xh = np.empty(K, np.float32)
    for i in range(K):
        xh[i] = round_fp16(x[i])
    K32 = K - K % 32
    for r in prange(W16.shape[0]):
        acc = np.float64(_f16_row32(W16, r, K32 // 32, xh)) if K32 else 0.0
        w = W16[r]
        for i in range(K32, K):
            acc += np.float64(half_to_float(w[i]) * xh[i])
        out[r] = np.float32(acc)


def _tile_pointers(context, builder, sig, args, rm, rn):
    """(W, r, k8, XH, t0, out) of a tile intrinsic: byte pointers to rows r..r+rm-1 of W and tokens t0..t0+rn-1 of
    XH, out's data pointer and strides."""
    W, r, k8, XH, t0, out = args
    byte = ir.IntType(8).as_pointer()
    wa, xa, oa = (context.make_array(sig.args[i])(context, builder, args[i]) for i in (0, 3, 5))
    w_p, x_p, o_p = (builder.bitcast(a.data, byte) for a in (wa, xa, oa))
    w_st, x_st, o_st = (cgutils.unpack_tuple(builder, a.strides) for a in (wa, xa, oa))
    rows = [builder.gep(w_p, [builder.mul(builder.add(r, ir.Constant(I64, i)), w_st[0])]) for i in range(rm)]
    toks = [builder.gep(x_p, [builder.mul(builder.add(t0, ir.Constant(I64, j)), x_st[0])]) for j in range(rn)]
    return rows, toks, o_p, o_st


def _f16_tile_codegen(rm, rn):
    """IR for out[t0 + j, r + i] (i < rm, j < rn) = tinyBLAS's F16 dot: 8 lanes, one fma chain each over
    k = lane, lane + 8, ..., then hsum_float_8; rm rows x rn tokens of accumulators in registers."""
    def codegen(context, builder, sig, args):
        r, k8, t0 = args[1], args[2], args[4]
        rows, toks, o_p, o_st = _tile_pointers(context, builder, sig, args, rm, rn)
        zero = ir.Constant(V8F, [0.0] * 8)
        accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(rn)] for _ in range(rm)]
        with cgutils.for_range(builder, k8) as loop:
            k = builder.mul(loop.index, ir.Constant(I64, 8))
            ws = [half_to_f32(builder, load(builder, row, builder.mul(k, ir.Constant(I64, 2)),
                                             ir.VectorType(ir.IntType(16), 8))) for row in rows]
            xs = [load(builder, tok, builder.mul(k, ir.Constant(I64, 4)), V8F) for tok in toks]
            for i in range(rm):
                for j in range(rn):
                    builder.store(fma(builder, ws[i], xs[j], builder.load(accs[i][j])), accs[i][j])
        for i in range(rm):
            for j in range(rn):
                o = builder.add(builder.mul(builder.add(t0, ir.Constant(I64, j)), o_st[0]),
                                builder.mul(builder.add(r, ir.Constant(I64, i)), o_st[1]))
                builder.store(hsum_float_8(builder, builder.load(accs[i][j])), ptr(builder, o_p, o, F32))
        return context.get_dummy_value()
    return codegen


def _f16_tile_intrinsic(rm, rn):
    @intrinsic
    def tile(typingctx, W, r, k8, XH, t0, out):
        return types.void(W, r, k8, XH, t0, out), _f16_tile_codegen(rm, rn)
    return tile


_F16_RM, _F16_RN = 2, 4
_f16_tile = _f16_tile_intrinsic(_F16_RM, _F16_RN)
_f16_tile_r1 = _f16_tile_intrinsic(1, _F16_RN)
_f16_tile_t1 = _f16_tile_intrinsic(_F16_RM, 1)
_f16_tile_11 = _f16_tile_intrinsic(1, 1)


def _f16_tile512_codegen(rm, rn):
    """_f16_tile_codegen's tile on 512-bit vectors: one <16 x float> holds the 8 lanes of two ROWS (i, i + 1) for
    one token, so each lane is still one fma chain over k = lane, lane + 8, ... and each half ends in its own
    hsum_float_8 (the same bits); rm rows (even) x rn tokens."""
    V16F = ir.VectorType(F32, 16)

    def codegen(context, builder, sig, args):
        r, k8, t0 = args[1], args[2], args[4]
        rows, toks, o_p, o_st = _tile_pointers(context, builder, sig, args, rm, rn)
        fma16 = cgutils.get_or_insert_function(builder.module, ir.FunctionType(V16F, [V16F] * 3), "llvm.fma.v16f32")
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(V16F, [0.0] * 16)) for _ in range(rn)]
                for _ in range(rm // 2)]
        both = ir.Constant(ir.VectorType(I32, 16), list(range(16)))
        dup = ir.Constant(ir.VectorType(I32, 16), list(range(8)) * 2)
        with cgutils.for_range(builder, k8) as loop:
            k = builder.mul(loop.index, ir.Constant(I64, 8))
            h = [load(builder, row, builder.mul(k, ir.Constant(I64, 2)), ir.VectorType(ir.IntType(16), 8)) for row in rows]
            ws = [half_to_f32(builder, builder.shuffle_vector(h[2 * i], h[2 * i + 1], both)) for i in range(rm // 2)]
            xs = []
            for tok in toks:
                x = load(builder, tok, builder.mul(k, ir.Constant(I64, 4)), V8F)
                xs.append(builder.shuffle_vector(x, x, dup))
            for i in range(rm // 2):
                for j in range(rn):
                    builder.store(builder.call(fma16, [ws[i], xs[j], builder.load(accs[i][j])]), accs[i][j])
        lo = ir.Constant(ir.VectorType(I32, 8), list(range(8)))
        hi = ir.Constant(ir.VectorType(I32, 8), list(range(8, 16)))
        for i in range(rm // 2):
            for j in range(rn):
                acc = builder.load(accs[i][j])
                for half, mask in ((0, lo), (1, hi)):
                    o = builder.add(builder.mul(builder.add(t0, ir.Constant(I64, j)), o_st[0]),
                                    builder.mul(builder.add(r, ir.Constant(I64, 2 * i + half)), o_st[1]))
                    v = builder.shuffle_vector(acc, acc, mask)
                    builder.store(hsum_float_8(builder, v), ptr(builder, o_p, o, F32))
        return context.get_dummy_value()
    return codegen


@intrinsic
def _f16_tile512(typingctx, W, r, k8, XH, t0, out):
    return types.void(W, r, k8, XH, t0, out), _f16_tile512_codegen(_F16_RM512, _F16_RN512)


_F16_RM512, _F16_RN512 = 4, 8     # 512-bit tile: 2 pairs of rows x 8 tokens (16 accumulators)
_F16_BLOCK_BYTES = 1 << 18     # a block of tokens' activations that stays in L2 while a thread's rows pass over it


def f16_matmul(W16, K, XH, out, n_threads):
    """_f16_matmul with the host's widest tile (512-bit where the CPU has AVX-512)."""
    (_f16_matmul512 if has_avx512f() else _f16_matmul)(W16, K, XH, out, n_threads)


@njit(cache=True, parallel=True)
def _f16_matmul512(W16, K, XH, out, n_threads):
    """_f16_matmul with 4-row x 8-token tiles on 512-bit vectors for the bulk of the rows and tokens."""
    N, T = W16.shape[0], XH.shape[0]
    k8 = K // 8
    n_groups = N // _F16_RM512
    nw = min(n_threads, max(n_groups, 1))
    tblock = max(_F16_RN512, _F16_BLOCK_BYTES // (4 * K) // _F16_RN512 * _F16_RN512)
    for wk in prange(nw):
        for tb in range(0, T, tblock):
            te = min(T, tb + tblock)
            T8 = te - (te - tb) % _F16_RN512
            for g in range(wk * n_groups // nw, (wk + 1) * n_groups // nw):
                r = g * _F16_RM512
                for t0 in range(tb, T8, _F16_RN512):
                    _f16_tile512(W16, r, k8, XH, t0, out)
                for t0 in range(T8, te):
                    for i in range(0, _F16_RM512, _F16_RM):
                        _f16_tile_t1(W16, r + i, k8, XH, t0, out)
    for r in range(n_groups * _F16_RM512, N):          # the last rows (N % 8), token by token
        for t0 in range(T):
            _f16_tile_11(W16, r, k8, XH, t0, out)


@njit(cache=True, parallel=True)
def _f16_matmul(W16, K, XH, out, n_threads):
    """out (T, N) = llamafile_sgemm's tinyBLAS product of F16 rows W16 (N, K) uint16 with XH (T, K) float32
    (the activations rounded to fp16), K % 8 == 0: per (token, row) 8 fma lanes over k, then hsum_float_8,
    as vec_dot.float_rows_batch; 2 rows x 4 tokens per tile. Each thread takes a contiguous share of the rows
    and runs them over one block of tokens at a time (the block's activations stay in cache)."""
    N, T = W16.shape[0], XH.shape[0]
    k8 = K // 8
    NR = N - N % _F16_RM
    n_groups = (N + _F16_RM - 1) // _F16_RM
    nw = min(n_threads, n_groups)
    tblock = max(_F16_RN, _F16_BLOCK_BYTES // (4 * K) // _F16_RN * _F16_RN)
    for wk in prange(nw):
        for tb in range(0, T, tblock):
            te = min(T, tb + tblock)
            T4 = te - (te - tb) % _F16_RN
            for g in range(wk * n_groups // nw, (wk + 1) * n_groups // nw):
                r = g * _F16_RM
                if r < NR:
                    for t0 in range(tb, T4, _F16_RN):
                        _f16_tile(W16, r, k8, XH, t0, out)
                    for t0 in range(T4, te):
                        _f16_tile_t1(W16, r, k8, XH, t0, out)
                else:
                    for t0 in range(tb, T4, _F16_RN):
                        _f16_tile_r1(W16, r, k8, XH, t0, out)
                    for t0 in range(T4, te):
                        _f16_tile_11(W16, r, k8, XH, t0, out)
