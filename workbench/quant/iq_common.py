"""Shared helpers for the IQ / TQ quantization modules (ggml-quants.c helpers).

Everything here is exact float32 arithmetic as ggml's C code does it (SSE, no FMA contraction, no
reordering of sums).  The numba helpers are plain ``@njit`` functions that the format kernels inline
as calls; the numpy helpers serve the readable references.

Typing pitfall in numba: ``int64 op float32`` promotes to float64 (numpy rules), so every constant and
every integer that meets a float32 in a kernel is converted with ``f32(...)`` first.
"""
import math

import numpy as np
from numba import njit

from workbench.quant import QuantInputError  # the package's ValueError subclass for bad arguments  # noqa: F401

QK_K = 256
f32 = np.float32

# ggml-quants.c: GROUP_MAX_EPS* (a block whose |x| max is below this gets all-zero quants)
GROUP_MAX_EPS = f32(1e-15)
GROUP_MAX_EPS_IQ3_XXS = f32(1e-8)
GROUP_MAX_EPS_IQ2_S = f32(1e-8)
GROUP_MAX_EPS_IQ1_M = f32(1e-7)
GROUP_MAX_EPS_IQ1_S = f32(1e-12)
FLT_MAX = f32(np.finfo(np.float32).max)

# ggml-common.h: kvalues_iq4nl, the 16 non-linear 4-bit levels of IQ4_NL / IQ4_XS
KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113],
                         dtype=np.int8)




