"""Vector code for the dequantize kernels: LLVM IR through numba's @intrinsic.

Every block format dequantizes as y = A * float(q) (+ B or - B): small integers q unpacked from the block's
bytes, times a float group scale A (ggml's d * sc, taken in float32 like ggml), plus or minus a group
offset B. Written as plain numba loops, LLVM either unrolls the 16- or 32-element loops into scalar code
or vectorizes them behind run-time alias checks and remainders; spelled out here on <16 x i8> / <16 x float>
vectors they become a handful of AVX2 instructions per 16 weights, with the same float operations (one
fmul, then one fadd / fsub, no fma contraction) as the readable numpy references in each format module.

A format module writes one block as an `emit(builder, block, y)` function (block: i8* to the block's bytes,
y: float* to its first output) and turns it into a row kernel with ``row_kernel``; its numba driver is a
prange over rows calling that kernel.

Target features are looked up at compile time (workbench.cpu.features): pshufb (has_avx2) and vcvtph2ps
(has_f16c) where the CPU has them, portable LLVM code elsewhere (a chain of selects, an integer fp16
conversion). The dot-product kernels (vec_dot_ir, vec_dot_avx2, sgemm_f16, vec_dot_kquants, repack_gemv,
vec_dot_q5) build on the same helpers; the ones only they need (fma, hsum_float_8, AVX2's integer
products) are at the end of this module.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from workbench.gguf.constants import KVALUES_IQ4NL
from workbench.cpu.features import has_avx2, has_f16c

F32 = ir.FloatType()
I8 = ir.IntType(8)
I16 = ir.IntType(16)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
V8F = ir.VectorType(F32, 8)      # one __m256 of floats
V8I = ir.VectorType(I32, 8)      # __m256i as 8 int32
V4I = ir.VectorType(I32, 4)
V16I = ir.VectorType(I32, 16)
V32B = ir.VectorType(I8, 32)     # __m256i as 32 bytes
V16B = ir.VectorType(I8, 16)
V16S = ir.VectorType(I16, 16)    # __m256i as 16 int16
V32S = ir.VectorType(I16, 32)


def x86(builder, name, ret, args):
    """A call to the LLVM intrinsic `name` (an x86 instruction: only where the CPU has it)."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, [a.type for a in args]), name)
    return builder.call(fn, args)


def splat(builder, value, n=8):
    """<n x T> with every lane `value`."""
    vec = ir.VectorType(value.type, n)
    v = builder.insert_element(ir.Constant(vec, ir.Undefined), value, ir.Constant(I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vec, ir.Undefined), ir.Constant(ir.VectorType(I32, n), [0] * n))


def const_vec(ty, values):
    """<len(values) x ty> constant."""
    return ir.Constant(ir.VectorType(ty, len(values)), list(values))


def ptr(builder, base, offset, ty):
    """Pointer to a `ty` at byte `offset` (an int or an i64 value) from an i8* `base`, no alignment assumed."""
    if isinstance(offset, int):
        offset = ir.Constant(I64, offset)
    return builder.bitcast(builder.gep(base, [offset]), ty.as_pointer())


def load(builder, base, offset, ty):
    return builder.load(ptr(builder, base, offset, ty), align=1)


def load_bytes(builder, base, offset, n):
    """<n x i8> at byte `offset`."""
    return load(builder, base, offset, ir.VectorType(I8, n))


