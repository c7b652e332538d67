"""A register tile (MR x NR: 8 x 16 where AVX-512's 32 registers hold it, else 4 x 8) of a rank-k update, in a fixed
order: vector code for GPTQ's float64/float32 products.

    C[r, c] = C[r, c] + A(k, r) * B(k, c)      for k = 0, 1, ..., nk - 1 in that order   (tile_add)
    C[r, c] = C[r, c] - A(k, r) * B(k, c)                                                  (tile_sub)

for r < MR, c < NR: one multiply, then one add or subtract, rounded each time (no fma contraction, no reordering),
so each element gets exactly the operations of the scalar loop `for k: c -= a * b`, on every host whatever its
vector width. Written as plain numba loops, LLVM keeps such a tile in memory and runs it in scalar code (numba's
local arrays live on the heap); here the MR rows of C are MR <NR x T> values in registers for the whole k loop,
each step one broadcast of A(k, r) and one load of the NR B(k, c). The tile's shape changes which elements share
a register, never an element's operations, so the bits do not depend on it.

All arrays are addressed as flat element offsets into C-contiguous buffers, so one kernel serves the strided
views GPTQ needs (a packed panel of activations, rows of a triangular factor read backwards):

    C[r, c]  = c_arr.flat[ci + r * ldc + c]
    A(k, r)  = a_arr.flat[ai + k * a_k + r * a_r]
    B(k, c)  = b_arr.flat[bi + k * b_k + c]

A and B may be float32 under a float64 C (widened exactly before the product).

`gram_add` is the same loop for a Gram matrix H += X^T X of float32 values in float64 (GPTQ's Hessian): there every
product of two float32 values is exact in float64, so a fused multiply-add rounds exactly as the multiply, then add
does, and the kernel uses fma.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from workbench.cpu.features import has_avx512f
from workbench.cpu.ir import I64, splat

MR, NR = (8, 16) if has_avx512f() else (4, 8)     # rows x columns of one tile: what the host's registers hold


def _llvm_float(dtype) -> ir.Type:
    return ir.DoubleType() if dtype == types.float64 else ir.FloatType()


def _tile(sub: bool, mr: int = MR, nr: int = NR, fused: bool = False):
    @intrinsic
    def kernel(typingctx, c_arr, ci, ldc, a_arr, ai, a_k, a_r, b_arr, bi, b_k, nk):
        sig = types.void(c_arr, ci, ldc, a_arr, ai, a_k, a_r, b_arr, bi, b_k, nk)

        def codegen(context, builder, sig, args):
            c_arr, ci, ldc, a_arr, ai, a_k, a_r, b_arr, bi, b_k, nk = args
            ct = _llvm_float(sig.args[0].dtype)
            vec = ir.VectorType(ct, nr)
            c_data = context.make_array(sig.args[0])(context, builder, c_arr).data
            a_data = context.make_array(sig.args[3])(context, builder, a_arr).data
            b_data = context.make_array(sig.args[7])(context, builder, b_arr).data
            b_vec = ir.VectorType(_llvm_float(sig.args[7].dtype), nr)
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                                 f"llvm.fma.v{nr}f{64 if ct == ir.DoubleType() else 32}")

            def widen(v, to):
                return v if v.type == to else builder.fpext(v, to)

            rows = []
            for r in range(mr):
                at = builder.add(ci, builder.mul(ir.Constant(I64, r), ldc))
                p = builder.bitcast(builder.gep(c_data, [at]), vec.as_pointer())
                slot = cgutils.alloca_once(builder, vec)          # promoted to a register by LLVM
                builder.store(builder.load(p, align=4), slot)
                rows.append((p, slot))
            with cgutils.for_range(builder, nk) as loop:
                k = loop.index
                bp = builder.gep(b_data, [builder.add(bi, builder.mul(k, b_k))])
                y = widen(builder.load(builder.bitcast(bp, b_vec.as_pointer()), align=4), vec)
                a_row = builder.add(ai, builder.mul(k, a_k))
                for r, (_, slot) in enumerate(rows):
                    x = builder.load(builder.gep(a_data, [builder.add(a_row, builder.mul(ir.Constant(I64, r), a_r))]))
                    acc = builder.load(slot)
                    if fused:
                        builder.store(builder.call(fma, [splat(builder, widen(x, ct), nr), y, acc]), slot)
                        continue
                    prod = builder.fmul(splat(builder, widen(x, ct), nr), y)
                    builder.store(builder.fsub(acc, prod) if sub else builder.fadd(acc, prod), slot)
            for p, slot in rows:
                builder.store(builder.load(slot), p, align=4)
            return context.get_dummy_value()
        return sig, codegen
    return kernel


def _rows_sub(width: int):
    @intrinsic
    def kernel(typingctx, x_arr, xi, g_arr, gi, u_arr, ui, nrows):
        """x.flat[xi + r * width + c] -= g.flat[gi + c] * u.flat[ui + r] for r < nrows, c < width (float32: one
        multiply, then one subtract): g stays in registers while the rows stream by."""
        sig = types.void(x_arr, xi, g_arr, gi, u_arr, ui, nrows)

        def codegen(context, builder, sig, args):
            x_arr, xi, g_arr, gi, u_arr, ui, nrows = args
            ft = ir.FloatType()
            vec = ir.VectorType(ft, width)
            x_data = context.make_array(sig.args[0])(context, builder, x_arr).data
            g_data = context.make_array(sig.args[2])(context, builder, g_arr).data
            u_data = context.make_array(sig.args[4])(context, builder, u_arr).data
            g = builder.load(builder.bitcast(builder.gep(g_data, [gi]), vec.as_pointer()), align=4)
            with cgutils.for_range(builder, nrows) as loop:
                r = loop.index
                p = builder.bitcast(builder.gep(x_data, [builder.add(xi, builder.mul(r, ir.Constant(I64, width)))]),
                                    vec.as_pointer())
                um = builder.load(builder.gep(u_data, [builder.add(ui, r)]))
                builder.store(builder.fsub(builder.load(p, align=4), builder.fmul(g, splat(builder, um, width))), p,
                              align=4)
            return context.get_dummy_value()
        return sig, codegen
    return kernel


rows_sub16 = _rows_sub(16)


tile_add = _tile(sub=False)
tile_sub = _tile(sub=True)
gram_add = _tile(sub=False, fused=True)   # only for exact products (see above)


@njit(cache=True)
def tile(c, ci, ldc, a, ai, a_k, a_r, b, bi, b_k, nk, rows, cols, sub):
    """The rows x cols corner of a tile (rows <= MR, cols <= NR): the vector kernel (tile_sub if sub else tile_add)
    when it is whole, else the same operations in scalar code (the product of the widened operands rounded once
    to c's type, then added or subtracted, k in order)."""
    if rows == MR and cols == NR:
        if sub:
            tile_sub(c, ci, ldc, a, ai, a_k, a_r, b, bi, b_k, nk)
        else:
            tile_add(c, ci, ldc, a, ai, a_k, a_r, b, bi, b_k, nk)
        return
    cf, af, bf = c.reshape(-1), a.reshape(-1), b.reshape(-1)
    p = np.empty(1, c.dtype)
    for r in range(rows):
        for col in range(cols):
            s = cf[ci + r * ldc + col]
            for k in range(nk):
                p[0] = np.float64(af[ai + k * a_k + r * a_r]) * np.float64(bf[bi + k * b_k + col])
                s = s - p[0] if sub else s + p[0]
            cf[ci + r * ldc + col] = s


@njit(cache=True)
def gram(c, ci, ldc, a, ai, a_k, a_r, b, bi, b_k, nk, rows, cols):
    """tile(..., sub=False) where every product is exact (see gram_add): gram_add when the tile is whole, else
    tile's scalar corner, whose multiply-then-add then rounds as the fma does."""
    if rows == MR and cols == NR:
        gram_add(c, ci, ldc, a, ai, a_k, a_r, b, bi, b_k, nk)
    else:
        tile(c, ci, ldc, a, ai, a_k, a_r, b, bi, b_k, nk, rows, cols, False)


def tile_ref(c, ci, ldc, a, ai, a_k, a_r, b, bi, b_k, nk, sub: bool) -> None:
    """numpy spec of tile_add / tile_sub: the same operations per element, k in order."""
    cf, af, bf = c.reshape(-1), a.reshape(-1), b.reshape(-1)
    idx = ci + np.arange(MR)[:, None] * ldc + np.arange(NR)[None, :]
    acc = cf[idx]
    for k in range(nk):
        x = af[ai + k * a_k + np.arange(MR) * a_r].astype(c.dtype)[:, None]
        y = bf[bi + k * b_k + np.arange(NR)].astype(c.dtype)[None, :]
        acc = acc - x * y if sub else acc + x * y
    cf[idx] = acc


__all__ = ["MR", "NR", "gram", "gram_add", "rows_sub16", "tile", "tile_add", "tile_ref", "tile_sub"]
