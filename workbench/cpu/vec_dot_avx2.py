"""Q4_1 / Q8_0 dot products with AVX2's integer instructions, in ggml's own sequence (see vec_dot_ir).

mul_sum_us8_pairs_float / mul_sum_i8_pairs_float (arch/x86/quants.c): vpmaddubsw (u8 x i8 -> pairs of i16),
then vpmaddwd with ones (the 8 lane sums of 4 products as i32), converted to float: the same integer lane
sums as vec_dot_ir's portable kernels, hence the same floats, about 1.4x faster. Used where numba compiles for
an AVX2 host (features.has_avx2).

- prompt batches: q4_1_matmul_avx2, q8_0_matmul_avx2 unpack a row's block once for _RN tokens, with the
  _RN accumulators in registers (llama.cpp runs vec_dot per (row, token) for Q4_1 and tinyBLAS_Q0_AVX for
  Q8_0: the same float steps per (row, token) either way, so each result is the one-token one);
- one token (generation): q4_1_matvec_avx2, q8_0_matvec_avx2 quantize the token and run the same code
  with a tile of one token.
"""
from __future__ import annotations

from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from workbench.cpu.act_quant import q8_lanes
from workbench.cpu.ir import F32, I32, I64, V8F, V32B, fma, fp16, hsum_float_8, lane_sums_u8_i8, load, ptr, splat, x86


_RN = 8


def _tile_codegen(kind, rn):
    """IR for out[t0 + i, r], i < rn, of a Q4_1 (kind 1) or Q8_0 (kind 0) row against rn tokens."""
    def codegen(context, builder, sig, args):
        W, r, nb, XQ, DX, S, t0, out = args
        wa = context.make_array(sig.args[0])(context, builder, W)
        row = builder.gep(builder.bitcast(wa.data, ir.IntType(8).as_pointer()),
                          [builder.mul(r, cgutils.unpack_tuple(builder, wa.strides)[0])])
        arrs = [context.make_array(sig.args[i])(context, builder, args[i]) for i in (3, 4, 5, 7)]
        xq_a, dx_a, s_a, out_a = arrs
        byte = ir.IntType(8).as_pointer()
        xq_p, dx_p, s_p, out_p = (builder.bitcast(a.data, byte) for a in arrs)
        xq_st, dx_st, s_st, out_st = (cgutils.unpack_tuple(builder, a.strides) for a in arrs)
        zero = ir.Constant(V8F, [0.0] * 8)
        accs = [cgutils.alloca_once_value(builder, zero) for _ in range(rn)]
        summs = [cgutils.alloca_once_value(builder, ir.Constant(F32, 0.0)) for _ in range(rn)]
        toks = [builder.add(t0, ir.Constant(I64, i)) for i in range(rn)]
        bs = 20 if kind == 1 else 34
        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            o = builder.mul(b, ir.Constant(I64, bs))
            d = fp16(builder, row, o)
            if kind == 1:
                m = fp16(builder, row, builder.add(o, ir.Constant(I64, 2)))
                v16 = load(builder, row, builder.add(o, ir.Constant(I64, 4)), ir.VectorType(ir.IntType(8), 16))
                both = builder.shuffle_vector(v16, v16, ir.Constant(ir.VectorType(I32, 32), list(range(16)) * 2))
                wv = builder.and_(builder.lshr(both, ir.Constant(V32B, [0] * 16 + [4] * 16)),
                                  ir.Constant(V32B, [15] * 32))
            else:
                x = load(builder, row, builder.add(o, ir.Constant(I64, 2)), V32B)
                wv = x86(builder, "llvm.x86.avx2.psign.b", V32B, [x, x])
            for i, t in enumerate(toks):
                def at(ptr, st, col, size):
                    return builder.add(builder.mul(t, st[0]), builder.mul(col, ir.Constant(I64, size)))
                y = load(builder, xq_p, builder.add(builder.mul(t, xq_st[0]), builder.mul(b, ir.Constant(I64, 32))),
                          V32B)
                if kind == 0:
                    y = x86(builder, "llvm.x86.avx2.psign.b", V32B, [y, x])
                v = lane_sums_u8_i8(builder, wv, y)
                dxt = load(builder, dx_p, at(dx_p, dx_st, b, 4), F32)
                if kind == 1:
                    st = load(builder, s_p, at(s_p, s_st, b, 4), F32)
                    builder.store(fma(builder, m, st, builder.load(summs[i])), summs[i])
                dd = builder.fmul(d, dxt)
                builder.store(fma(builder, splat(builder, dd), v, builder.load(accs[i])), accs[i])
        for i, t in enumerate(toks):
            res = hsum_float_8(builder, builder.load(accs[i]))
            if kind == 1:
                res = builder.fadd(res, builder.load(summs[i]))
            dst = ptr(builder, out_p, builder.add(builder.mul(t, out_st[0]), builder.mul(r, out_st[1])), F32)
            builder.store(res, dst)
        return context.get_dummy_value()
    return codegen