def half_to_f32(builder, bits):
    """fp16 bit patterns (an i16 or an <n x i16>) -> float32, exact for every finite value.

    With F16C: fpext (vcvtph2ps, which quiets a signaling NaN). Elsewhere (where fpext would become a call
    to compiler-rt's __extendhfsf2, which numba's JIT does not link): the 15 magnitude bits moved up 13
    places and scaled by 2^112 (exact: normal and subnormal halves alike), exponent-31 patterns rebuilt as
    inf / NaN with their payload (numpy's cast), then the sign."""
    vec = isinstance(bits.type, ir.VectorType)
    n = bits.type.count if vec else None

    def ty(t):
        return ir.VectorType(t, n) if vec else t

    def c(v, t=I32):
        return splat(builder, t(v), n) if vec else t(v)

    if has_f16c():
        return builder.fpext(builder.bitcast(bits, ty(ir.HalfType())), ty(F32))
    u = builder.zext(bits, ty(I32))
    mag = builder.shl(builder.and_(u, c(0x7FFF)), c(13))
    scaled = builder.bitcast(builder.fmul(builder.bitcast(mag, ty(F32)), c(2.0 ** 112, F32)), ty(I32))
    special = builder.icmp_unsigned("==", builder.and_(u, c(0x7C00)), c(0x7C00))
    magnitude = builder.select(special, builder.or_(mag, c(0x7F800000)), scaled)
    return builder.bitcast(builder.or_(magnitude, builder.shl(builder.and_(u, c(0x8000)), c(16))), ty(F32))


def fp16(builder, base, offset):
    """The fp16 at byte `offset` as float32 (exact, see half_to_f32)."""
    return half_to_f32(builder, load(builder, base, offset, I16))


def byte_at(builder, base, offset):
    """The uint8 at byte `offset`, zero-extended to i32."""
    return builder.zext(load(builder, base, offset, I8), I32)


def vand(builder, v, c):
    return builder.and_(v, splat(builder, ir.Constant(v.type.element, c), v.type.count))


def vshr(builder, v, c):
    """Logical shift right of every lane by the constant c."""
    return builder.lshr(v, splat(builder, ir.Constant(v.type.element, c), v.type.count))


def vshl(builder, v, c):
    return builder.shl(v, splat(builder, ir.Constant(v.type.element, c), v.type.count))


def vsub(builder, v, c):
    return builder.sub(v, splat(builder, ir.Constant(v.type.element, c), v.type.count))


def half(builder, v, which):
    """Lanes [0, n/2) (which=0) or [n/2, n) (which=1) of a vector."""
    n = v.type.count // 2
    return builder.shuffle_vector(v, ir.Constant(v.type, ir.Undefined),
                                  const_vec(I32, range(which * n, which * n + n)))


def scale_f32(builder, d, sc):
    """float32 d * (float) sc for an integer sc: ggml's d * scale, one rounding."""
    return builder.fmul(d, builder.sitofp(sc, F32))


def store_affine(builder, out, index, q, a, b=None, subtract=False):
    """out[index : index + n] = a * float(q) (+ b, or - b when `subtract`), q an <n x i8> of signed levels.

    out is a float*, index an int or i64 element index; one fmul and one fadd / fsub, no fma."""
    n = q.type.count
    y = builder.fmul(splat(builder, a, n), builder.sitofp(q, ir.VectorType(F32, n)))
    if b is not None:
        bb = splat(builder, b, n)
        y = builder.fsub(y, bb) if subtract else builder.fadd(y, bb)
    store(builder, out, index, y)


