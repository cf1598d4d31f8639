"""ggml's reference quantizers for Q4_K, Q5_K and Q6_K (quantize_row_*_ref in ggml-quants.c,
shared/specs/gguf.md section 4) in numpy, vectorized over blocks, for byte comparison with
qtrain's C quantizers (the `gguf` package has dequantizers for these types but no quantizer).

Every operation is done on float32 arrays one ggml statement at a time, sums accumulated
element by element in ggml's order, so the results are bit-identical to a C build without
FMA contraction. nearest_int (float32 add of 1.5*2^23) is np.rint: round half to even.
"""
import numpy as np

F = np.float32


def _f(x):
    return np.asarray(x, dtype=F)


def nearest_int(v):
    return np.rint(np.nan_to_num(_f(v))).astype(np.int64)


def _level(v, nmax):
    """ggml's guarded level: v > 0 ? nearest_int(min(v, nmax)) : 0"""
    v = np.nan_to_num(_f(v), nan=-1.0, posinf=float(nmax), neginf=-1.0)
    return np.where(v > 0, nearest_int(np.minimum(v, F(nmax))), 0)


def make_qkx2(x, w, nmax, rmin, rdelta, nstep):
    """x, w [nb, n] float32 -> scale [nb], the_min [nb], L [nb, n]"""
    nb, n = x.shape
    mn, mx = x[:, 0].copy(), x[:, 0].copy()
    sum_w = w[:, 0].copy()
    sum_x = _f(sum_w * x[:, 0])
    for i in range(1, n):
        mn = np.where(x[:, i] < mn, x[:, i], mn)
        mx = np.where(x[:, i] > mx, x[:, i], mx)
        sum_w = _f(sum_w + w[:, i])
        sum_x = _f(sum_x + _f(w[:, i] * x[:, i]))
    mn = np.where(mn > 0, F(0), mn)
    degenerate = mx == mn
    with np.errstate(all="ignore"):
        iscale = _f(F(nmax) / _f(mx - mn))
        scale = _f(F(1) / iscale)
        L = _level(_f(iscale[:, None] * _f(x - mn[:, None])), nmax)
        best = np.zeros(nb, F)
        for i in range(n):
            diff = _f(_f(_f(scale * _f(L[:, i])) + mn) - x[:, i])
            best = _f(best + _f(w[:, i] * _f(diff * diff)))
        for step in range(nstep + 1):
            isc = _f(_f(_f(F(rmin) + _f(F(rdelta) * F(step))) + F(nmax)) / _f(mx - mn))
            Laux = _level(_f(isc[:, None] * _f(x - mn[:, None])), nmax)
            sl = np.zeros(nb, F)
            sl2 = np.zeros(nb, F)
            sxl = np.zeros(nb, F)
            for i in range(n):
                wl = _f(w[:, i] * _f(Laux[:, i]))
                sl = _f(sl + wl)
                sl2 = _f(sl2 + _f(wl * _f(Laux[:, i])))
                sxl = _f(sxl + _f(wl * x[:, i]))
            D = _f(_f(sum_w * sl2) - _f(sl * sl))
            this_scale = _f(_f(_f(sum_w * sxl) - _f(sum_x * sl)) / D)
            this_min = _f(_f(_f(sl2 * sum_x) - _f(sl * sxl)) / D)
            pos = this_min > 0
            this_scale = np.where(pos, _f(sxl / sl2), this_scale)
            this_min = np.where(pos, F(0), this_min)
            err = np.zeros(nb, F)
            for i in range(n):
                diff = _f(_f(_f(this_scale * _f(Laux[:, i])) + this_min) - x[:, i])
                err = _f(err + _f(w[:, i] * _f(diff * diff)))
            upd = (D > 0) & (err < best)
            L = np.where(upd[:, None], Laux, L)
            best = np.where(upd, err, best)
            scale = np.where(upd, this_scale, scale)
            mn = np.where(upd, this_min, mn)
    scale = np.where(degenerate, F(0), scale)
    L = np.where(degenerate[:, None], 0, L)
    return _f(scale), _f(-mn), L