# ----------------------------------------------------------------------------- argument checks
def check_quantize_args(x, imatrix, block, name, needs_imatrix=False):
    """Validate and normalise ``quantize(x, imatrix)`` arguments; returns (x, imatrix)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise QuantInputError(f"{name}: x must be 2-D (rows, n_per_row), got shape {x.shape}")
    if x.shape[1] % block:
        raise QuantInputError(f"{name}: n_per_row={x.shape[1]} is not a multiple of the block size {block}")
    if imatrix is None:
        if needs_imatrix:
            raise QuantInputError(f"{name}: this format needs an importance matrix (imatrix is None); "
                                  "ggml_quantize_requires_imatrix")
        return x, None
    imatrix = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
    if imatrix.shape[0] != x.shape[1]:
        raise QuantInputError(f"{name}: imatrix has {imatrix.shape[0]} entries, n_per_row is {x.shape[1]}")
    return x, imatrix


def check_blocks(blocks, n_per_row, block, type_size, name):
    blocks = np.ascontiguousarray(blocks, dtype=np.uint8)
    if blocks.ndim == 1:
        blocks = blocks.reshape(1, -1)
    if n_per_row % block:
        raise QuantInputError(f"{name}: n_per_row={n_per_row} is not a multiple of the block size {block}")
    row_bytes = n_per_row // block * type_size
    if blocks.ndim != 2 or blocks.shape[1] != row_bytes:
        raise QuantInputError(f"{name}: blocks must be (rows, {row_bytes}) uint8 for n_per_row={n_per_row}, "
                              f"got shape {blocks.shape}")
    return blocks


def run_dequantize(rows_kernel, blocks, n_per_row, block, type_size, name, *args):
    """A format module's dequantize: validated blocks (check_blocks) through rows_kernel(blocks, out, *args)
    into a new float32 (rows, n_per_row)."""
    blocks = check_blocks(blocks, n_per_row, block, type_size, name)
    out = np.empty((blocks.shape[0], n_per_row), np.float32)
    rows_kernel(blocks, out, *args)
    return out


# ----------------------------------------------------------------------------- numpy helpers
def fp16_bits(v):
    """float32 -> IEEE half bits, round to nearest even (GGML_FP32_TO_FP16)."""
    return np.asarray(v, dtype=np.float32).astype(np.float16).view(np.uint16)


def fp16_round(v):
    """float32 -> nearest half -> float32 (GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(v)))."""
    return np.asarray(v, dtype=np.float32).astype(np.float16).astype(np.float32)


def fp16_from_bytes(b):
    """(..., 2) uint8 little endian -> float32."""
    b = np.ascontiguousarray(b, dtype=np.uint8)
    return b.view(np.float16)[..., 0].astype(np.float32)


def nearest_int_np(v):
    """ggml nearest_int: the 12582912 trick, i.e. round half to even on float32."""
    return np.rint(np.asarray(v, dtype=np.float32)).astype(np.int32)


def best_index_int8_np(values, x):
    """Vectorised ggml best_index_int8: index of the nearest entry of the sorted table ``values``.

    Ties go to the upper neighbour (C: ``x - val[mu-1] < val[mu] - x ? mu-1 : mu``), the ends clamp.
    """
    v = values.astype(np.float32)
    x = np.asarray(x, dtype=np.float32)
    mu = np.clip(np.searchsorted(v, x, side="right"), 1, len(v) - 1)  # first value > x
    lo = v[mu - 1]
    hi = v[mu]
    idx = np.where(x - lo < hi - x, mu - 1, mu)
    idx = np.where(x <= v[0], 0, idx)
    idx = np.where(x >= v[-1], len(v) - 1, idx)
    return idx.astype(np.uint8)


# fp16 -> fp32 table (numba kernels index it instead of decoding bits)
FP16_TABLE = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


# ----------------------------------------------------------------------------- numba helpers
@njit(cache=True)
def fp32_to_fp16(v):
    """float32 -> half bits (int), round to nearest even, like GGML_FP32_TO_FP16 (no NaN payloads)."""
    a = abs(float(v))
    sign = 0x8000 if math.copysign(1.0, v) < 0 else 0  # keeps -0.0 -> 0x8000 like ggml
    if a != a:
        return 0x7E00 | sign
    if a >= 65520.0:  # rounds to infinity
        return 0x7C00 | sign
    if a < 6.103515625e-05:  # below 2**-14: subnormal half, step 2**-24 (exact scaling in float64)
        return sign | int(np.rint(a * 16777216.0))
    m, e = math.frexp(a)  # a = m * 2**e, m in [0.5, 1)
    E = e - 1
    mant = int(np.rint(a * 2.0 ** (10 - E)))  # in [1024, 2048] (exact: python floats)
    if mant == 2048:
        mant = 1024
        E += 1
    return sign | ((E + 15) << 10) | (mant - 1024)


@njit(cache=True)
def store_fp16(out, pos, v):
    """Write float32 ``v`` as a little-endian half at out[pos:pos+2]; returns the rounded float32."""
    h = fp32_to_fp16(v)
    out[pos] = h & 0xFF
    out[pos + 1] = h >> 8
    return FP16_TABLE[h]


@njit(cache=True)
def load_fp16(b, pos):
    return FP16_TABLE[int(b[pos]) | (int(b[pos + 1]) << 8)]


@njit(cache=True)
def nearest_int(v):
    """ggml nearest_int on a float32: add 1.5*2**23 in float32 and read the low mantissa bits.

    For |v| <= 4194303 that is round half to even; beyond (ggml asserts in debug builds only) the bits are
    garbage that we reproduce too, so degenerate blocks give ggml's release-build bytes."""
    if abs(v) <= 4194303.0:
        return int(np.rint(v))
    val = np.float32(v) + np.float32(12582912.0)  # float32 sum, as in C
    a = abs(float(val))
    if a != a:  # NaN: quiet-NaN mantissa 0x400000
        field = 0x400000
    elif a == np.inf or a == 0.0:
        field = 0
    elif a < 1.1754943508222875e-38:  # subnormal
        field = int(a * 2.0 ** 149)
    else:
        m, e = math.frexp(a)
        field = int((2.0 * m - 1.0) * 8388608.0)
    return field - 0x400000


@njit(cache=True)
def best_index_int8(n, values, x):
    """ggml best_index_int8: binary search in the sorted int8 table ``values`` (x is float32)."""
    if x <= f32(values[0]):
        return 0
    if x >= f32(values[n - 1]):
        return n - 1
    ml = 0
    mu = n - 1
    while mu - ml > 1:
        mav = (ml + mu) // 2
        if x < f32(values[mav]):
            mu = mav
        else:
            ml = mav
    if x - f32(values[mu - 1]) < f32(values[mu]) - x:
        return mu - 1
    return mu