def row_kernel(emit, qk, nbytes, with_table=False):
    """@intrinsic (blocks, out, r) -> None: emit the blocks of row r of the 2-D uint8 `blocks` into row r of
    the 2-D float32 `out` (rows contiguous; blocks of `qk` weights stored in `nbytes` bytes). Only whole
    blocks: out.shape[1] // qk of them (F16 / BF16 take 32 weights at a time and finish the row in numba).
    with_table: the intrinsic takes a 4th argument, a contiguous float32 array (a grid of values), whose
    data pointer `emit` gets as a 4th argument."""
    def codegen(context, builder, sig, args):
        arrays = [context.make_array(ty)(context, builder, arr) for ty, arr in zip(sig.args[:2], args[:2])]
        src, dst = [builder.gep(builder.bitcast(a.data, I8.as_pointer()),
                                [builder.mul(args[2], cgutils.unpack_tuple(builder, a.strides)[0])]) for a in arrays]
        dst = builder.bitcast(dst, F32.as_pointer())
        extra = []
        if with_table:
            table = context.make_array(sig.args[3])(context, builder, args[3]).data
            extra = [builder.bitcast(table, F32.as_pointer())]
        n_out = cgutils.unpack_tuple(builder, arrays[1].shape)[1]
        with cgutils.for_range(builder, builder.udiv(n_out, ir.Constant(I64, qk))) as loop:
            emit(builder, builder.gep(src, [builder.mul(loop.index, ir.Constant(I64, nbytes))]),
                 builder.gep(dst, [builder.mul(loop.index, ir.Constant(I64, qk))]), *extra)
        return context.get_dummy_value()

    if with_table:
        @intrinsic
        def kernel_with_table(typingctx, blocks, out, r, table):
            return types.void(blocks, out, r, table), codegen
        return kernel_with_table

    @intrinsic
    def kernel(typingctx, blocks, out, r):
        return types.void(blocks, out, r), codegen
    return kernel


def lookup16(builder, idx, table):
    """<16 x i8> of table[idx[l]] for indices 0..15 and a 16-entry int8 `table`: one pshufb on x86 with SSSE3
    (every AVX2 CPU), else a chain of selects."""
    vec = ir.VectorType(I8, 16)
    if has_avx2():
        return x86(builder, "llvm.x86.ssse3.pshuf.b.128", vec, [const_vec(I8, [int(v) & 0xFF for v in table]), idx])
    out = splat(builder, I8(int(table[0]) & 0xFF), 16)
    for i in range(1, 16):
        out = builder.select(builder.icmp_unsigned("==", idx, splat(builder, I8(i), 16)),
                             splat(builder, I8(int(table[i]) & 0xFF), 16), out)
    return out


def flip_signs(builder, y, word, first=0):
    """y (<n x float>) with lane l negated where bit first + l of the i32 `word` is set: the sign bit xored,
    which is exactly y * -1.0 for every value but NaN (whose sign is then not defined either way)."""
    n = y.type.count
    bits = builder.lshr(splat(builder, word, n), const_vec(I32, range(first, first + n)))
    mask = vshl(builder, vand(builder, bits, 1), 31)
    vi = ir.VectorType(I32, n)
    return builder.bitcast(builder.xor(builder.bitcast(y, vi), mask), y.type)


def store(builder, out, index, y):
    """out[index : index + n] = y (<n x float>), out a float*."""
    if isinstance(index, int):
        index = ir.Constant(I64, index)
    builder.store(y, builder.bitcast(builder.gep(out, [index]), y.type.as_pointer()), align=4)


def load_floats(builder, table, index, n):
    """<n x float> from float* `table` at element `index` (an i64 value)."""
    return builder.load(builder.bitcast(builder.gep(table, [index]), ir.VectorType(F32, n).as_pointer()), align=4)


def bit_planes(builder, v, bit, shift=4):
    """((v >> bit) & 1) << shift on every lane of an integer vector (a high bit moved into place)."""
    return vshl(builder, vand(builder, vshr(builder, v, bit), 1), shift)


def word_bits(builder, word, first, n, shift=4):
    """<n x i8> whose lane l is ((word >> (first + l)) & 1) << shift, for an i32 `word`."""
    w = builder.lshr(splat(builder, word, n), const_vec(I32, range(first, first + n)))
    return builder.trunc(vshl(builder, vand(builder, w, 1), shift), ir.VectorType(I8, n))


