"""Binning and tile compositing kernels of the CPU backend (Numba), forward and backward; see :mod:`.cpu`."""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

# Fast-math flags that are safe here: no NaN/Inf assumptions (culling relies on comparisons).
_FM = {"nsz", "arcp", "contract", "afn", "reassoc"}

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_HALF = np.float32(0.5)
_ALPHA_MIN = np.float32(1.0 / 255.0)
_ALPHA_MAX = np.float32(0.999)
_T_MIN = np.float32(1e-4)
_ROW_SKIP_MARGIN = 1e-3  # log-space safety margin of the row-skip test
_LANES = 16  # pixels per vectorised row segment
_TILE_COST = 32  # a tile's fixed cost for load balancing, in units of one Gaussian in its list

# exp(-s) = 2^-n * exp(n ln2 - s)
_EXP_SMAX = np.float32(80.0)
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_P2 = np.float32(1.0 / 2.0)
_P3 = np.float32(1.0 / 6.0)
_P4 = np.float32(1.0 / 24.0)
_P5 = np.float32(1.0 / 120.0)
_P6 = np.float32(1.0 / 720.0)


# --------------------------------------------------------------------------------------------------------
# a vectorisable exp
# --------------------------------------------------------------------------------------------------------


@intrinsic
def _pow2_neg(typingctx, nf):
    """2^-n for an integer-valued float32 n in [0, 126], from the float's exponent bits (int32 lanes)."""
    if nf != types.float32:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        n = builder.fptosi(args[0], i32)
        e = builder.shl(builder.sub(ir.Constant(i32, 127), n), ir.Constant(i32, 23))
        return builder.bitcast(e, ir.FloatType())

    return types.float32(types.float32), codegen


@njit(inline="always", fastmath=_FM, cache=True)
def _exp_neg(s):
    """exp(-s) for float32 s >= 0, relative error ~1e-7; branch-free, float-only: loops vectorise."""
    s = min(s, _EXP_SMAX)
    nf = np.float32(np.int32(s * _LOG2E + _HALF))  # s >= 0: truncation rounds to nearest
    f = (nf * _LN2_HI - s) + nf * _LN2_LO  # |f| <= ln2 / 2
    p = _P6 * f + _P5
    p = p * f + _P4
    p = p * f + _P3
    p = p * f + _P2
    p = p * f + _F1
    p = p * f + _F1
    return p * _pow2_neg(nf)


# --------------------------------------------------------------------------------------------------------
# binning: depth sort once per camera, then a counting sort into tiles
# --------------------------------------------------------------------------------------------------------


@njit(cache=True)
def _tile_rect(mx, my, rx, ry, ts, tw, th):
    """gsplat IntersectTile's rectangle [x0, x1) x [y0, y1) of tiles, in float32 as gsplat computes it."""
    tsf = np.float32(ts)
    tcx = np.float32(mx) / tsf
    tcy = np.float32(my) / tsf
    trx = np.float32(rx) / tsf
    try_ = np.float32(ry) / tsf
    lim = np.float32(1e9)  # NaN/Inf/huge centres (bad input past the dispatcher) touch no tile
    if not (abs(tcx) < lim and abs(tcy) < lim and trx < lim and try_ < lim):
        return 0, 0, 0, 0
    x0 = min(max(0, math.floor(tcx - trx)), tw)
    y0 = min(max(0, math.floor(tcy - try_)), th)
    x1 = min(max(0, math.ceil(tcx + trx)), tw)
    y1 = min(max(0, math.ceil(tcy + try_)), th)
    return x0, y0, x1, y1


@njit(cache=True)
def _radix_argsort(keys):
    """Stable argsort of non-negative float32 keys (LSD radix sort on their bits; ties keep index order)."""
    n = keys.shape[0]
    bits = keys.view(np.uint32)
    idx = np.arange(n).astype(np.int32)
    tmp = np.empty(n, np.int32)
    count = np.empty(257, np.int64)
    for shift in range(0, 32, 8):
        count[:] = 0
        for j in range(n):
            count[((bits[idx[j]] >> shift) & 255) + 1] += 1
        if count[1:].max() == n:  # all keys share this byte: nothing to do
            continue
        for b in range(256):
            count[b + 1] += count[b]
        for j in range(n):
            g = idx[j]
            d = (bits[g] >> shift) & 255
            tmp[count[d]] = g
            count[d] += 1
        idx, tmp = tmp, idx
    return idx


