"""Attention on the F16 KV cache in llama.cpp's float order, written so that LLVM vectorizes it.

ops._attention_job is the readable spec (and the path for an F32 cache or a host without fma). This kernel
computes the same sums bit for bit where numba emits hardware fma (`fastmath={"contract"}` turns
`a * b + c` into one fma, as ggml's _mm256_fmadd_ps), with three changes that only affect speed:
- K and V are read as float32 rows converted once per call (fp16 -> fp32 is exact), not through a table;
- a batch's scores are computed 16 keys at a time with the 8 lanes in registers (_scores16), and its value sums
  lane by lane with the lane's row of D values in registers (_values_64 / _values_128; each lane still takes
  its keys in order);
- the 8 (tinyBLAS) or 32 (ggml_vec_dot_f16) lanes of a dot product are the innermost loop: one SIMD fma;
- the probabilities are rounded to fp16 with integer arithmetic on their bits.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from workbench.cpu.fp16 import round_fp16
from workbench.cpu.ir import F32, I64, half_to_float, splat
from workbench.cpu.simd import hsum8, v_expf

_FAST = {"contract"}


@njit(cache=True, fastmath=_FAST, inline="always")
def _reduce32(a):
    """GGML_F16_VEC_REDUCE on 4 accumulators of 8 lanes (a[8 * k + lane]): pairwise, then two hadds."""
    x0 = (a[0] + a[16]) + (a[8] + a[24])
    x1 = (a[1] + a[17]) + (a[9] + a[25])
    x2 = (a[2] + a[18]) + (a[10] + a[26])
    x3 = (a[3] + a[19]) + (a[11] + a[27])
    x4 = (a[4] + a[20]) + (a[12] + a[28])
    x5 = (a[5] + a[21]) + (a[13] + a[29])
    x6 = (a[6] + a[22]) + (a[14] + a[30])
    x7 = (a[7] + a[23]) + (a[15] + a[31])
    return ((x0 + x4) + (x1 + x5)) + ((x2 + x6) + (x3 + x7))


@njit(cache=True)
def round_f16_inplace(a, n):
    """a[:n] (float32, finite) -> the nearest fp16 values, ties to even, as float32 (F16C's vcvtps2ph)."""
    bits = a.view(np.uint32)
    for i in range(n):
        u = bits[i]
        mag = u & np.uint32(0x7FFFFFFF)
        if mag >= np.uint32(0x477FF000):             # >= 65520: rounds to infinity
            bits[i] = (u & np.uint32(0x80000000)) | np.uint32(0x7F800000)
        elif mag >= np.uint32(0x38800000):           # fp16 normal range: keep 10 mantissa bits
            bits[i] = (u + np.uint32(0xFFF) + ((u >> np.uint32(13)) & np.uint32(1))) & np.uint32(0xFFFFE000)
        else:                                        # fp16 subnormal: multiples of 2^-24
            a[i] = np.float32(np.rint(a[i] * np.float32(16777216.0)) * np.float32(1.0 / 16777216.0))


@njit(cache=True)
def softmax_scores(w, n):
    """ops._softmax_inplace(w, n, masked_tail=True), with the exponentials vectorized (simd.v_expf)."""
    mx = np.float32(-np.inf)
    for i in range(n):
        mx = max(mx, w[i])
    x = np.empty(n, np.float32)
    for i in range(n):
        x[i] = w[i] - mx
    v_expf(x, w[:n])
    total = 0.0
    for c in range(0, n, 8):
        if c + 8 <= n:
            total += np.float64(hsum8(w[c:c + 8]))
        else:                                        # llama.cpp pads n_kv: the masked lanes add 0
            chunk = np.zeros(8, np.float32)
            chunk[:n - c] = w[c:n]
            total += np.float64(hsum8(chunk))
    inv = np.float32(1.0 / total)
    for i in range(n):
        w[i] = w[i] * inv


@njit(cache=True, parallel=True)
def _keys_by_row(kb, n_kv):
    """(n_head_kv * D, n_kv rounded up to 16) float32: the first n_kv keys of the cache (fp16 bits kb), one dimension
    per row, zeros after them."""
    kT = np.zeros((kb.shape[1], -(-n_kv // 16) * 16), np.float32)
    for c in prange(kb.shape[1]):
        for j in range(n_kv):
            kT[c, j] = half_to_float(kb[j, c])
    return kT


_V16F = ir.VectorType(F32, 16)


def _fma16(builder):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16F, [_V16F] * 3), "llvm.fma.v16f32")


def _data(context, builder, sig, args, i):
    return builder.bitcast(context.make_array(sig.args[i])(context, builder, args[i]).data, F32.as_pointer())


@intrinsic
def _scores16(typingctx, kT, row0, qv, n8, p, n16, scale):
    """p[j] = tinyBLAS's dot of qv with key j, times scale, 16 keys at a time (kT's rows row0 + d, d < 8 * n8): lane l
    of each key is one fma chain over d = l, l + 8, ..., then hsum_float_8 ((a0 + a4) + (a2 + a6)) + ((a1 + a5) +
    (a3 + a7)); the 8 lanes live in 8 vectors of 16 keys."""
    sig = types.void(kT, row0, qv, n8, p, n16, scale)

    def codegen(context, builder, sig, args):
        k_p, q_p, p_p = (_data(context, builder, sig, args, i) for i in (0, 2, 4))
        row0, n8, n16, scale = args[1], args[3], args[5], args[6]
        ka = context.make_array(sig.args[0])(context, builder, args[0])
        ld = builder.udiv(cgutils.unpack_tuple(builder, ka.strides)[0], ir.Constant(I64, 4))   # floats per row
        fma = _fma16(builder)
        with cgutils.for_range(builder, n16) as chunk:
            j0 = builder.mul(chunk.index, ir.Constant(I64, 16))
            accs = [cgutils.alloca_once_value(builder, ir.Constant(_V16F, [0.0] * 16)) for _ in range(8)]
            with cgutils.for_range(builder, n8) as step:
                d0 = builder.mul(step.index, ir.Constant(I64, 8))
                for lane in range(8):
                    d = builder.add(d0, ir.Constant(I64, lane))
                    qd = splat(builder, builder.load(builder.gep(q_p, [d])), 16)
                    at = builder.add(builder.mul(builder.add(row0, d), ld), j0)
                    kv = builder.load(builder.bitcast(builder.gep(k_p, [at]), _V16F.as_pointer()), align=4)
                    builder.store(builder.call(fma, [qd, kv, builder.load(accs[lane])]), accs[lane])
            a = [builder.load(x) for x in accs]
            s = builder.fadd(builder.fadd(builder.fadd(a[0], a[4]), builder.fadd(a[2], a[6])),
                             builder.fadd(builder.fadd(a[1], a[5]), builder.fadd(a[3], a[7])))
            s = builder.fmul(s, splat(builder, scale, 16))
            builder.store(s, builder.bitcast(builder.gep(p_p, [j0]), _V16F.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


def _values_kernel(nvec):
    """An intrinsic (vf, col0, p, lane, n_kv, acc): acc[lane, d] for d < 16 * nvec, the fma chain over keys
    j = lane, lane + 8, ... < n_kv of p[j] * vf[j, col0 + d], in order; nvec vectors of 16 values in registers."""
    def values(typingctx, vf, col0, p, lane, n_kv, acc):
        sig = types.void(vf, col0, p, lane, n_kv, acc)

        def codegen(context, builder, sig, args):
            v_p, p_p, a_p = (_data(context, builder, sig, args, i) for i in (0, 2, 5))
            col0, lane, n_kv = args[1], args[3], args[4]
            va = context.make_array(sig.args[0])(context, builder, args[0])
            ld = builder.udiv(cgutils.unpack_tuple(builder, va.strides)[0], ir.Constant(I64, 4))
            fma = _fma16(builder)
            n = builder.sdiv(builder.add(builder.sub(n_kv, lane), ir.Constant(I64, 7)), ir.Constant(I64, 8))
            accs = [cgutils.alloca_once_value(builder, ir.Constant(_V16F, [0.0] * 16)) for _ in range(nvec)]
            with cgutils.for_range(builder, n) as it:
                j = builder.add(lane, builder.mul(it.index, ir.Constant(I64, 8)))
                pj = splat(builder, builder.load(builder.gep(p_p, [j])), 16)
                row = builder.add(builder.mul(j, ld), col0)
                for k in range(nvec):
                    at = builder.add(row, ir.Constant(I64, 16 * k))
                    vv = builder.load(builder.bitcast(builder.gep(v_p, [at]), _V16F.as_pointer()), align=4)
                    builder.store(builder.call(fma, [pj, vv, builder.load(accs[k])]), accs[k])
            base = builder.mul(lane, ir.Constant(I64, 16 * nvec))
            for k in range(nvec):
                at = builder.add(base, ir.Constant(I64, 16 * k))
                builder.store(builder.load(accs[k]), builder.bitcast(builder.gep(a_p, [at]), _V16F.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen
    values.__name__ = f"_values_{16 * nvec}"
    return intrinsic(values)


_values_64, _values_128 = _values_kernel(4), _values_kernel(8)


@njit(cache=True, parallel=True)
def _values_f32(vb, n_kv):
    """(n_kv, n_head_kv * D) float32: the first n_kv values of the cache (fp16 bits vb), converted once."""
    v = np.empty((n_kv, vb.shape[1]), np.float32)
    for j in prange(n_kv):
        for c in range(vb.shape[1]):
            v[j, c] = half_to_float(vb[j, c])
    return v


@njit(cache=True, fastmath=_FAST, inline="always")
def _reduce32_columns(acc, o):
    """o[d] = GGML_F16_VEC_REDUCE of column d of acc (32, D), for all d at once (SIMD over d)."""
    for d in range(o.shape[0]):
        x0 = (acc[0, d] + acc[16, d]) + (acc[8, d] + acc[24, d])
        x1 = (acc[1, d] + acc[17, d]) + (acc[9, d] + acc[25, d])
        x2 = (acc[2, d] + acc[18, d]) + (acc[10, d] + acc[26, d])
        x3 = (acc[3, d] + acc[19, d]) + (acc[11, d] + acc[27, d])
        x4 = (acc[4, d] + acc[20, d]) + (acc[12, d] + acc[28, d])
        x5 = (acc[5, d] + acc[21, d]) + (acc[13, d] + acc[29, d])
        x6 = (acc[6, d] + acc[22, d]) + (acc[14, d] + acc[30, d])
        x7 = (acc[7, d] + acc[23, d]) + (acc[15, d] + acc[31, d])
        o[d] = ((x0 + x4) + (x1 + x5)) + ((x2 + x6) + (x3 + x7))


@njit(cache=True, parallel=True, fastmath=_FAST)
def attention_f16(q, kb, vb, n_past, n_head_kv, scale, out):
    """As ops._attention_job over all (token, head) jobs, on the F16 cache itself: kb, vb (n_kv, n_head_kv * D)
    uint16, the fp16 bits (converted where they are read, exactly). Batches (T >= 2) need D % 8 == 0
    (tinyBLAS's condition for taking the product)."""
    T, H, D = q.shape
    group = H // n_head_kv
    batch = T >= 2
    D32 = D - D % 32
    kT = _keys_by_row(kb, n_past + T if batch else 0)     # batches: keys along a row (SIMD over keys)
    vf = _values_f32(vb, n_past + T if batch else 0)       # batches: values as float32, converted once
    for job in prange(T * H):
        # token order 0, T-1, 1, T-2, ...: prange's contiguous share of jobs per thread mixes short and long rows
        u = job // H
        t = u // 2 if u % 2 == 0 else T - 1 - u // 2
        h = job % H
        c0 = (h // group) * D
        n_kv = n_past + t + 1
        qv = np.empty(D, np.float32)
        for d in range(D):
            qv[d] = round_fp16(q[t, h, d])
        n16 = -(-n_kv // 16)
        p = np.empty(16 * n16, np.float32)
        lanes = np.empty(32, np.float32)
        if batch:           # tinyBLAS: 8 lanes, one fma chain each over d = lane, lane + 8, ..., 16 keys at a time
            _scores16(kT, c0, qv, D // 8, p, n16, scale)
        else:               # ggml_vec_dot_f16: 32 lanes over chunks of 32, reduce, tail in double
            for j in range(n_kv):
                k = kb[j, c0:c0 + D]
                for lane in range(32):
                    lanes[lane] = 0.0
                for c in range(0, D32, 32):
                    for lane in range(32):
                        lanes[lane] = qv[c + lane] * half_to_float(k[c + lane]) + lanes[lane]
                s = _reduce32(lanes) if D32 > 0 else np.float32(0.0)
                s64 = np.float64(s)
                for d in range(D32, D):
                    s64 += np.float64(qv[d] * half_to_float(k[d]))
                p[j] = np.float32(s64) * scale
        softmax_scores(p, n_kv)
        round_f16_inplace(p, n_kv)
        nl = 8 if batch else 32
        acc = np.zeros((nl, D), np.float32)
        if batch and (D == 64 or D == 128):     # lane l takes keys l, l + 8, ... in order, its row in registers
            for lane in range(nl):
                if D == 64:
                    _values_64(vf, c0, p, lane, n_kv, acc)
                else:
                    _values_128(vf, c0, p, lane, n_kv, acc)
        elif batch:
            for lane in range(nl):
                a = acc[lane]
                for j in range(lane, n_kv, nl):
                    pj = p[j]
                    v = vf[j, c0:c0 + D]
                    for d in range(D):
                        a[d] = pj * v[d] + a[d]
        else:               # ggml_vec_dot_f16's 32 lanes, keys in order
            for j in range(n_kv):
                pj = p[j]
                a = acc[j % nl]
                v = vb[j, c0:c0 + D]
                for d in range(D):
                    a[d] = pj * half_to_float(v[d]) + a[d]
        o = out[t, h * D:(h + 1) * D]
        if batch:
            for d in range(D):
                o[d] = ((acc[0, d] + acc[4, d]) + (acc[2, d] + acc[6, d])) + ((acc[1, d] + acc[5, d]) + (acc[3, d] + acc[7, d]))
        else:
            _reduce32_columns(acc, o)