def emit_legacy(builder, block, y, qs_at, qh_at=None, m_at=None, bias=0):
    """A 32-weight block of Q4_0 / Q4_1 / Q5_0 / Q5_1: fp16 d at byte 0 (and the min m at m_at), 16 bytes
    of nibbles at qs_at (low nibbles are weights 0..15, high nibbles 16..31), for the 5-bit formats the
    fifth bits as the i32 at qh_at (bit j for weight j). y = d * (q - bias) (+ m)."""
    d = fp16(builder, block, 0)
    m = fp16(builder, block, m_at) if m_at is not None else None
    q = load_bytes(builder, block, qs_at, 16)
    parts = [vand(builder, q, 0x0F), vshr(builder, q, 4)]
    if qh_at is not None:
        qh = load(builder, block, qh_at, I32)
        parts = [builder.or_(p, word_bits(builder, qh, 16 * k, 16)) for k, p in enumerate(parts)]
    for k, p in enumerate(parts):
        store_affine(builder, y, 16 * k, vsub(builder, p, bias) if bias else p, d, m)


def emit_f16_run(builder, h, y):
    """32 fp16 values at `h` -> float32 at `y`, numpy's cast: vcvtph2ps, and for exponent-31 patterns
    (inf / NaN, whose signaling bit the hardware would set) the float rebuilt from the bits (sign << 16 |
    0x7F800000 | mantissa << 13); see common.fp16_to_fp32_vec for one value. Runs without such patterns
    (all of them in practice) store the conversion as it is."""
    bits = load(builder, h, 0, ir.VectorType(I16, 32))
    f = half_to_f32(builder, bits)
    dst = builder.bitcast(y, f.type.as_pointer())
    if not has_f16c():                                  # the integer conversion keeps NaN payloads already
        builder.store(f, dst, align=4)
        return
    special16 = builder.icmp_unsigned("==", vand(builder, bits, 0x7C00), splat(builder, I16(0x7C00), 32))
    with builder.if_else(builder.icmp_unsigned("!=", builder.bitcast(special16, I32), I32(0)), likely=False) as (
            some_special, none):
        with some_special:
            u = builder.zext(bits, ir.VectorType(I32, 32))
            special = builder.icmp_unsigned("==", vand(builder, u, 0x7C00), splat(builder, I32(0x7C00), 32))
            rebuilt = builder.or_(builder.or_(vshl(builder, vand(builder, u, 0x8000), 16),
                                              vshl(builder, vand(builder, u, 0x3FF), 13)),
                                  splat(builder, I32(0x7F800000), 32))
            builder.store(builder.select(special, builder.bitcast(rebuilt, f.type), f), dst, align=4)
        with none:
            builder.store(f, dst, align=4)


def emit_bf16_run(builder, h, y):
    """32 bf16 values at `h` -> float32 at `y`: the bits shifted into the top half."""
    bits = builder.zext(load(builder, h, 0, ir.VectorType(I16, 32)), ir.VectorType(I32, 32))
    builder.store(vshl(builder, bits, 16), builder.bitcast(y, ir.VectorType(I32, 32).as_pointer()), align=4)


def ksigns(builder, i7):
    """ksigns_iq2xs[i7] for an i32 0..127: the 7 bits and an 8th that makes the count of set bits even."""
    ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(I32, [I32]), "llvm.ctpop.i32")
    return builder.or_(i7, builder.shl(builder.and_(builder.call(ctpop, [i7]), I32(1)), I32(7)))


def half_scale(builder, d, sc, factor):
    """ggml's d * (0.5f + sc) * factor for an integer sc (IQ2 / IQ3_XXS block scales), in that order."""
    return builder.fmul(builder.fmul(d, builder.fadd(F32(0.5), builder.sitofp(sc, F32))), F32(factor))


def emit_grid_group(builder, values, gi, n, a, y, at, signs=None, sign_first=0, delta=None):
    """y[at : at + n] = a * values[gi] (a * (values[gi] + delta) with a delta), negated in the lanes whose
    bit sign_first + l of the i32 `signs` is set: n grid values of row gi (an i32) of a float* table."""
    v = load_floats(builder, values, builder.mul(builder.zext(gi, I64), I64(n)), n)
    if delta is not None:
        v = builder.fadd(v, splat(builder, delta, n))
    out = builder.fmul(splat(builder, a, n), v)
    if signs is not None:
        out = flip_signs(builder, out, signs, sign_first)
    store(builder, y, at, out)