def _tile_intrinsic(kind, rn):
    @intrinsic
    def tile(typingctx, W, r, nb, XQ, DX, S, t0, out):
        return types.void(W, r, nb, XQ, DX, S, t0, out), _tile_codegen(kind, rn)
    return tile


_q4_1_tile, _q4_1_tile1 = _tile_intrinsic(1, _RN), _tile_intrinsic(1, 1)
_q8_0_tile, _q8_0_tile1 = _tile_intrinsic(0, _RN), _tile_intrinsic(0, 1)


_BLOCK_BYTES = 1 << 18     # a block of tokens' int8 activations that stays in L2 while a thread's rows pass over it


@njit(cache=True, parallel=True)
def _blocks_matmul_avx2(W, K, XQ, DX, S, out, n_threads, q4_1):
    """out (T, N) for Q4_1 (q4_1) or Q8_0 rows: tokens in groups of _RN per pass over a row; each thread takes a
    contiguous share of the rows over blocks of tokens (the block's activations stay in cache)."""
    T, N = XQ.shape[0], W.shape[0]
    nw = min(n_threads, N)
    tblock = max(_RN, _BLOCK_BYTES // K // _RN * _RN)
    for wk in prange(nw):
        for tb in range(0, T, tblock):
            te = min(T, tb + tblock)
            T8 = te - (te - tb) % _RN
            for r in range(wk * N // nw, (wk + 1) * N // nw):
                for t0 in range(tb, T8, _RN):
                    if q4_1:
                        _q4_1_tile(W, r, K // 32, XQ, DX, S, t0, out)
                    else:
                        _q8_0_tile(W, r, K // 32, XQ, DX, DX, t0, out)
                for t0 in range(T8, te):
                    if q4_1:
                        _q4_1_tile1(W, r, K // 32, XQ, DX, S, t0, out)
                    else:
                        _q8_0_tile1(W, r, K // 32, XQ, DX, DX, t0, out)


def q4_1_matmul_avx2(W, K, XQ, DX, S, out, n_threads):
    """out (T, N) = ggml_vec_dot_q4_1_q8_1 of every (token, row): XQ (T, K) int8, DX, S (T, K/32) float32
    (prepare_activations' Q8_1 values)."""
    _blocks_matmul_avx2(W, K, XQ, DX, S, out, n_threads, True)


def q8_0_matmul_avx2(W, K, XQ, DX, out, n_threads):
    """out (T, N) = ggml_vec_dot_q8_0_q8_0 (= tinyBLAS_Q0_AVX's sums) of every (token, row)."""
    _blocks_matmul_avx2(W, K, XQ, DX, DX, out, n_threads, False)


@njit(cache=True, parallel=True)
def q4_1_matvec_avx2(W, K, x, out):
    """q4_1_matvec with AVX2's integer products: x (K,) float32, out (N,)."""
    xq, _, dx, s = q8_lanes(x, 1, False)
    XQ, DX, S, O = xq.reshape(1, K), dx.reshape(1, -1), s.reshape(1, -1), out.reshape(1, -1)
    for r in prange(W.shape[0]):
        _q4_1_tile1(W, r, K // 32, XQ, DX, S, 0, O)


@njit(cache=True, parallel=True)
def q8_0_matvec_avx2(W, K, x, out):
    """q8_0_matvec with AVX2's integer products: x (K,) float32, out (N,)."""
    xq, _, dx, _ = q8_lanes(x, 0, False)
    XQ, DX, O = xq.reshape(1, K), dx.reshape(1, -1), out.reshape(1, -1)
    for r in prange(W.shape[0]):
        _q8_0_tile1(W, r, K // 32, XQ, DX, DX, 0, O)
