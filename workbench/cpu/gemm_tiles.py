"""Many-token (prompt) products as integer tiles of R rows x T tokens, in LLVM vector code, for the weight types
whose ggml sums are exact integers per block followed by a few float steps:

  Q4_0   repacked gemm/gemv: acc = fma((float) isum_b, d_w * d_x, acc) per block of 32 (repack.b32_q8_0)
  Q4_K   repacked gemm (fma pair per two sub-blocks) or gemv (per super-block) (repack.q4_K_q8_K)
  Q6_K   tiled.cpp from 8 tokens: res = d_w * (float) s1, out = fma(res, d_x, out) per super-block
         (tiled.kquant_q8_K, tiled=True)
  (Q8_0 on AVX-512 VNNI: gemm_q8_0, which uses the helpers here)

How the integers are formed (any order is exact), Q4_0 / Q4_K / Q6_K:
* A tile's R rows are unpacked once into bytes (the unsigned 4- or 6-bit values), laid out as groups of 4 values
  x R rows (`unpack_*`): one vector of 4R bytes holds values 4g..4g+3 of the R rows.
* A token's 4 activations 4g..4g+3 are broadcast to the R int32 lanes and multiplied with those bytes
  (unsigned) as int8 (signed):
  - AVX-512 VNNI (R = 16): vpdpbusd adds each lane's 4 products into an int32 accumulator;
  - AVX2 (R = 8): vpmaddubsw gives each row two int16 pair sums, added in int16 while no overflow is possible
    (Q4: a block's 8 groups, 16 * 15 * 127 = 30480 < 2^15; Q6_K: 2 groups), then vpmaddwd with ones;
  - portable: the same sums with widening multiplies.
* The offsets of the signed formats come from the activations' block sums (`block_sums`): Q4_0's 8 * sum,
  Q6_K's 32 * sum per sub-block of 16; Q4_K's mins multiply the sums per 32.
Then the float steps are ggml's: one lane per row, one accumulator per token.
tests/test_gemm_tiles.py checks every variant this host can run against the spec kernels named above.
"""
from __future__ import annotations

import functools

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


@functools.cache
def variant() -> str:
    """The host's kernel: AVX-512 VNNI, AVX2, or portable LLVM code."""
    if features.host_feature("avx512vnni") and features.host_feature("avx512bw"):
        return "vnni512"
    return "avx2" if features.has_avx2() else "portable"


def kinds():
    """The host's variant, then the 8-row one (for row counts that are not whole 16-row tiles)."""
    return (variant(), "avx2" if features.has_avx2() else "portable")


# The drivers below are plain module-level functions (numba caches them: a closure over an intrinsic is
# compiled again in every process), and each tile intrinsic generates the host's variant when it is lowered.
# Tests reach the other variants through `_for_kind`: a fresh, uncached compile of the same driver with the
# intrinsics lowered for that variant.
_FORCED = []              # the variant being compiled by _for_kind, if any
GENERATED = set()         # (intrinsic, variant) pairs lowered in this process


def _host_codegen(name, make):
    """A codegen that builds make(kind) for the variant being compiled (the host's, or _for_kind's)."""
    def codegen(context, builder, sig, args):
        kind = _FORCED[-1] if _FORCED else variant()
        GENERATED.add((name, kind))
        return make(kind)(context, builder, sig, args)
    return codegen


_FRESH = {}


def _for_kind(driver, kind):
    """driver itself for the host's variant; else a fresh uncached compile of it whose tiles are `kind`'s."""
    if kind == variant():
        return driver
    key = (driver.py_func.__name__, kind)
    if key not in _FRESH:
        fresh = njit(parallel=True)(driver.py_func)

        def run(*args):
            _FORCED.append(kind)
            try:
                return fresh(*args)
            finally:
                _FORCED.pop()
        _FRESH[key] = run
    return _FRESH[key]


@njit(cache=True, inline="always")
def tile_out(tile, out, t0, r0, R, TOK, T):
    """out[t0 + t, r0 + r] = tile[t * R + r] for the tile's tokens below T (the rest are padding)."""
    for t in range(min(TOK, T - t0)):
        for r in range(R):
            out[t0 + t, r0 + r] = tile[t * R + r]


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
def block_sums(xq, n, factor):
    """factor * the sum of each token's int8 activations per block of n: (T, K / n) int32."""
    T = xq.shape[0]
    nb = xq.shape[1] // n
    out = np.empty((T, nb), np.int32)
    for t in prange(T):
        for b in range(nb):
            s = np.int32(0)
            for i in range(n):
                s += np.int32(xq[t, n * b + i])
            out[t, b] = factor * s
    return out