# --- helpers of the dot-product kernels (vec_dot_ir, vec_dot_avx2, sgemm_f16, vec_dot_kquants, ...) ---------

def c64(v):
    """An i64 constant (byte offsets, loop counts)."""
    return ir.Constant(I64, v)


def byte_vec(v, n=32):
    """<n x i8> with every lane the byte v."""
    return ir.Constant(ir.VectorType(I8, n), [v & 0xFF] * n)


def lanes_mask(idx):
    """<len(idx) x i32> constant: a shufflevector mask."""
    return ir.Constant(ir.VectorType(I32, len(idx)), list(idx))


def fma(builder, a, b, c):
    """llvm.fma: one rounding, like _mm256_fmadd_ps (a software fma where the CPU has none)."""
    ty = a.type
    name = "llvm.fma.v8f32" if isinstance(ty, ir.VectorType) else "llvm.fma.f32"
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty, ty, ty]), name)
    return builder.call(fn, [a, b, c])


def hsum_float_8(builder, acc):
    """hsum_float_8: ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))."""
    a = [builder.extract_element(acc, ir.Constant(I32, i)) for i in range(8)]
    return builder.fadd(builder.fadd(builder.fadd(a[0], a[4]), builder.fadd(a[2], a[6])),
                        builder.fadd(builder.fadd(a[1], a[5]), builder.fadd(a[3], a[7])))


def hsum_i32(builder, v):
    """Sum of the 8 int32 lanes (exact in any order)."""
    m = lanes_mask
    h = builder.add(builder.shuffle_vector(v, v, m(range(4))), builder.shuffle_vector(v, v, m(range(4, 8))))
    h = builder.add(builder.shuffle_vector(h, h, m(range(2))), builder.shuffle_vector(h, h, m(range(2, 4))))
    return builder.add(builder.extract_element(h, ir.Constant(I32, 0)), builder.extract_element(h, ir.Constant(I32, 1)))


@intrinsic
def half_to_float(typingctx, bits):
    """The fp16 number with these bits (uint16) as float32: exact, one vcvtph2ps lane where LLVM vectorizes."""
    sig = types.float32(bits)

    def codegen(context, builder, sig, args):
        return half_to_f32(builder, args[0])

    return sig, codegen


def row_pointers(context, builder, sig, args):
    """(W, r, nb, arrays...) of a row intrinsic: byte pointer to row r of W, nb, byte pointers to the
    arrays' data."""
    W, r = args[0], args[1]
    wa = context.make_array(sig.args[0])(context, builder, W)
    stride0 = cgutils.unpack_tuple(builder, wa.strides)[0]
    row = builder.gep(builder.bitcast(wa.data, I8.as_pointer()), [builder.mul(r, stride0)])
    ptrs = [builder.bitcast(context.make_array(sig.args[i])(context, builder, args[i]).data, I8.as_pointer())
            for i in range(3, len(args))]
    return row, args[2], ptrs


# AVX2's integer products. mul_sum_us8_pairs_float / mul_sum_i8_pairs_float: vpmaddubsw (u8 x i8 -> pairs
# of i16) then vpmaddwd with ones (-> the 8 lane sums of 4 products as i32), no saturation at these magnitudes.

def lane_sums_u8_i8(builder, u8, i8):
    """_mm256_madd_epi16(_mm256_maddubs_epi16(u8, i8), ones) as float: the 8 lane sums of 4 products."""
    pairs = x86(builder, "llvm.x86.avx2.pmadd.ub.sw", V16S, [u8, i8])
    quads = x86(builder, "llvm.x86.avx2.pmadd.wd", V8I, [pairs, ir.Constant(V16S, [1] * 16)])
    return builder.sitofp(quads, V8F)