def make_qx(x, nmax):
    """make_qx_quants(n, nmax, x, L, rmse_type=1, NULL): x [nb, n] -> scale [nb], L [nb, n]"""
    nb, n = x.shape
    idx = np.argmax(np.abs(x), axis=1)  # first of equal maxima, like ggml's strict '>'
    mx = x[np.arange(nb), idx]
    zero = np.abs(mx) < F(1e-15)
    w = _f(x * x)
    with np.errstate(all="ignore"):
        def trial(isc):
            l = np.clip(nearest_int(_f(isc[:, None] * x)), -nmax, nmax - 1)
            slx = np.zeros(nb, F)
            sl2 = np.zeros(nb, F)
            for i in range(n):
                slx = _f(slx + _f(_f(w[:, i] * x[:, i]) * _f(l[:, i])))
                sl2 = _f(sl2 + _f(_f(w[:, i] * _f(l[:, i])) * _f(l[:, i])))
            return l, slx, sl2

        L, slx, sl2 = trial(_f(F(-nmax) / mx))
        scale = np.where(sl2 != 0, _f(slx / sl2), F(0))
        best = _f(scale * slx)
        for s in range(-9, 10):
            if s == 0:
                continue
            l, slx, sl2 = trial(_f(_f(-_f(F(nmax) + _f(F(0.1) * F(s)))) / mx))
            take = (sl2 > 0) & (_f(slx * slx) > _f(best * sl2))
            L = np.where(take[:, None], l, L)
            scale = np.where(take, _f(slx / sl2), scale)
            best = np.where(take, _f(scale * slx), best)
    L = np.where(zero[:, None], -nmax, L)
    return np.where(zero, F(0), scale), L + nmax


def _fp16(v):
    return np.asarray(v, dtype=F).astype(np.float16)


def _pack_scales(ls, lm):
    """6-bit sub-block scales/mins [nb, 8] -> 12 bytes [nb, 12] (spec section 3)"""
    nb = ls.shape[0]
    s = np.zeros((nb, 12), np.uint8)
    for j in range(8):
        if j < 4:
            s[:, j] = ls[:, j]
            s[:, j + 4] = lm[:, j]
        else:
            s[:, j + 4] = (ls[:, j] & 15) | ((lm[:, j] & 15) << 4)
            s[:, j - 4] |= (ls[:, j] >> 4) << 6
            s[:, j] |= (lm[:, j] >> 4) << 6
    return s


def _unpack(s, j):
    if j < 4:
        return s[:, j] & 63, s[:, j + 4] & 63
    return (s[:, j + 4] & 15) | ((s[:, j - 4] >> 6) << 4), (s[:, j + 4] >> 4) | ((s[:, j] >> 6) << 4)