@njit(cache=True)
def _bin_count(means2d, radii, depths, ts, tw, th, counts, order, nvalid):
    # serial: C is usually 1, and a parallel launch for one iteration only adds a thread hand-off
    C, N = depths.shape
    T = tw * th
    for c in range(C):
        valid = np.empty(N, np.int32)
        nv = 0
        for i in range(N):
            if radii[c, i, 0] > 0 and radii[c, i, 1] > 0:
                x0, y0, x1, y1 = _tile_rect(
                    means2d[c, i, 0], means2d[c, i, 1], radii[c, i, 0], radii[c, i, 1], ts, tw, th
                )
                if x1 > x0 and y1 > y0:
                    valid[nv] = i
                    nv += 1
                    for ty in range(y0, y1):
                        for tx in range(x0, x1):
                            counts[c * T + ty * tw + tx] += 1
        keys = np.empty(nv, np.float32)
        for j in range(nv):
            z = depths[c, valid[j]]
            keys[j] = z if z > 0 else np.float32(0.0)  # culling keeps z >= near > 0
        perm = _radix_argsort(keys)
        for j in range(nv):
            order[c, j] = valid[perm[j]]
        nvalid[c] = nv


@njit(cache=True)
def _bin_fill_part(c, r0, r1, means2d, radii, ts, tw, th, order, nvalid, offsets, bins):
    """Distribute camera c's depth-sorted Gaussians into its tiles of rows r0..r1-1 (serial)."""
    T = tw * th
    cursor = offsets[c * T + r0 * tw : c * T + r1 * tw].copy()
    base = c * T + r0 * tw
    for j in range(nvalid[c]):
        i = order[c, j]
        x0, y0, x1, y1 = _tile_rect(
            means2d[c, i, 0], means2d[c, i, 1], radii[c, i, 0], radii[c, i, 1], ts, tw, th
        )
        y0 = max(y0, r0)
        y1 = min(y1, r1)
        for ty in range(y0, y1):
            for tx in range(x0, x1):
                k = c * T + ty * tw + tx - base
                bins[cursor[k]] = i
                cursor[k] += 1


@njit(parallel=True, cache=True)
def _bin_fill(means2d, radii, ts, tw, th, order, nvalid, offsets, bins, nparts):
    """Distribute the depth-sorted Gaussians into their tiles; bands of tile rows are split among threads."""
    C = order.shape[0]
    rows_per = (th + nparts - 1) // nparts
    for job in prange(C * nparts):
        c = job // nparts
        r0 = (job % nparts) * rows_per
        r1 = min(th, r0 + rows_per)
        if r0 < r1:
            _bin_fill_part(c, r0, r1, means2d, radii, ts, tw, th, order, nvalid, offsets, bins)


@njit(cache=True)
def _bin_fill_serial(means2d, radii, ts, tw, th, order, nvalid, offsets, bins):
    for c in range(order.shape[0]):
        _bin_fill_part(c, 0, th, means2d, radii, ts, tw, th, order, nvalid, offsets, bins)


@njit(cache=True)
def _balance(tiles, cost, nparts):
    """Split the tiles (heaviest first) into ``nparts`` parts of similar total cost, greedily (LPT).

    Numba splits a ``prange`` statically into equal contiguous ranges (``parallel_chunksize`` did not make
    it dynamic here), so a heaviest-first tile list gave one thread all the heavy tiles: 2.7 ms instead of
    1.7 ms for a 128² forward on 2 threads. The kernels run one part per thread instead.

    Returns:
        The tiles reordered part by part (heaviest first within a part) and the parts' starts [nparts + 1].
    """
    nt = tiles.shape[0]
    load = np.zeros(nparts, np.int64)
    size = np.zeros(nparts, np.int64)
    part = np.empty(nt, np.int64)
    for q in range(nt):
        b = np.argmin(load)
        part[q] = b
        load[b] += cost[q]
        size[b] += 1
    starts = np.zeros(nparts + 1, np.int64)
    starts[1:] = np.cumsum(size)
    cursor = starts[:-1].copy()
    out = np.empty_like(tiles)
    for q in range(nt):
        b = part[q]
        out[cursor[b]] = tiles[q]
        cursor[b] += 1
    return out, starts


# --------------------------------------------------------------------------------------------------------
# rasterization
# --------------------------------------------------------------------------------------------------------