def _vectors(kind):
    R = SHAPES[kind][0]
    return ir.VectorType(F32, R), ir.VectorType(I32, R), ir.VectorType(I8, 4 * R), ir.VectorType(I16, 2 * R)


def _data_pointers(context, builder, sig, args, n):
    """i8* to the data of the first n (array) arguments."""
    return [builder.bitcast(context.make_array(sig.args[i])(context, builder, args[i]).data, I8.as_pointer())
            for i in range(n)]


def _int_dots(builder, kind, buf, wbase, n_groups, xq, xbase, toks, K, i16_run=8):
    """For each token: the R rows' int32 dots of 4 * n_groups values (groups of 4 at buf + wbase, R rows per group)
    with the token's int8 activations at xq + t*K + xbase. vpdpbusd on VNNI; elsewhere vpmaddubsw pairs summed in
    int16 over `i16_run` groups (the caller's bound against overflow), then vpmaddwd with ones."""
    vf, vi, vb, vs = _vectors(kind)
    R = vi.count
    zi, zs = ir.Constant(vi, [0] * R), ir.Constant(vs, [0] * (2 * R))
    ones = ir.Constant(vs, [1] * (2 * R))
    ints = [zi] * len(toks)
    pairs = [zs] * len(toks)
    for g in range(n_groups):
        w = load(builder, buf, builder.add(wbase, c64(4 * R * g)), vb)
        for t, tok in enumerate(toks):
            at = builder.add(builder.mul(tok, K), builder.add(xbase, c64(4 * g)))
            y = builder.bitcast(splat(builder, load(builder, xq, at, I32), R), vb)
            if kind == "vnni512":
                ints[t] = x86(builder, "llvm.x86.avx512.vpdpbusd.512", vi,
                              [ints[t], builder.bitcast(w, vi), builder.bitcast(y, vi)])
                continue
            pairs[t] = builder.add(pairs[t], maddubs(builder, w, y, kind == "avx2"))
            if (g + 1) % i16_run == 0 or g == n_groups - 1:
                ints[t] = builder.add(ints[t], madd(builder, pairs[t], ones, kind == "avx2"))
                pairs[t] = zs
    return ints


def fma_fn(builder, vf):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf, vf, vf]), f"llvm.fma.v{vf.count}f32")


def _store_tiles(builder, vf, tile, accs, minus=None):
    out = builder.bitcast(tile, vf.as_pointer())
    for t, acc in enumerate(accs):
        v = builder.load(acc)
        if minus is not None:
            v = builder.fsub(v, builder.load(minus[t]))
        builder.store(v, builder.gep(out, [c64(t)]), align=4)


def _tile_codegen(kind):
    R, TOK = SHAPES[kind]
    vf, vi, _, _ = _vectors(kind)

    def codegen(context, builder, sig, args):
        buf, dw, xq, ys8, dx, tile = _data_pointers(context, builder, sig, args, 6)
        t0, nb, K = args[6], args[7], args[8]
        dw, dx = builder.bitcast(dw, F32.as_pointer()), builder.bitcast(dx, F32.as_pointer())
        ys8 = builder.bitcast(ys8, I32.as_pointer())
        fma = fma_fn(builder, vf)
        accs = [cgutils.alloca_once_value(builder, ir.Constant(vf, [0.0] * R)) for _ in range(TOK)]
        tok = [builder.add(t0, c64(t)) for t in range(TOK)]
        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            ints = _int_dots(builder, kind, buf, builder.mul(b, c64(32 * R)), 8, xq, builder.mul(b, c64(32)), tok, K)
            dwb = builder.load(builder.bitcast(builder.gep(dw, [builder.mul(b, c64(R))]), vf.as_pointer()), align=4)
            for t in range(TOK):
                tb = builder.add(builder.mul(tok[t], nb), b)
                isum = builder.sub(ints[t], splat(builder, builder.load(builder.gep(ys8, [tb])), R))
                dd = builder.fmul(dwb, splat(builder, builder.load(builder.gep(dx, [tb])), R))
                builder.store(builder.call(fma, [builder.sitofp(isum, vf), dd, builder.load(accs[t])]), accs[t])
        _store_tiles(builder, vf, tile, accs)
        return context.get_dummy_value()
    return codegen


