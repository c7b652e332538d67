"""Grid tables of the IQ1/IQ2/IQ3 formats and the search maps ggml builds from them at init.

Source of the grids: the ``gguf`` package (MIT) carries every lattice as data for its dequantizers
(``gguf.quants.IQ2_XXS.grid_hex`` ...: for each grid point, the level index of each coordinate).  We
decode the level indices l and build:

* ``pos``: int8 (G, n) with the coordinates 2*l + 1 that ggml's quantizers work with (iq2xs_init_impl /
  iq3xs_init_impl fill ``the_grid`` this way from kgrid_2bit_256 / kgrid_256 / kgrid_1bit_2048 ...);
* ``values``: the dequantization grid (iq2xxs_grid, iq3s_grid, iq1s_grid ... of ggml-common.h) as
  float32 (G, n);
* ``kmap``: int32 over every packed point u = sum l_k << (bits*k) (l in 0..2^bits-1): the grid index when
  u is on the grid, else -(offset + 1) into ``neighbours``;
* ``neighbours``: uint16; at an offset, a count n, then the n grid indices nearest to u, ordered by
  (squared distance, index) and keeping every point of the ``nwant`` smallest distinct distances
  (iq2xs_init_impl, iq3xs_init_impl; qsort with iq2_compare_func is a total order, so this is exact).

Tables are built lazily on first use (functools.cache) and are read-only afterwards.
"""
import functools
from math import ceil, log2
from typing import NamedTuple

import numpy as np
from numba import njit

NGRID_IQ1S = 2048
IQ1S_DELTA = np.float32(0.125)  # ggml-common.h IQ1S_DELTA
IQ1M_DELTA = np.float32(0.125)  # ggml-common.h IQ1M_DELTA

# ksigns_iq2xs: 7 explicit sign bits + the 8th set so that the number of minus signs is even
KSIGNS_IQ2XS = np.array([i | ((bin(i).count("1") & 1) << 7) for i in range(128)], dtype=np.uint8)
KMASK_IQ2XS = np.array([1 << i for i in range(8)], dtype=np.uint8)


class Grid(NamedTuple):
    pos: np.ndarray         # int8 (G, n): 2*l + 1
    values: np.ndarray      # float32 (G, n): dequantization values
    kmap: np.ndarray        # int32 (2**(bits*n) or ggml's kmap_size,)
    neighbours: np.ndarray  # uint16


def _gguf_class(name):
    try:
        import gguf.quants as gq
    except ImportError as e:  # pragma: no cover - gguf is a runtime dependency of the IQ formats
        raise ImportError("the IQ grid formats need the 'gguf' package (pip install gguf)") from e
    return getattr(gq, name)


def grid_levels(name):
    """Level indices (G, n) uint8 of ``gguf.quants.<name>``'s grid, decoded as gguf's init_grid does."""
    cls = _gguf_class(name)
    bits = ceil(log2(len(cls.grid_map)))
    per_byte = 8 // bits
    h = np.frombuffer(cls.grid_hex, dtype=np.uint8).reshape(-1, 2)
    h = (np.where(h > 0x40, h + 9, h) & 0x0F).astype(np.uint8)  # hex digit values
    byte = (h[:, 0] << 4) | h[:, 1]
    shifts = np.arange(0, 8, 8 // per_byte, dtype=np.uint8)
    lv = (byte[:, None] >> shifts[None, :]) & ((1 << bits) - 1)
    return lv.reshape(cls.grid_shape).astype(np.uint8), np.array(cls.grid_map, dtype=np.float32)


@njit(cache=True)
def _nearest(pos, p, nwant, d2, out):
    """Grid indices of the ``nwant`` smallest distinct squared distances to point ``p``, ordered by
    (distance, index); writes them to ``out`` when given (len > 0) and returns their number."""
    G, n = pos.shape
    for j in range(G):
        s = 0
        for k in range(n):
            t = pos[j, k] - p[k]
            s += t * t
        d2[j] = s
    count = 0
    last = -1
    for _ in range(nwant):
        m = 1 << 30
        for j in range(G):
            if last < d2[j] < m:
                m = d2[j]
        if m == 1 << 30:
            break
        for j in range(G):
            if d2[j] == m:
                if out.shape[0] > 0:
                    out[count] = j
                count += 1
        last = m
    return count


@njit(cache=True)
def _neighbour_maps_kernel(pos, bits, kmap, nwant):
    G, n = pos.shape
    d2 = np.empty(G, np.int64)
    p = np.empty(n, np.int64)
    none = np.empty(0, np.uint16)
    total = 0
    for i in range(kmap.shape[0]):  # pass 1: sizes
        if kmap[i] < 0:
            for k in range(n):
                p[k] = 2 * ((i >> (bits * k)) & ((1 << bits) - 1)) + 1
            total += 1 + _nearest(pos, p, nwant, d2, none)
    neighbours = np.empty(total, np.uint16)
    counter = 0
    for i in range(kmap.shape[0]):  # pass 2: the lists, in increasing order of the point
        if kmap[i] < 0:
            for k in range(n):
                p[k] = 2 * ((i >> (bits * k)) & ((1 << bits) - 1)) + 1
            cnt = _nearest(pos, p, nwant, d2, neighbours[counter + 1:])
            neighbours[counter] = cnt
            kmap[i] = -(counter + 1)
            counter += 1 + cnt
    return neighbours


def _neighbour_maps(pos, bits, kmap_size, nwant):
    """kmap and neighbour lists exactly as iq2xs_init_impl / iq3xs_init_impl build them."""
    G, n = pos.shape
    on_grid = ((pos.astype(np.int64) - 1) // 2) @ (1 << (bits * np.arange(n))).astype(np.int64)  # exact: int
    kmap = np.full(kmap_size, -1, dtype=np.int32)
    kmap[on_grid] = np.arange(G)
    neighbours = _neighbour_maps_kernel(pos.astype(np.int64), bits, kmap, nwant)
    return kmap, neighbours


# (gguf class, bits per level in the map index, ggml's kmap_size, nwant)
GRID_SPECS = {
    "IQ2_XXS": ("IQ2_XXS", 2, 43692, 2),
    "IQ2_XS": ("IQ2_XS", 2, 43692, 2),
    "IQ2_S": ("IQ2_S", 2, 43692, 1),
    "IQ1_S": ("IQ1_S", 2, 43692, 3),
    "IQ3_XXS": ("IQ3_XXS", 3, 4096, 2),
    "IQ3_S": ("IQ3_S", 3, 4096, 3),
}


@functools.cache
def grid(type_name):
    """The Grid of a format (IQ1_M shares IQ1_S's)."""
    name, bits, kmap_size, nwant = GRID_SPECS["IQ1_S" if type_name == "IQ1_M" else type_name]
    levels, grid_map = grid_levels(name)
    pos = (2 * levels.astype(np.int8) + 1).astype(np.int8)
    values = grid_map[levels].astype(np.float32)
    kmap, neighbours = _neighbour_maps(pos, bits, kmap_size, nwant)
    for a in (pos, values, kmap, neighbours):
        a.setflags(write=False)
    return Grid(pos, values, kmap, neighbours)