@njit(inline="always", cache=True)
def _tile_window(tid, T, tw, ts, W, H):
    """Camera and pixel window of tile ``tid`` (tiles of all cameras numbered in one sequence).

    Returns ``(c, x0, y0, xend, hrow)``: camera, top-left pixel, end column and number of rows (the last
    tiles of a row or column may be cut by the image edge).
    """
    c = tid // T
    tile = tid - c * T
    ty = tile // tw
    x0 = (tile - ty * tw) * ts
    y0 = ty * ts
    return c, x0, y0, min(x0 + ts, W), min(ts, H - y0)


@njit(cache=True)
def _gather(means2d, conics, colors, opac, bins, start, n, c, D):
    """Copy a tile's Gaussians (depth order) into contiguous arrays: [n, 8] params and [n, D] colours."""
    par = np.empty((n, 8), np.float32)
    col = np.empty((n, D), np.float32)
    for k in range(n):
        g = bins[start + k]
        a = conics[c, g, 0]
        b = conics[c, g, 1]
        cc = conics[c, g, 2]
        o = opac[c, g]
        par[k, 0] = means2d[c, g, 0]
        par[k, 1] = means2d[c, g, 1]
        par[k, 2] = _HALF * a
        par[k, 3] = b
        par[k, 4] = _HALF * cc
        par[k, 5] = o
        # row skip: min over x of sigma at vertical offset dy is kk*dy^2 (kk = (c - b^2/a)/2); the row is
        # unreachable when kk*dy^2 > ln(255*o) (+ margin), i.e. alpha < 1/255 on the whole row.
        kk = np.float32(0.0)
        if a > 0:
            kk = _HALF * (cc - b * b / a)
            if not kk > 0:
                kk = np.float32(0.0)
        par[k, 6] = kk
        if o > 0:
            par[k, 7] = np.float32(math.log(np.float64(o) * 255.0) + _ROW_SKIP_MARGIN)
        else:
            par[k, 7] = np.float32(-1.0)
        for d in range(D):
            col[k, d] = colors[c, g, d]
    return par, col


@njit(inline="always", cache=True, fastmath=_FM)
def _row_span(par, k, top, hrow):
    """Tile rows ``lo..hi`` (inclusive; empty when hi < lo) that Gaussian k can reach.

    The row-skip test ``kk dy^2 > ln(255 o)`` (see :func:`_gather`) is convex in the row offset dy, so the
    rows that pass it form an interval, solved once per Gaussian and padded so that it only errs on the
    inclusive side (an extra row costs time, never accuracy: its alphas are below 1/255). ``top`` is the
    first row's pixel centre.
    """
    kk = par[k, 6]
    thr = par[k, 7]
    if thr < _F0:
        return 0, -1
    lo = 0
    hi = hrow - 1
    if kk > _F0:
        h = np.float32(math.sqrt(thr / kk)) * np.float32(1.0001) + np.float32(1e-3)
        my = par[k, 1] - top
        lo = max(lo, math.ceil(max(my - h, np.float32(-1.0))))  # clamped first: h may be huge
        hi = min(hi, math.floor(min(my + h, np.float32(hrow))))
    return lo, hi