@njit(cache=True)
def make_qp_quants(n, nmax, x, L, quant_weights):
    """ggml make_qp_quants: weighted fit of x >= 0 by scale*L, L in 0..nmax; fills L, returns scale.

    Search the 9 inverse scales (nmax + 0.1*is)/max, then up to 5 rounds of coordinate descent on L.
    ggml's L is uint8_t: IQ2_XXS feeds it one negative x (its parity-flipped element), whose negative
    level wraps to 256 - |l| when stored and is then read back wrapped.  ``L`` must be a uint8 array and
    every store is masked with 0xFF to reproduce that.
    """
    mx = f32(0)
    for i in range(n):
        mx = max(mx, x[i])
    if mx < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return f32(0)
    iscale = f32(nmax) / mx
    for i in range(n):
        L[i] = nearest_int(iscale * x[i]) & 0xFF
    scale = f32(1) / iscale
    best_mse = f32(0)
    for i in range(n):
        diff = x[i] - scale * f32(L[i])
        w = quant_weights[i]
        best_mse += w * diff * diff
    for is_ in range(-4, 5):
        if is_ == 0:
            continue
        iscale_is = (f32(0.1) * f32(is_) + f32(nmax)) / mx
        scale_is = f32(1) / iscale_is
        mse = f32(0)
        for i in range(n):
            l = min(nmax, nearest_int(iscale_is * x[i]))
            diff = x[i] - scale_is * f32(l)
            w = quant_weights[i]
            mse += w * diff * diff
        if mse < best_mse:
            best_mse = mse
            iscale = iscale_is
    sumlx = f32(0)
    suml2 = f32(0)
    for i in range(n):
        l = min(nmax, nearest_int(iscale * x[i]))
        L[i] = l & 0xFF  # stored wrapped, but the sums below use the int l
        w = quant_weights[i]
        sumlx += w * x[i] * f32(l)
        suml2 += w * f32(l) * f32(l)
    for itry in range(5):
        n_changed = 0
        for i in range(n):
            w = quant_weights[i]
            li = f32(int(L[i]))
            slx = sumlx - w * x[i] * li
            sl2 = suml2 - w * li * li
            if slx > 0 and sl2 > 0:
                new_l = min(nmax, nearest_int(x[i] * sl2 / slx))
                if new_l != int(L[i]):
                    slx += w * x[i] * f32(new_l)
                    sl2 += w * f32(new_l) * f32(new_l)
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l & 0xFF
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    return sumlx / suml2 if suml2 > 0 else f32(0)


@njit(cache=True)
def grid_find_best_neighbour(neighbours, start, pos, xval, weight, scale, L):
    """iq2_find_best_neighbour / iq3_find_best_neighbour: among the listed neighbours (count at
    neighbours[start]) the grid point minimising sum w*(scale*q - x)^2 (first one on ties); writes its
    levels (q-1)/2 to L and returns its index.  xval, weight, L: views of the n coordinates."""
    n = pos.shape[1]
    best_d2 = FLT_MAX
    grid_index = -1
    for j in range(1, int(neighbours[start]) + 1):
        g = int(neighbours[start + j])
        d2 = f32(0)
        for i in range(n):
            diff = scale * f32(pos[g, i]) - xval[i]
            d2 += weight[i] * diff * diff
        if d2 < best_d2:
            best_d2 = d2
            grid_index = g
    for i in range(n):
        L[i] = (pos[grid_index, i] - 1) // 2
    return grid_index


# ----------------------------------------------------------------------------- IQ2/IQ3 block helpers
@njit(cache=True)
def signs_and_magnitudes(xb, weight, xval, block_signs):
    """xval = |x| and one 7-bit sign mask per group of 8 (quantize_row_iq2_xxs_impl and friends).

    The 8th sign is implied (even number of minus signs), so a group with an odd count flips the sign
    of its least important element (smallest w*x^2, the first one on ties) and quantizes it as -|x|.
    """
    for k in range(xb.shape[0] // 8):
        nflip = 0
        s = 0
        for i in range(8):
            if xb[8 * k + i] >= 0:
                xval[8 * k + i] = xb[8 * k + i]
            else:
                xval[8 * k + i] = -xb[8 * k + i]
                nflip += 1
                s |= 1 << i
        if nflip % 2:
            imin = 0
            mn = weight[8 * k] * xb[8 * k] * xb[8 * k]
            for i in range(1, 8):
                ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i]
                if ax < mn:
                    mn = ax
                    imin = i
            xval[8 * k + imin] = -xval[8 * k + imin]
            s ^= 1 << imin
        block_signs[k] = s & 127