def quantize_qk(x, nmax):
    """Q4_K (nmax 15) or Q5_K (nmax 31) reference: x [nrows, n] -> bytes [nrows, n/256*size]"""
    rows, n = x.shape
    xb = _f(x).reshape(-1, 256)
    nb = xb.shape[0]
    scales = np.zeros((nb, 8), F)
    mins = np.zeros((nb, 8), F)
    L = np.zeros((nb, 256), np.int64)
    for j in range(8):
        xs = xb[:, 32 * j:32 * j + 32]
        s2 = np.zeros(nb, F)
        for l in range(32):
            s2 = _f(s2 + _f(xs[:, l] * xs[:, l]))
        av = np.sqrt(_f(s2 / F(32)))
        w = _f(av[:, None] + np.abs(xs))
        if nmax == 15:
            scales[:, j], mins[:, j], L[:, 32 * j:32 * j + 32] = make_qkx2(xs, w, 15, -1.0, 0.1, 20)
        else:
            scales[:, j], mins[:, j], L[:, 32 * j:32 * j + 32] = make_qkx2(xs, w, 31, -0.5, 0.1, 15)
    max_scale = np.zeros(nb, F)
    max_min = np.zeros(nb, F)
    for j in range(8):
        max_scale = np.where(scales[:, j] > max_scale, scales[:, j], max_scale)
        max_min = np.where(mins[:, j] > max_min, mins[:, j], max_min)
    with np.errstate(all="ignore"):
        inv_s = np.where(max_scale > 0, _f(F(63) / max_scale), F(0))
        inv_m = np.where(max_min > 0, _f(F(63) / max_min), F(0))
    ls = np.minimum(63, nearest_int(_f(inv_s[:, None] * scales)) & 0xFF).astype(np.uint8)
    lm = np.minimum(63, nearest_int(_f(inv_m[:, None] * mins)) & 0xFF).astype(np.uint8)
    packed = _pack_scales(ls, lm)
    d = _fp16(_f(max_scale / F(63)))
    dmin = _fp16(_f(max_min / F(63)))
    for j in range(8):
        sc, m = _unpack(packed, j)
        dq = _f(d.astype(F) * _f(sc))
        dm = _f(dmin.astype(F) * _f(m))
        xs = xb[:, 32 * j:32 * j + 32]
        with np.errstate(all="ignore"):
            l = np.clip(nearest_int(_f(_f(xs + dm[:, None]) / dq[:, None])), 0, nmax)
        L[:, 32 * j:32 * j + 32] = np.where((dq != 0)[:, None], l, L[:, 32 * j:32 * j + 32])
    head = np.concatenate([d.view(np.uint8).reshape(nb, 2), dmin.view(np.uint8).reshape(nb, 2), packed], axis=1)
    qs = np.zeros((nb, 128), np.uint8)
    qh = np.zeros((nb, 32), np.uint8)
    for c in range(4):
        lo, hi = L[:, 64 * c:64 * c + 32], L[:, 64 * c + 32:64 * c + 64]
        qs[:, 32 * c:32 * c + 32] = (lo & 15) | ((hi & 15) << 4)
        qh |= (((lo >> 4) & 1) << (2 * c)).astype(np.uint8) | (((hi >> 4) & 1) << (2 * c + 1)).astype(np.uint8)
    blocks = np.concatenate([head, qs] if nmax == 15 else [head, qh, qs], axis=1)
    return blocks.reshape(rows, -1)


def quantize_q6_k(x):
    rows, n = x.shape
    xb = _f(x).reshape(-1, 256)
    nb = xb.shape[0]
    scales = np.zeros((nb, 16), F)
    L = np.zeros((nb, 256), np.int64)
    for ib in range(16):
        scales[:, ib], L[:, 16 * ib:16 * ib + 16] = make_qx(xb[:, 16 * ib:16 * ib + 16], 32)
    idx = np.argmax(np.abs(scales), axis=1)
    max_scale = scales[np.arange(nb), idx]
    zero = np.abs(max_scale) < F(1e-15)
    with np.errstate(all="ignore"):
        iscale = _f(F(-128) / max_scale)
        d = _fp16(_f(F(1) / iscale))
        sc = np.minimum(127, nearest_int(_f(iscale[:, None] * scales))).astype(np.int8)
        for j in range(16):
            dq = _f(d.astype(F) * _f(sc[:, j]))
            l = np.clip(nearest_int(_f(xb[:, 16 * j:16 * j + 16] / dq[:, None])), -32, 31) + 32
            L[:, 16 * j:16 * j + 16] = np.where((dq != 0)[:, None], l, L[:, 16 * j:16 * j + 16])
    ql = np.zeros((nb, 128), np.uint8)
    qh = np.zeros((nb, 64), np.uint8)
    for h in range(2):
        Lh = L[:, 128 * h:128 * h + 128]
        q = [Lh[:, 32 * k:32 * k + 32] for k in range(4)]
        ql[:, 64 * h:64 * h + 32] = (q[0] & 15) | ((q[2] & 15) << 4)
        ql[:, 64 * h + 32:64 * h + 64] = (q[1] & 15) | ((q[3] & 15) << 4)
        qh[:, 32 * h:32 * h + 32] = (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6)
    blocks = np.concatenate([ql, qh, sc.view(np.uint8), d.view(np.uint8).reshape(nb, 2)], axis=1)
    blocks[zero] = 0
    return blocks.reshape(rows, -1)