@njit(parallel=True, cache=True, fastmath=_FM)
def _raster_fwd(
    means2d,
    conics,
    colors,
    opac,
    bg,
    offsets,
    bins,
    tiles,
    starts,
    W,
    H,
    ts,
    tw,
    out_col,
    out_alpha,
    out_T,
    out_last,
):
    C, N, D = colors.shape
    T = (offsets.shape[0] - 1) // C
    L = _LANES
    nseg = (ts + L - 1) // L
    for part in prange(starts.shape[0] - 1):  # one part per thread (see _balance)
        for q in range(starts[part], starts[part + 1]):
            tid = tiles[q]
            c, x0, y0, xend, hrow = _tile_window(tid, T, tw, ts, W, H)
            start = offsets[tid]
            n = offsets[tid + 1] - start
            par, col = _gather(means2d, conics, colors, opac, bins, start, n, c, D)
            top = np.float32(y0) + _HALF
            pxs = np.empty(L, np.float32)
            wgt = np.empty(L, np.float32)
            # per-row state of one 16-pixel segment of every tile row
            Tr = np.empty((hrow, L), np.float32)
            act = np.empty((hrow, L), np.float32)
            lastf = np.empty((hrow, L), np.float32)
            acc = np.empty((hrow, D, L), np.float32)
            done = np.empty(hrow, np.bool_)
            for seg in range(nseg):  # 16-pixel segments of the tile rows (one for 16x16 tiles)
                xs = x0 + seg * L
                if xs >= xend:
                    break
                nl = min(L, xend - xs)
                for p in range(L):
                    pxs[p] = np.float32(xs + p) + _HALF
                for r in range(hrow):
                    done[r] = False
                    for p in range(L):
                        Tr[r, p] = _F1
                        act[r, p] = _F1 if p < nl else _F0
                        lastf[r, p] = np.float32(-1.0)
                acc[:, :, :] = _F0
                ndone = 0
                # Gaussian-major: each Gaussian visits only the rows it can reach, in depth order per row
                for k in range(n):
                    lo, hi = _row_span(par, k, top, hrow)
                    kf = np.float32(k)
                    mx = par[k, 0]
                    ha = par[k, 2]
                    o = par[k, 5]
                    for r in range(lo, hi + 1):
                        if done[r]:
                            continue
                        dy = par[k, 1] - (top + np.float32(r))
                        bdy = par[k, 3] * dy
                        hcdy2 = par[k, 4] * dy * dy
                        nact = _F0
                        for p in range(L):  # branch-free, float-only: LLVM vectorises this
                            dx = mx - pxs[p]
                            sigma = (ha * dx + bdy) * dx + hcdy2
                            alpha = min(_ALPHA_MAX, o * _exp_neg(max(sigma, _F0)))
                            t0 = Tr[r, p]
                            nT = t0 * (_F1 - alpha)
                            a0 = act[r, p]
                            ok = (sigma >= _F0) & (alpha >= _ALPHA_MIN) & (a0 > _F0)
                            cm = _F1 if ok & (nT > _T_MIN) else _F0  # contributes
                            sm = _F1 if ok & (nT <= _T_MIN) else _F0  # stops here (exclusive)
                            wgt[p] = alpha * t0 * cm
                            Tr[r, p] = t0 * (_F1 - alpha * cm)
                            lastf[r, p] = max(lastf[r, p], kf * cm - (_F1 - cm))
                            a1 = a0 * (_F1 - sm)
                            act[r, p] = a1
                            nact += a1
                        for d in range(D):
                            cd = col[k, d]
                            for p in range(L):
                                acc[r, d, p] += wgt[p] * cd
                        if nact == _F0:  # every pixel of this row segment has stopped
                            done[r] = True
                            ndone += 1
                    if ndone == hrow:
                        break
                for r in range(hrow):
                    y = y0 + r
                    for p in range(nl):
                        x = xs + p
                        t = Tr[r, p]
                        for d in range(D):
                            out_col[c, y, x, d] = acc[r, d, p] + t * bg[c, d]
                        out_alpha[c, y, x, 0] = _F1 - t
                        out_T[c, y, x] = t
                        out_last[c, y, x] = np.int32(lastf[r, p])