@njit(cache=True)
def snap_group(xval, waux, off, id, scale, kmax, pos, kmap, neighbours, L):
    """Levels l = clamp(nearest_int((id*x - 1)/2), 0, kmax-1) for the group of n = pos.shape[1] values at
    ``off``; when the packed point is off the grid, the best listed neighbour at ``scale`` replaces them.
    Fills L[off:off+n]; returns the grid index, negated minus one (-g-1) when it was off the grid."""
    n = pos.shape[1]
    bits = 2 if n == 8 else 3
    u = 0
    for i in range(n):
        l = nearest_int(f32(0.5) * (id * xval[off + i] - f32(1)))
        l = max(0, min(kmax - 1, l))
        L[off + i] = l
        u |= l << (bits * i)
    g = kmap[u]
    if g >= 0:
        return g
    g = grid_find_best_neighbour(neighbours, -g - 1, pos, xval[off:off + n], waux[off:off + n], scale,
                                 L[off:off + n])
    return -g - 1


@njit(cache=True)
def fit_odd(weight, xval, L, n):
    """sumqx = sum w*x*q, sumq2 = sum w*q*q with q = 2L+1 (sequential float32 sums)."""
    sumqx = f32(0)
    sumq2 = f32(0)
    for i in range(n):
        w = weight[i]
        q = f32(2 * L[i] + 1)
        sumqx += w * xval[i] * q
        sumq2 += w * q * q
    return sumqx, sumq2


# ----------------------------------------------------------------------------- numpy references (grid)
def seq_sum(terms):
    """Sum over the last axis in C order (float32, left to right), vectorised over the other axes."""
    acc = np.zeros(terms.shape[:-1], np.float32)
    for j in range(terms.shape[-1]):
        acc += terms[..., j]
    return acc


def make_qp_quants_np(x, nmax, w):
    """make_qp_quants on rows of x (N, n) -> scale (N,), vectorised over rows (see make_qp_quants,
    including the uint8 store of the levels)."""
    x = x.astype(np.float32)
    nmx = np.float32(nmax)
    mx = np.maximum(np.float32(0), x.max(axis=1))
    ok = mx >= GROUP_MAX_EPS
    mx = np.where(ok, mx, np.float32(1))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = nmx / mx
        Lw = np.rint(iscale[:, None] * x).astype(np.int64) & 0xFF
        scale = np.float32(1) / iscale
        diff = x - scale[:, None] * Lw.astype(np.float32)
        best_mse = seq_sum(w * diff * diff)
        for is_ in (-4, -3, -2, -1, 1, 2, 3, 4):
            iscale_is = (np.float32(0.1) * np.float32(is_) + nmx) / mx
            scale_is = np.float32(1) / iscale_is
            lv = np.minimum(nmax, np.rint(iscale_is[:, None] * x).astype(np.int64))
            diff = x - scale_is[:, None] * lv.astype(np.float32)
            mse = seq_sum(w * diff * diff)
            iscale = np.where(mse < best_mse, iscale_is, iscale)
            best_mse = np.where(mse < best_mse, mse, best_mse)
        lv = np.minimum(nmax, np.rint(iscale[:, None] * x).astype(np.int64))
        L = lv & 0xFF
        lf = lv.astype(np.float32)
        sumlx = seq_sum(w * x * lf)
        suml2 = seq_sum(w * lf * lf)
        active = np.ones(len(x), bool)
        for _ in range(5):
            changed = np.zeros(len(x), bool)
            for i in range(x.shape[1]):
                wi, xi, li = w[:, i], x[:, i], L[:, i].astype(np.float32)
                slx = sumlx - wi * xi * li
                sl2 = suml2 - wi * li * li
                cond = active & (slx > 0) & (sl2 > 0)
                new_l = np.minimum(nmax, np.rint(np.where(cond, xi * sl2 / slx, 0)).astype(np.int64))
                nf = new_l.astype(np.float32)
                slx2 = slx + wi * xi * nf
                sl22 = sl2 + wi * nf * nf
                acc = cond & (new_l != L[:, i]) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
                L[:, i] = np.where(acc, new_l & 0xFF, L[:, i])
                sumlx = np.where(acc, slx2, sumlx)
                suml2 = np.where(acc, sl22, suml2)
                changed |= acc
            active &= changed
        return np.where(ok & (suml2 > 0), sumlx / suml2, np.float32(0)).astype(np.float32)