@intrinsic
def _q4_0_tile(typingctx, buf, dw, xq, ys8, dx, tile, t0, nb, K):
    return types.void(buf, dw, xq, ys8, dx, tile, t0, nb, K), _host_codegen("q4_0", _tile_codegen)


@njit(cache=True, parallel=True)
def _q4_0_gemm(W, K, xq, dx, T, out, n_threads, R, TOK):
    """out[t, r] for t < T (xq, dx padded to whole tiles of TOK tokens), tiles of R rows spread over the threads."""
    nb = K // 32
    Tp = xq.shape[0]
    ys8 = block_sums(xq, 32, 8)
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
                _q4_0_tile(buf, dw, xq, ys8, dx, tile, np.int64(t0), np.int64(nb), np.int64(K))
                tile_out(tile, out, t0, r0, R, TOK, T)


def q4_0_gemm(rows, K, xq, dx, out, n_threads, kind=None):
    """out (T, N) = the repacked Q4_0 product (ggml's order) for rows (N, K/32*18), xq (T, K) int8 and dx (T, K/32)
    the Q8_0 activations; False (nothing written) when N is not a whole number of the kernel's row tiles."""
    kind = kind or variant()
    R, TOK = SHAPES[kind]
    if rows.shape[0] % R:
        return False
    T = xq.shape[0]
    xq, dx = _padded(xq, dx, TOK)
    _for_kind(_q4_0_gemm, kind)(rows, K, xq, dx, T, out, n_threads, R, TOK)
    return True


# --- Q4_K: the gemm's fma pair per 2 sub-blocks (step 2) or the gemv's per super-block (step 8) ---------------
# Per row, token and super-block: sub-block j's dot_j = sum of nibble * xq over its 32 values (exact, as above),
# isum = sum over the step's sub-blocks of sc_j * dot_j, imin = sum of m_j * bsum_j (bsum_j: the sum of the
# token's 32 int8 activations), then acc = fma((float) isum, d * d_x, acc), accm = fma((float) imin, dmin * d_x,
# accm); result acc - accm (repack.q4_K_q8_K).