def maddubs(builder, u8, i8, avx2):
    """_mm256_maddubs_epi16: u8[2i] * i8[2i] + u8[2i+1] * i8[2i+1] as 16 int16 (the saturation of the
    AVX2 instruction is never reached by the values multiplied here); portable where not avx2."""
    if avx2:
        return x86(builder, "llvm.x86.avx2.pmadd.ub.sw", V16S, [u8, i8])
    p = builder.mul(builder.zext(u8, V32S), builder.sext(i8, V32S))
    return builder.add(builder.shuffle_vector(p, p, lanes_mask(range(0, 32, 2))),
                       builder.shuffle_vector(p, p, lanes_mask(range(1, 32, 2))))


def madd(builder, a16, b16, avx2):
    """_mm256_madd_epi16: a[2i] * b[2i] + a[2i+1] * b[2i+1] as 8 int32; portable where not avx2."""
    if avx2:
        return x86(builder, "llvm.x86.avx2.pmadd.wd", V8I, [a16, b16])
    p = builder.mul(builder.sext(a16, V16I), builder.sext(b16, V16I))
    return builder.add(builder.shuffle_vector(p, p, lanes_mask(range(0, 16, 2))),
                       builder.shuffle_vector(p, p, lanes_mask(range(1, 16, 2))))


def signed_products(builder, q, y, avx2):
    """Pairs of products of two signed byte vectors (mul_add_epi8: maddubs(|q|, sign(y, q))), as 16 int16."""
    if avx2:
        ax = x86(builder, "llvm.x86.avx2.psign.b", V32B, [q, q])
        sy = x86(builder, "llvm.x86.avx2.psign.b", V32B, [y, q])
        return maddubs(builder, ax, sy, True)
    p = builder.mul(builder.sext(q, V32S), builder.sext(y, V32S))
    return builder.add(builder.shuffle_vector(p, p, lanes_mask(range(0, 32, 2))),
                       builder.shuffle_vector(p, p, lanes_mask(range(1, 32, 2))))


def iq4nl_lookup(builder, idx, avx2):
    """kvalues_iq4nl[idx] for 32 byte indices 0..15 (vpshufb on the table in both 128-bit halves)."""
    kv = [int(v) for v in KVALUES_IQ4NL]
    if avx2:
        table = ir.Constant(V32B, [v & 0xFF for v in kv] * 2)
        return x86(builder, "llvm.x86.avx2.pshuf.b", V32B, [table, idx])
    out = byte_vec(kv[0])
    for i in range(1, 16):
        out = builder.select(builder.icmp_unsigned("==", idx, byte_vec(i)), byte_vec(kv[i]), out)
    return out


def scales_mins_k4(builder, row, o):
    """The 12 scale bytes of a block_q4_K (or block_q5_K) unpacked with ggml's kmask1/2/3 word trick: <16 x i8> with the
    8 six-bit scales, then the 8 mins (get_scale_min_k4 for j = 0..7)."""
    u = [load(builder, row, builder.add(o, c64(4 + 4 * i)), I32) for i in range(3)]
    k1, k2, k3 = (ir.Constant(I32, v) for v in (0x3F3F3F3F, 0x0F0F0F0F, 0x03030303))
    c4, c6 = ir.Constant(I32, 4), ir.Constant(I32, 6)
    u3 = builder.or_(builder.and_(builder.lshr(u[2], c4), k2), builder.shl(builder.and_(builder.lshr(u[1], c6), k3), c4))
    u1 = builder.or_(builder.and_(u[2], k2), builder.shl(builder.and_(builder.lshr(u[0], c6), k3), c4))
    words = [builder.and_(u[0], k1), u1, builder.and_(u[1], k1), u3]
    v = ir.Constant(V4I, ir.Undefined)
    for i, w in enumerate(words):
        v = builder.insert_element(v, w, ir.Constant(I32, i))
    return builder.bitcast(v, V16B)