def snap_groups_np(levels, xval, waux, scale, g, bits):
    """Vectorised snap_group: levels (N, ng, n) -> grid index (N, ng), levels replaced by the best listed
    neighbour where the point is off the grid, on-grid flags (N, ng)."""
    n = levels.shape[-1]
    u = (levels << (bits * np.arange(n))).sum(axis=-1)
    gi = g.kmap[u].astype(np.int64)
    on = gi >= 0
    r, c = np.nonzero(~on)
    if len(r):
        start = -gi[r, c] - 1
        cnt = g.neighbours[start].astype(np.int64)
        j = np.arange(1, cnt.max() + 1)
        cand = g.neighbours[np.minimum(start[:, None] + j, len(g.neighbours) - 1)].astype(np.int64)
        valid = j[None, :] <= cnt[:, None]
        sc = np.broadcast_to(np.asarray(scale, np.float32), xval.shape[:1])[r]
        d2 = np.zeros(cand.shape, np.float32)
        for i in range(n):
            diff = sc[:, None] * g.pos[cand, i].astype(np.float32) - xval[r, c, i][:, None]
            d2 += waux[r, c, i][:, None] * diff * diff
        d2 = np.where(valid, d2, np.inf)
        best = cand[np.arange(len(r)), np.argmin(d2, axis=1)]  # first minimum, as 'd2 < best_d2'
        gi[r, c] = best
        levels[r, c] = (g.pos[best].astype(np.int64) - 1) // 2
    return gi, on


def _levels_np(id, xg, kmax):
    """clamp(nearest_int(0.5*(id*x - 1)), 0, kmax-1); NaN/inf (dead sub-blocks) become harmless."""
    v = np.nan_to_num(np.float32(0.5) * (id[:, None, None] * xg - np.float32(1)), nan=0.0, posinf=kmax,
                      neginf=0.0)
    return np.clip(np.rint(v), 0, kmax - 1).astype(np.int64)