@njit(cache=True)
def unpack_q4_K(W, r0, R, nb, buf, d, dmin, sc, m):
    """Rows r0..r0+R-1 of Q4_K blocks -> buf[(8b + j)*32R + g*4R + r*4 + i] = value 32j + 4g + i of super-block b
    of row r0+r (sub-block j: the low (j even) or high (j odd) nibbles of qs[32 (j // 2) + l]); d, dmin [b*R + r];
    the 6-bit scale and min sc, m [(8b + j)*R + r] (get_scale_min_k4)."""
    for r in range(R):
        row = W[r0 + r]
        for b in range(nb):
            o = b * 144
            d[b * R + r] = get_fp16(row, o)
            dmin[b * R + r] = get_fp16(row, o + 2)
            for j in range(8):
                q = o + 4
                if j < 4:
                    s_, m_ = row[q + j] & np.uint8(63), row[q + j + 4] & np.uint8(63)
                else:
                    s_ = (row[q + j + 4] & np.uint8(15)) | ((row[q + j - 4] >> np.uint8(6)) << np.uint8(4))
                    m_ = (row[q + j + 4] >> np.uint8(4)) | ((row[q + j] >> np.uint8(6)) << np.uint8(4))
                sc[(8 * b + j) * R + r] = s_
                m[(8 * b + j) * R + r] = m_
                base = (8 * b + j) * 32 * R + r * 4
                for l in range(32):
                    byte = row[o + 16 + 32 * (j // 2) + l]
                    buf[base + (l // 4) * 4 * R + l % 4] = (byte >> np.uint8(4)) if j % 2 else (byte & np.uint8(15))


def _q4_K_tile_codegen(kind, step):
    R, TOK = SHAPES_Q4_K[kind]
    vf, vi, _, _ = _vectors(kind)

    def codegen(context, builder, sig, args):
        buf, d, dmin, sc, m, xq, bs, dx, tile = _data_pointers(context, builder, sig, args, 9)
        t0, nb, K = args[9], args[10], args[11]
        d, dmin, dx = (builder.bitcast(p, F32.as_pointer()) for p in (d, dmin, dx))
        sc, m, bs = (builder.bitcast(p, I32.as_pointer()) for p in (sc, m, bs))
        fma = fma_fn(builder, vf)
        zf, zi = ir.Constant(vf, [0.0] * R), ir.Constant(vi, [0] * R)
        accs = [cgutils.alloca_once_value(builder, zf) for _ in range(TOK)]
        accms = [cgutils.alloca_once_value(builder, zf) for _ in range(TOK)]
        tok = [builder.add(t0, c64(t)) for t in range(TOK)]

        def rows_vec(p, i, ty):
            return builder.load(builder.bitcast(builder.gep(p, [builder.mul(i, c64(R))]), ty.as_pointer()), align=4)

        isum = [cgutils.alloca_once_value(builder, zi) for _ in range(TOK)]
        imin = [cgutils.alloca_once_value(builder, zi) for _ in range(TOK)]

        def flush(b):
            """acc += (float) isum * (d * d_x), accm += (float) imin * (dmin * d_x); the integer sums restart."""
            db, dmb = rows_vec(d, b, vf), rows_vec(dmin, b, vf)
            for t in range(TOK):
                dxt = splat(builder, builder.load(builder.gep(dx, [builder.add(builder.mul(tok[t], nb), b)])), R)
                for acc, ints, dv in ((accs[t], isum[t], db), (accms[t], imin[t], dmb)):
                    builder.store(builder.call(fma, [builder.sitofp(builder.load(ints), vf), builder.fmul(dv, dxt),
                                                     builder.load(acc)]), acc)
                    builder.store(zi, ints)

        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            with cgutils.for_range(builder, c64(4)) as pairs:     # a loop, so that LLVM schedules one pair at a time
                for h in range(2):
                    sj = builder.add(builder.mul(b, c64(8)), builder.add(builder.mul(pairs.index, c64(2)), c64(h)))
                    xbase = builder.add(builder.mul(b, c64(256)), builder.mul(builder.sub(sj, builder.mul(b, c64(8))), c64(32)))
                    ints = _int_dots(builder, kind, buf, builder.mul(sj, c64(32 * R)), 8, xq, xbase, tok, K)
                    scj, mj = rows_vec(sc, sj, vi), rows_vec(m, sj, vi)
                    for t in range(TOK):
                        bsum = builder.load(builder.gep(bs, [builder.add(builder.mul(tok[t], builder.mul(nb, c64(8))), sj)]))
                        builder.store(builder.add(builder.load(isum[t]), builder.mul(scj, ints[t])), isum[t])
                        builder.store(builder.add(builder.load(imin[t]), builder.mul(mj, splat(builder, bsum, R))), imin[t])
                if step == 2:
                    flush(b)
            if step == 8:
                flush(b)
        _store_tiles(builder, vf, tile, accs, minus=accms)
        return context.get_dummy_value()
    return codegen


# variant -> (rows per tile, tokens per tile) for Q4_K: 5 vectors per token live (two float sums, two int sums, the dots)
SHAPES_Q4_K = {"vnni512": (16, 4), "avx2": (8, 2), "portable": (8, 2)}


@intrinsic
def _q4_K_tile_gemm(typingctx, buf, d, dmin, sc, m, xq, bs, dx, tile, t0, nb, K):
    return (types.void(buf, d, dmin, sc, m, xq, bs, dx, tile, t0, nb, K),
            _host_codegen("q4_K gemm", lambda kind: _q4_K_tile_codegen(kind, 2)))


@intrinsic
def _q4_K_tile_gemv(typingctx, buf, d, dmin, sc, m, xq, bs, dx, tile, t0, nb, K):
    return (types.void(buf, d, dmin, sc, m, xq, bs, dx, tile, t0, nb, K),
            _host_codegen("q4_K gemv", lambda kind: _q4_K_tile_codegen(kind, 8)))


@njit(cache=True, parallel=True)
def _q4_K_gemm(W, K, xq, dx, T, out, n_threads, R, TOK, gemm_order):
    nb = K // 256
    Tp = xq.shape[0]
    bs = block_sums(xq, 32, 1)
    n_tiles = W.shape[0] // R
    nw = min(n_threads, n_tiles)
    for wk in prange(nw):
        buf = np.empty(nb * 256 * R, np.uint8)
        d = np.empty(nb * R, np.float32)
        dmin = np.empty(nb * R, np.float32)
        sc = np.empty(nb * 8 * R, np.int32)
        m = np.empty(nb * 8 * R, np.int32)
        tile = np.empty(TOK * R, np.float32)
        for c in range(wk * n_tiles // nw, (wk + 1) * n_tiles // nw):
            r0 = c * R
            unpack_q4_K(W, r0, R, nb, buf, d, dmin, sc, m)
            for t0 in range(0, Tp, TOK):
                if gemm_order:
                    _q4_K_tile_gemm(buf, d, dmin, sc, m, xq, bs, dx, tile, np.int64(t0), np.int64(nb), np.int64(K))
                else:
                    _q4_K_tile_gemv(buf, d, dmin, sc, m, xq, bs, dx, tile, np.int64(t0), np.int64(nb), np.int64(K))
                tile_out(tile, out, t0, r0, R, TOK, T)


def _padded(xq, dx, tokens):
    T = xq.shape[0]
    Tp = -(-T // tokens) * tokens
    if Tp != T:
        xq = np.concatenate([xq, np.zeros((Tp - T, xq.shape[1]), np.int8)])
        dx = np.concatenate([dx, np.zeros((Tp - T, dx.shape[1]), np.float32)])
    return np.ascontiguousarray(xq), np.ascontiguousarray(dx)


def q4_K_gemm(rows, K, xq, dx, out, n_threads, gemm_order, kind=None):
    """out (T, N) = the repacked Q4_K product for rows (N, K/256*144), xq (T, K) int8 and dx (T, K/256) the Q8_K
    activations, every token in the gemm's order (gemm_order) or the gemv's; False (nothing written) when N is not
    a whole number of the kernel's row tiles."""
    kind = kind or variant()
    R, TOK = SHAPES_Q4_K[kind]
    if rows.shape[0] % R:
        return False
    T = xq.shape[0]
    xq, dx = _padded(xq, dx, TOK)
    _for_kind(_q4_K_gemm, kind)(rows, K, xq, dx, T, out, n_threads, R, TOK, gemm_order)
    return True


# --- Q6_K, ggml's tiled path (tiled.cpp, 8 tokens or more): per super-block the whole integer sum ---------------
# s1 = sum over the 16 sub-blocks of 16 of sc_j * (dot_j - 32 * bsum_j), dot_j the products of the unsigned 6-bit q
# with the int8 activations, bsum_j the sum of those activations (so sc_j * dot of (q - 32)); then
# res = d_w * (float) s1, out = fma(res, d_x, out) super-block after super-block (tiled.kquant_q8_K, tiled=True).

@njit(cache=True)
def unpack_q6_K(W, r0, R, nb, buf, d, sc):
    """Rows r0..r0+R-1 of Q6_K blocks -> buf[(64b + g)*4R + r*4 + i] = the unsigned q (0..63) of value 4g + i of
    super-block b (dequantize_row_q6_K's order); d[b*R + r]; sc[(16b + j)*R + r] the int8 scale of sub-block j."""
    for r in range(R):
        row = W[r0 + r]
        for b in range(nb):
            o = b * 210                     # ql[128] qh[64] scales[16] d
            d[b * R + r] = get_fp16(row, o + 208)
            for j in range(16):
                sc[(16 * b + j) * R + r] = np.int32(np.int8(row[o + 192 + j]))
            for n in range(2):
                for l in range(32):
                    ql0, ql1, qh = row[o + 64 * n + l], row[o + 64 * n + 32 + l], row[o + 128 + 32 * n + l]
                    e = 128 * n + l
                    for k, q in enumerate(((ql0 & np.uint8(15)) | ((qh & np.uint8(3)) << np.uint8(4)),
                                           (ql1 & np.uint8(15)) | (((qh >> np.uint8(2)) & np.uint8(3)) << np.uint8(4)),
                                           (ql0 >> np.uint8(4)) | (((qh >> np.uint8(4)) & np.uint8(3)) << np.uint8(4)),
                                           (ql1 >> np.uint8(4)) | (((qh >> np.uint8(6)) & np.uint8(3)) << np.uint8(4)))):
                        v = e + 32 * k
                        buf[(64 * b + v // 4) * 4 * R + r * 4 + v % 4] = q


# variant -> (rows, tokens) for Q6_K: three vectors per token live (float sum, int sum, the dots)
SHAPES_Q6_K = {"vnni512": (16, 8), "avx2": (8, 4), "portable": (8, 4)}


def _q6_K_tile_codegen(kind):
    R, TOK = SHAPES_Q6_K[kind]
    vf, vi, _, _ = _vectors(kind)

    def codegen(context, builder, sig, args):
        buf, d, sc, xq, bs32, dx, tile = _data_pointers(context, builder, sig, args, 7)
        t0, nb, K = args[7], args[8], args[9]
        d, dx = (builder.bitcast(p, F32.as_pointer()) for p in (d, dx))
        sc, bs32 = (builder.bitcast(p, I32.as_pointer()) for p in (sc, bs32))
        fma = fma_fn(builder, vf)
        zi = ir.Constant(vi, [0] * R)
        accs = [cgutils.alloca_once_value(builder, ir.Constant(vf, [0.0] * R)) for _ in range(TOK)]
        tok = [builder.add(t0, c64(t)) for t in range(TOK)]
        nsub = builder.mul(nb, c64(16))
        isum = [cgutils.alloca_once_value(builder, zi) for _ in range(TOK)]
        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            with cgutils.for_range(builder, c64(16)) as sub:     # a loop, so that LLVM schedules one sub-block at a time
                j = sub.index
                sj = builder.add(builder.mul(b, c64(16)), j)
                ints = _int_dots(builder, kind, buf, builder.mul(sj, c64(16 * R)), 4, xq,
                                 builder.add(builder.mul(b, c64(256)), builder.mul(j, c64(16))), tok, K, i16_run=2)
                scj = builder.load(builder.bitcast(builder.gep(sc, [builder.mul(sj, c64(R))]), vi.as_pointer()), align=4)
                for t in range(TOK):
                    off = builder.load(builder.gep(bs32, [builder.add(builder.mul(tok[t], nsub), sj)]))
                    prod = builder.mul(scj, builder.sub(ints[t], splat(builder, off, R)))
                    builder.store(builder.add(builder.load(isum[t]), prod), isum[t])
            db = builder.load(builder.bitcast(builder.gep(d, [builder.mul(b, c64(R))]), vf.as_pointer()), align=4)
            for t in range(TOK):
                dxt = splat(builder, builder.load(builder.gep(dx, [builder.add(builder.mul(tok[t], nb), b)])), R)
                res = builder.fmul(db, builder.sitofp(builder.load(isum[t]), vf))
                builder.store(builder.call(fma, [res, dxt, builder.load(accs[t])]), accs[t])
                builder.store(zi, isum[t])
        _store_tiles(builder, vf, tile, accs)
        return context.get_dummy_value()
    return codegen


@intrinsic
def _q6_K_tile(typingctx, buf, d, sc, xq, bs32, dx, tile, t0, nb, K):
    return types.void(buf, d, sc, xq, bs32, dx, tile, t0, nb, K), _host_codegen("q6_K", _q6_K_tile_codegen)


@njit(cache=True, parallel=True)
def _q6_K_gemm(W, K, xq, dx, T, out, n_threads, R, TOK):
    nb = K // 256
    Tp = xq.shape[0]
    bs32 = block_sums(xq, 16, 32)
    n_tiles = W.shape[0] // R
    nw = min(n_threads, n_tiles)
    for wk in prange(nw):
        buf = np.empty(nb * 256 * R, np.uint8)
        d = np.empty(nb * R, np.float32)
        sc = np.empty(nb * 16 * R, np.int32)
        tile = np.empty(TOK * R, np.float32)
        for c in range(wk * n_tiles // nw, (wk + 1) * n_tiles // nw):
            r0 = c * R
            unpack_q6_K(W, r0, R, nb, buf, d, sc)
            for t0 in range(0, Tp, TOK):
                _q6_K_tile(buf, d, sc, xq, bs32, dx, tile, np.int64(t0), np.int64(nb), np.int64(K))
                tile_out(tile, out, t0, r0, R, TOK, T)


def q6_K_gemm(rows, K, xq, dx, out, n_threads, kind=None):
    """out (T, N) = ggml's tiled Q6_K product for rows (N, K/256*210), xq (T, K) int8 and dx (T, K/256) the Q8_K
    activations; False (nothing written) when N is not a whole number of the kernel's row tiles."""
    kind = kind or variant()
    R, TOK = SHAPES_Q6_K[kind]
    if rows.shape[0] % R:
        return False
    T = xq.shape[0]
    xq, dx = _padded(xq, dx, TOK)
    _for_kind(_q6_K_gemm, kind)(rows, K, xq, dx, T, out, n_threads, R, TOK)
    return True