@njit(parallel=True, cache=True, fastmath=_FM)
def _raster_bwd(
    means2d,
    conics,
    colors,
    opac,
    bg,
    offsets,
    bins,
    tiles,
    starts,
    W,
    H,
    ts,
    tw,
    out_T,
    out_last,
    v_col,
    v_alpha,
    gbuf,
):
    C, N, D = colors.shape
    T = (offsets.shape[0] - 1) // C
    L = _LANES
    nseg = (ts + L - 1) // L
    for part in prange(starts.shape[0] - 1):  # one part per thread (see _balance)
        for q in range(starts[part], starts[part + 1]):
            tid = tiles[q]
            c, x0, y0, xend, hrow = _tile_window(tid, T, tw, ts, W, H)
            start = offsets[tid]
            n = offsets[tid + 1] - start
            par, col = _gather(means2d, conics, colors, opac, bins, start, n, c, D)
            tg = np.zeros((n, 6 + D), np.float32)
            top = np.float32(y0) + _HALF
            pxs = np.empty(L, np.float32)
            # per-row state of one 16-pixel segment of every tile row
            Tc = np.empty((hrow, L), np.float32)  # transmittance behind the current Gaussian
            lastf = np.empty((hrow, L), np.float32)
            vc = np.empty((hrow, D, L), np.float32)
            vbase = np.empty((hrow, L), np.float32)
            buf = np.empty((hrow, D, L), np.float32)  # colour accumulated behind the current Gaussian
            kmaxr = np.empty(hrow, np.int64)
            # per-lane scratch of one Gaussian on one row
            dxa = np.empty(L, np.float32)
            visa = np.empty(L, np.float32)
            raa = np.empty(L, np.float32)
            faca = np.empty(L, np.float32)
            msk = np.empty(L, np.float32)
            vac = np.empty(L, np.float32)
            for seg in range(nseg):
                xs = x0 + seg * L
                if xs >= xend:
                    break
                nl = min(L, xend - xs)
                for p in range(L):
                    pxs[p] = np.float32(xs + p) + _HALF
                kmax = -1
                for r in range(hrow):
                    y = y0 + r
                    km = -1
                    for p in range(L):
                        if p < nl:
                            x = xs + p
                            tf = out_T[c, y, x]
                            lp = out_last[c, y, x]
                            km = max(km, lp)
                            lastf[r, p] = np.float32(lp)
                            vb = _F0
                            for d in range(D):
                                g = v_col[c, y, x, d]
                                vc[r, d, p] = g
                                vb += g * bg[c, d]
                            # alpha output and background both scale with T_final
                            vbase[r, p] = tf * (v_alpha[c, y, x, 0] - vb)
                            Tc[r, p] = tf
                        else:
                            lastf[r, p] = np.float32(-1.0)
                            for d in range(D):
                                vc[r, d, p] = _F0
                            vbase[r, p] = _F0
                            Tc[r, p] = _F1
                    kmaxr[r] = km
                    kmax = max(kmax, km)
                buf[:, :, :] = _F0
                # Gaussian-major, back to front: each Gaussian visits only the rows it can reach
                for k in range(kmax, -1, -1):
                    lo, hi = _row_span(par, k, top, hrow)
                    kf = np.float32(k)
                    mx = par[k, 0]
                    ha = par[k, 2]
                    b = par[k, 3]
                    hc = par[k, 4]
                    o = par[k, 5]
                    a_ = ha + ha
                    c_ = hc + hc
                    for r in range(lo, hi + 1):
                        if k > kmaxr[r]:
                            continue
                        dy = par[k, 1] - (top + np.float32(r))
                        bdy = b * dy
                        hcdy2 = hc * dy * dy
                        cnt = _F0
                        for p in range(L):
                            dx = mx - pxs[p]
                            sigma = (ha * dx + bdy) * dx + hcdy2
                            vis = _exp_neg(max(sigma, _F0))
                            alpha = min(_ALPHA_MAX, o * vis)
                            m = _F1 if (sigma >= _F0) & (alpha >= _ALPHA_MIN) & (kf <= lastf[r, p]) else _F0
                            ra = _F1 / (_F1 - alpha)
                            t1 = Tc[r, p] * (ra * m + (_F1 - m))  # T before this Gaussian
                            Tc[r, p] = t1
                            faca[p] = alpha * t1 * m
                            # no gradient through the clamp
                            msk[p] = m * (_F1 if o * vis <= _ALPHA_MAX else _F0)
                            dxa[p] = dx
                            visa[p] = vis
                            raa[p] = ra
                            vac[p] = vbase[r, p] * ra
                            cnt += m
                        if cnt == _F0:
                            continue
                        for d in range(D):
                            cd = col[k, d]
                            s = _F0
                            for p in range(L):
                                g = vc[r, d, p]
                                vac[p] += (cd * Tc[r, p] - buf[r, d, p] * raa[p]) * g
                                s += faca[p] * g
                                buf[r, d, p] += cd * faca[p]
                            tg[k, 6 + d] += s
                        sa = _F0
                        sx = _F0
                        s0 = _F0
                        for p in range(L):
                            dx = dxa[p]
                            mv = msk[p] * visa[p] * vac[p]  # d loss / d sigma = -o * mv
                            sa += mv * dx * dx
                            sx += mv * dx
                            s0 += mv
                        # with v_sigma = -o * mv summed over the row's pixels:
                        # v_conic = (1/2 v_sigma dx^2, v_sigma dx dy, 1/2 v_sigma dy^2),
                        # v_mean2d = v_sigma * (a dx + b dy, b dx + c dy)
                        tg[k, 0] += -o * (a_ * sx + b * dy * s0)
                        tg[k, 1] += -o * (b * sx + c_ * dy * s0)
                        tg[k, 2] += -o * _HALF * sa
                        tg[k, 3] += -o * sx * dy
                        tg[k, 4] += -o * _HALF * s0 * dy * dy
                        tg[k, 5] += s0
            row = gbuf[part]  # per part, not per thread: the sum over parts is then in a fixed order
            base = c * N
            for k in range(n):
                g = base + bins[start + k]
                for j in range(6 + D):
                    row[g, j] += tg[k, j]