def grid_subblocks_ref(x, imatrix, g, *, bs, gs, kmax, trials, step, parity, sigma_mult, noimx, eps,
                       use_qp, resnap, on_grid_init):
    """Numpy reference of the sub-block search shared by quantize_row_iq2_xxs/iq2_xs/iq2_s/iq3_xxs/
    iq3_s_impl, vectorised over all sub-blocks of x (rows, n).  Returns scale (nsb,), grid indices
    (nsb, bs/gs), sign masks (nsb, bs/8) with the super-block grouping (rows*n/256, 256/bs).

    bs/gs: sub-block and group sizes; kmax: levels 0..kmax-1; trials: is range, id = (2kmax-1 + is*step)/m;
    parity: 7 sign bits + even parity (flip the least important element); sigma_mult: sigma2 = mult*mean(x^2);
    noimx: importance without imatrix ('x2' or 'sigma': sigma2/4 + x^2); eps: skip threshold on max
    (None: skip only max == 0); use_qp: start from make_qp_quants (IQ2_XXS); resnap: 'all' (IQ2_XXS: always
    re-snap every group), 'off' (only groups off the grid), 'all_if_off' (IQ3_S); on_grid_init: IQ3_S starts
    with every group flagged off the grid."""
    bits = 2 if gs == 8 else 3
    xs = x.reshape(-1, QK_K)
    sigma2 = np.float32(sigma_mult) * seq_sum(xs * xs) / np.float32(QK_K)
    xb = x.reshape(-1, bs)
    nsb = QK_K // bs
    s2 = np.repeat(sigma2, nsb)[:, None]
    if imatrix is not None:
        weight = np.tile(imatrix.reshape(-1, bs), (x.shape[0], 1)) * np.sqrt(s2 + xb * xb)
    elif noimx == "sigma":
        weight = np.float32(0.25) * s2 + xb * xb
    else:
        weight = xb * xb
    waux = np.sqrt(weight)
    # signs, one mask per 8 weights
    neg = xb < 0
    xval = np.abs(xb)
    nb8 = bs // 8
    bitsv = 1 << np.arange(8)
    signs = (neg.reshape(-1, nb8, 8) * bitsv).sum(axis=-1)
    if parity:
        odd = neg.reshape(-1, nb8, 8).sum(axis=-1) % 2 == 1
        imin = np.argmin((weight * xb * xb).reshape(-1, nb8, 8), axis=-1)
        r, k = np.nonzero(odd)
        pos8 = k * 8 + imin[r, k]
        xval[r, pos8] = -xval[r, pos8]
        signs[r, k] ^= 1 << imin[r, k]
        signs &= 127
    mx = xval.max(axis=1)
    live = (mx >= eps) if eps is not None else (mx != 0)
    ng = bs // gs
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if use_qp:
            scale = make_qp_quants_np(xval, kmax + 1, weight)
            denom = scale * np.float32(kmax)
            live &= denom > 0
        else:
            scale = mx / np.float32(2 * kmax - 1)
            denom = mx
        best = np.zeros(len(xb), np.float32)
        L = np.zeros((len(xb), ng, gs), np.int64)
        on_grid = np.full((len(xb), ng), on_grid_init)
        xg, wg = xval.reshape(-1, ng, gs), waux.reshape(-1, ng, gs)
        for is_ in trials:
            id = (np.float32(2 * kmax - 1) + np.float32(is_) * np.float32(step)) / denom
            lv = _levels_np(id, xg, kmax)
            _, on = snap_groups_np(lv, xg, wg, np.float32(1) / id, g, bits)
            q = (2 * lv + 1).reshape(len(xb), bs).astype(np.float32)
            sumqx, sumq2 = seq_sum(weight * xval * q), seq_sum(weight * q * q)
            better = live & (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
            scale = np.where(better, sumqx / sumq2, scale)
            best = np.where(better, scale * sumqx, best)
            L = np.where(better[:, None, None], lv, L)
            on_grid = np.where(better[:, None], on, on_grid)
        if resnap == "all":
            todo = live & (scale > 0)
            which = np.ones_like(on_grid)
        else:
            todo = live & ~on_grid.all(axis=1) & (scale > 0)
            which = ~on_grid if resnap == "off" else np.ones_like(on_grid)
        id = np.float32(1) / scale
        lv = _levels_np(id, xg, kmax)
        snap_groups_np(lv, xg, wg, scale, g, bits)
        sel = todo[:, None] & which
        L = np.where(sel[:, :, None], lv, L)
        q = (2 * L + 1).reshape(len(xb), bs).astype(np.float32)
        sumqx, sumq2 = seq_sum(weight * xval * q), seq_sum(weight * q * q)
        scale = np.where(todo & (sumq2 > 0), sumqx / sumq2, scale)
    flip = live & (scale < 0)
    scale = np.where(flip, -scale, scale)
    signs = np.where(flip[:, None], ~signs & (127 if parity else 255), signs)
    scale = np.where(live, scale, np.float32(0)).astype(np.float32)
    gidx = g.kmap[(L << (bits * np.arange(gs))).sum(axis=-1)].astype(np.int64)
    return scale, gidx, signs, live


def ternary_snap_np(L, xg, wg, scale, xx, g):
    """Vectorised iq1 snapping: levels L (N, ng, 8) in 0..2 -> grid index (N, ng) and on-grid flags; off-grid
    groups take the listed neighbour minimising sum w*(scale*xx[level] - x)^2 (iq1_find_best_neighbour2).
    xx: (N, ng, 3) shifted level values per group."""
    u = (L << (2 * np.arange(8))).sum(axis=-1)
    gi = g.kmap[u].astype(np.int64)
    on = gi >= 0
    r, c = np.nonzero(~on)
    if len(r):
        start = -gi[r, c] - 1
        cnt = g.neighbours[start].astype(np.int64)
        j = np.arange(1, cnt.max() + 1)
        cand = g.neighbours[np.minimum(start[:, None] + j, len(g.neighbours) - 1)].astype(np.int64)
        d2 = np.zeros(cand.shape, np.float32)
        for i in range(8):
            q = np.take_along_axis(xx[r, c], (g.pos[cand, i].astype(np.int64) - 1) // 2, axis=1)
            diff = scale[r][:, None] * q - xg[r, c, i][:, None]
            d2 += wg[r, c, i][:, None] * diff * diff
        d2 = np.where(j[None, :] <= cnt[:, None], d2, np.inf)
        best = cand[np.arange(len(r)), np.argmin(d2, axis=1)]
        gi[r, c] = best
    return gi, on
