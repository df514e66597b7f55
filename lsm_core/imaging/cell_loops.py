"""Compiled per-pixel loops of cell finding (:mod:`lsm_core.imaging.cells`), by numba.

Splitting touching cells visits each pixel of the cells' mask once per step: to give it to a seed, to find
where two pieces touch, to measure each piece. As whole-array numpy passes these took some thirty passes over
a field's mask, more than the rest of the finding together; as loops they are one pass each. The same holds
for the chamfer distances, for cutting and resizing the crops, and for the outlines: their contours (as
scikit-image's find_contours), their simplification and the label image drawn from them (as its
draw.polygon), each giving what the library gave.

Each function is compiled on its first call and cached on disk (numba's ``cache=True``: in ``NUMBA_CACHE_DIR``
when set, beside this file, or in the user's cache directory), so a fresh process loads them in a quarter of a
second instead of compiling them in one or two. Where none of those can be written (a read-only install run by
a user without a home), each process compiles them instead of failing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from numba import config, njit


def can_cache() -> bool:
    """Whether numba can write its cache somewhere: ``NUMBA_CACHE_DIR``, this package's ``__pycache__``, or the
    user's ``~/.cache/numba`` (the places it tries, in that order), or the nearest existing folder above one."""
    cache_dir = getattr(config, "CACHE_DIR", "")  # numba's reading of NUMBA_CACHE_DIR
    places = [Path(cache_dir)] if cache_dir else []
    places += [Path(__file__).parent / "__pycache__", Path.home() / ".cache" / "numba"]
    for place in places:
        while not place.exists() and place != place.parent:
            place = place.parent
        if os.access(place, os.W_OK):
            return True
    return False


CACHE = can_cache()

STATS = 12
"""Columns of :func:`label_stats`: area, sum of rows, sum of columns, first and last row, first and last column,
lowest and highest row + column, lowest and highest row - column, highest distance."""
AREA, SUM_R, SUM_C, R0, R1, C0, C1, S0, S1, D0, D1, TOP = range(STATS)


@njit(cache=CACHE, nogil=True)
def _empty_stats(n: int) -> np.ndarray:
    """``n`` rows of ``STATS`` with nothing counted: area and sums 0, extremes at +-inf."""
    out = np.zeros((n, STATS))
    for k in range(n):
        out[k, R0] = out[k, C0] = out[k, S0] = out[k, D0] = np.inf
        out[k, R1] = out[k, C1] = out[k, S1] = out[k, D1] = out[k, TOP] = -np.inf
    return out


@njit(cache=CACHE, nogil=True)
def _count(out: np.ndarray, k: int, r: int, c: int, distance: float) -> None:
    """Pixel (r, c) at ``distance`` counted in row ``k`` of ``STATS``."""
    out[k, AREA] += 1
    out[k, SUM_R] += r
    out[k, SUM_C] += c
    out[k, R0] = min(out[k, R0], r)
    out[k, R1] = max(out[k, R1], r)
    out[k, C0] = min(out[k, C0], c)
    out[k, C1] = max(out[k, C1], c)
    out[k, S0] = min(out[k, S0], r + c)
    out[k, S1] = max(out[k, S1], r + c)
    out[k, D0] = min(out[k, D0], r - c)
    out[k, D1] = max(out[k, D1], r - c)
    out[k, TOP] = max(out[k, TOP], distance)


@njit(cache=CACHE, nogil=True)
def label_stats(labels: np.ndarray, n: int, distance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For labels 1..n of a label image, the columns of ``STATS`` (float64; row 0, the background, and an empty
    label's row hold area 0 and extremes at +-inf) and the flat index of each label's first pixel in raster
    order (-1: none)."""
    h, w = labels.shape
    out = _empty_stats(n + 1)
    first = np.full(n + 1, -1, np.int64)
    for r in range(h):
        for c in range(w):
            k = labels[r, c]
            if k == 0:  # the background: left empty
                continue
            if out[k, AREA] == 0:
                first[k] = r * w + c
            _count(out, k, r, c, distance[r, c])
    return out, first


@njit(cache=CACHE, nogil=True)
def seeds(peaks: np.ndarray, regions: np.ndarray, excluded: np.ndarray, distance: np.ndarray) -> tuple:
    """The seeds: 8-connected groups of ``peaks`` pixels whose region is not ``excluded``, numbered in the raster
    order of their first pixels (as ``ndi.label`` numbers them), each with its row of ``STATS`` (as
    :func:`label_stats`) and its first pixel's flat index. Returns (stats, first, n); only the peaks' pixels are
    visited after one scan."""
    h, w = peaks.shape
    total = 0
    for r in range(h):
        for c in range(w):
            if peaks[r, c] and not excluded[regions[r, c]]:
                total += 1
    out = _empty_stats(total + 1)
    first = np.full(total + 1, -1, np.int64)
    label = np.zeros((h, w), np.int32)
    stack = np.empty(total + 1, np.int64)
    n = 0
    for r0 in range(h):
        for c0 in range(w):
            if not peaks[r0, c0] or excluded[regions[r0, c0]] or label[r0, c0]:
                continue
            n += 1
            first[n] = r0 * w + c0
            label[r0, c0] = n
            stack[0] = r0 * w + c0
            top = 1
            while top:
                top -= 1
                r, c = stack[top] // w, stack[top] % w
                _count(out, n, r, c, distance[r, c])
                for dr in range(-1, 2):
                    for dc in range(-1, 2):
                        y, x = r + dr, c + dc
                        if 0 <= y < h and 0 <= x < w and peaks[y, x] and not label[y, x]:
                            if not excluded[regions[y, x]]:
                                label[y, x] = n
                                stack[top] = y * w + x
                                top += 1
    return out[: n + 1], first[: n + 1], n


@njit(cache=CACHE, nogil=True)
def nearest_seeds(
    regions: np.ndarray,
    first: np.ndarray,
    count: np.ndarray,
    order: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray,
    distance: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each pixel's seed (label; 0: background, or a region without seeds): of its region's seeds
    (``order[first[r]:first[r] + count[r]]``, in order) the one with the least ``a y + b x + c`` (float32, as
    written: the power distance less the pixel's own squared length), the first of equals. And where two
    seeds' pieces touch (4-neighbours): the lower and higher label and the lower ``distance`` of the two pixels,
    for each such pair of pixels; and each seed's piece's row of ``STATS`` (as :func:`label_stats`). Returns
    (pieces, stats, lo, hi, contact)."""
    h, w = regions.shape
    out = np.zeros((h, w), np.int32)
    stats = _empty_stats(len(a))
    lo = np.empty(2 * h * w, np.int64)
    hi = np.empty(2 * h * w, np.int64)
    contact = np.empty(2 * h * w, distance.dtype)
    n_pairs = 0
    for r in range(h):
        y = np.float32(r)
        for col in range(w):
            reg = regions[r, col]
            n = count[reg]
            if reg == 0 or n == 0:
                continue
            start = first[reg]
            pick = order[start]
            if n > 1:
                x = np.float32(col)
                best = a[pick] * y + b[pick] * x + c[pick]
                for k in range(start + 1, start + n):
                    s = order[k]
                    power = a[s] * y + b[s] * x + c[s]
                    if power < best:
                        best = power
                        pick = s
                # the pieces to the left and above are known: where they differ, the two touch
                for other, d in (
                    (out[r, col - 1] if col > 0 else 0, distance[r, col - 1] if col > 0 else 0),
                    (out[r - 1, col] if r > 0 else 0, distance[r - 1, col] if r > 0 else 0),
                ):
                    if other > 0 and other != pick:
                        lo[n_pairs], hi[n_pairs] = min(other, pick), max(other, pick)
                        contact[n_pairs] = min(d, distance[r, col])
                        n_pairs += 1
            out[r, col] = pick
            _count(stats, pick, r, col, distance[r, col])
    return out, stats, lo[:n_pairs], hi[:n_pairs], contact[:n_pairs]


@njit(cache=CACHE, nogil=True)
def resized_crops(
    image: np.ndarray, tops: np.ndarray, lefts: np.ndarray, side: int, idx: np.ndarray, wts: np.ndarray, fill: float
) -> np.ndarray:
    """Square crops of ``side`` pixels at (``tops``, ``lefts``) of a float32 image, pixels outside it ``fill``,
    each resized to S x S by a separable filter given as each output sample's K taps: the input samples
    ``idx`` (S, K) and their weights ``wts`` (S, K) (PIL's, :func:`lsm_core.imaging.cells._resize_taps`):
    along rows first, then columns. (N, S, S) float32."""
    h, w = image.shape
    n = len(tops)
    s, k = idx.shape
    out = np.empty((n, s, s), np.float32)
    patch = np.empty((side, side), np.float32)
    tmp = np.empty((side, s), np.float32)
    fill32 = np.float32(fill)
    for m in range(n):
        top, left = tops[m], lefts[m]
        inside = top >= 0 and left >= 0 and top + side <= h and left + side <= w
        for r in range(side):
            for c in range(side):
                y, x = top + r, left + c
                if inside or (0 <= y < h and 0 <= x < w):
                    patch[r, c] = image[y, x]
                else:
                    patch[r, c] = fill32
        for r in range(side):
            for j in range(s):
                acc = np.float32(0)
                for q in range(k):
                    acc += patch[r, idx[j, q]] * wts[j, q]
                tmp[r, j] = acc
        for i in range(s):
            row0, w0 = idx[i, 0], wts[i, 0]
            for j in range(s):
                out[m, i, j] = w0 * tmp[row0, j]
            for q in range(1, k):
                rq, wq = idx[i, q], wts[i, q]
                for j in range(s):
                    out[m, i, j] += wq * tmp[rq, j]
    return out


@njit(cache=CACHE, nogil=True)
def merge_tree(lo: np.ndarray, hi: np.ndarray, contact: np.ndarray, height: np.ndarray, depth: float) -> np.ndarray:
    """Each label's root after merging, highest contacts first (stable among equals), each pair of labels
    (``lo``, ``hi``) whose groups' lower top (a group's top: its highest label's ``height``) stands less than
    ``depth`` above their ``contact``; the smaller root absorbs the larger. (len(height),) int64."""
    parent = np.arange(len(height))
    top = height.astype(np.float64)
    for k in np.argsort(-contact, kind="mergesort"):
        ra, rb = lo[k], hi[k]
        while parent[ra] != ra:
            parent[ra] = parent[parent[ra]]
            ra = parent[ra]
        while parent[rb] != rb:
            parent[rb] = parent[parent[rb]]
            rb = parent[rb]
        if ra != rb and min(top[ra], top[rb]) - np.float64(contact[k]) < depth:
            small, large = min(ra, rb), max(ra, rb)
            parent[large] = small
            top[small] = max(top[ra], top[rb])
    for i in range(len(parent)):
        r = i
        while parent[r] != r:
            r = parent[r]
        parent[i] = r
    return parent


@njit(cache=CACHE, nogil=True)
def add_chamfer(mask: np.ndarray, out: np.ndarray) -> None:
    """Adds to ``out`` (int16) the chessboard and the city-block distance of each pixel of a bool ``mask`` (with
    some background) to that background, by one forward and one backward raster pass of the 3 x 3 masks (exact
    for these two metrics) on a frame of far-away values (outside the image counts as foreground)."""
    h, w = mask.shape
    far = np.int16(16000)
    chess = np.full((h + 2, w + 2), far, np.int16)
    city = np.full((h + 2, w + 2), far, np.int16)
    for r in range(h):
        for c in range(w):
            if not mask[r, c]:
                chess[r + 1, c + 1] = 0
                city[r + 1, c + 1] = 0
    for r in range(1, h + 1):
        for c in range(1, w + 1):
            if chess[r, c]:
                above = min(min(chess[r - 1, c - 1], chess[r - 1, c]), chess[r - 1, c + 1])
                chess[r, c] = min(above, chess[r, c - 1]) + 1
                city[r, c] = min(city[r - 1, c], city[r, c - 1]) + 1
    for r in range(h, 0, -1):
        for c in range(w, 0, -1):
            if chess[r, c]:
                below = min(min(chess[r + 1, c - 1], chess[r + 1, c]), chess[r + 1, c + 1])
                chess[r, c] = min(chess[r, c], min(below, chess[r, c + 1]) + 1)
                city[r, c] = min(city[r, c], min(city[r + 1, c], city[r, c + 1]) + 1)
                out[r - 1, c - 1] += chess[r, c] + city[r, c]


@njit(cache=CACHE, nogil=True)
def merged_stats(stats: np.ndarray, merged: np.ndarray, n: int) -> np.ndarray:
    """Rows of ``STATS`` for labels 0..n, each made of the rows of the labels ``merged`` maps to it (areas and
    sums added, extremes their extremes)."""
    out = _empty_stats(n + 1)
    for i in range(len(merged)):
        k = merged[i]
        for col in (AREA, SUM_R, SUM_C):
            out[k, col] += stats[i, col]
        for col in (R0, C0, S0, D0):
            out[k, col] = min(out[k, col], stats[i, col])
        for col in (R1, C1, S1, D1, TOP):
            out[k, col] = max(out[k, col], stats[i, col])
    return out


@njit(cache=CACHE, nogil=True)
def simplified(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker: which vertices of a polyline (K, 2) float64 keep it within ``tolerance``, as a (K,) bool
    mask; each split at its farthest point (the first of equals), splits taken last in, first out."""
    n = len(points)
    keep = np.zeros(n, np.bool_)
    if n == 0:
        return keep
    keep[0] = keep[n - 1] = True
    stack = np.empty((2 * n + 2, 2), np.int64)
    stack[0, 0], stack[0, 1] = 0, n - 1
    top = 1
    while top:
        top -= 1
        a, b = stack[top, 0], stack[top, 1]
        if b - a < 2:
            continue
        sy, sx = points[b, 0] - points[a, 0], points[b, 1] - points[a, 1]
        norm = np.hypot(sy, sx)
        best, k = -1.0, -1
        for i in range(a + 1, b):
            ry, rx = points[i, 0] - points[a, 0], points[i, 1] - points[a, 1]
            d = np.abs(ry * sx - rx * sy) / norm if norm > 0 else np.hypot(ry, rx)
            if d > best:
                best, k = d, i
        if best > tolerance:
            keep[k] = True
            stack[top, 0], stack[top, 1] = a, k
            stack[top + 1, 0], stack[top + 1, 1] = k, b
            top += 2
    return keep


@njit(cache=CACHE, nogil=True)
def fill_polygon(out: np.ndarray, rows: np.ndarray, cols: np.ndarray, value: int) -> None:
    """``out[rr, cc] = value`` for the pixels scikit-image's ``draw.polygon(rows, cols, shape=out.shape)`` gives:
    each pixel centre of the polygon's box (from max(0, min) to ceil(max), within the image) that lies inside the
    polygon, on one of its edges or on a vertex (O'Rourke's crossing test, as scikit-image's
    ``point_in_polygon``, with its 1e-12 vertex tolerance)."""
    h, w = out.shape
    n = len(rows)
    if n == 0:
        return
    r_lo, r_hi, c_lo, c_hi = rows[0], rows[0], cols[0], cols[0]
    for i in range(1, n):
        r_lo, r_hi = min(r_lo, rows[i]), max(r_hi, rows[i])
        c_lo, c_hi = min(c_lo, cols[i]), max(c_hi, cols[i])
    minr, maxr = int(max(0.0, r_lo)), min(h - 1, int(np.ceil(r_hi)))
    minc, maxc = int(max(0.0, c_lo)), min(w - 1, int(np.ceil(c_hi)))
    eps = 1e-12
    edges = np.empty(n, np.int64)  # the edges (i - 1, i) that straddle the row: the rest never count there
    near = np.empty(n, np.int64)  # the vertices on the row (within eps)
    for r in range(minr, maxr + 1):
        n_edges = n_near = 0
        y1 = rows[n - 1] - r
        for i in range(n):
            y0 = rows[i] - r
            if -eps < y0 < eps:
                near[n_near] = i
                n_near += 1
            if (y0 > 0) != (y1 > 0) or (y0 < 0) != (y1 < 0):
                edges[n_edges] = i
                n_edges += 1
            y1 = y0
        for c in range(minc, maxc + 1):
            inside = False
            for k in range(n_near):
                x0 = cols[near[k]] - c
                if -eps < x0 < eps:
                    inside = True
            if not inside:
                right = left = 0
                for k in range(n_edges):
                    i = edges[k]
                    j = i - 1 if i > 0 else n - 1
                    x0, y0 = cols[i] - c, rows[i] - r
                    x1, y1 = cols[j] - c, rows[j] - r
                    if (y0 > 0) != (y1 > 0):
                        if (x0 * y1 - x1 * y0) / (y1 - y0) > 0:
                            right += 1
                    if (y0 < 0) != (y1 < 0):
                        if (x0 * y1 - x1 * y0) / (y1 - y0) < 0:
                            left += 1
                inside = (right & 1) != (left & 1) or (right & 1) == 1
            if inside:
                out[r, c] = value


# marching squares' segments in each of the 16 cases (bit 1: upper left above the level, 2: upper right, 4: lower
# left, 8: lower right), as scikit-image draws them, the low pixels face-connected in the saddles (6 and 9): up to
# two (from, to) pairs of edges, 0 top, 1 bottom, 2 left, 3 right (-1: none), the low side on the left
SQUARE_SEGMENTS = np.array(
    [
        [[-1, -1], [-1, -1]],
        [[0, 2], [-1, -1]],
        [[3, 0], [-1, -1]],
        [[3, 2], [-1, -1]],
        [[2, 1], [-1, -1]],
        [[0, 1], [-1, -1]],
        [[3, 0], [2, 1]],
        [[3, 1], [-1, -1]],
        [[1, 3], [-1, -1]],
        [[0, 2], [1, 3]],
        [[1, 0], [-1, -1]],
        [[1, 2], [-1, -1]],
        [[2, 3], [-1, -1]],
        [[0, 3], [-1, -1]],
        [[2, 0], [-1, -1]],
        [[-1, -1], [-1, -1]],
    ],
    np.int64,
)


@njit(cache=CACHE, nogil=True)
def longest_contour(mask: np.ndarray) -> np.ndarray:
    """scikit-image's ``find_contours(mask, 0.5)`` of a 0/1 uint8 array (its marching squares, the "low" pixels
    face-connected, its assembly of segments into contours), the longest contour only (the first of equals, as
    ``max(contours, key=len)`` picks): (K, 2) float64 (row, col); (0, 2) when there is none. Points on the
    half-pixel grid are keyed as integers; contours are linked lists, joined as scikit-image joins its deques."""
    h, w = mask.shape
    span = 2 * w + 1
    # each point (r, c) on the half-pixel grid as the key 2r * span + 2c
    cap = 4 * h * w + 4
    key = np.empty(cap, np.int64)  # the nodes of every contour's linked list
    nxt = np.full(cap, -1, np.int64)
    heads = np.empty(cap, np.int64)  # each contour's first and last node, and whether it is still one
    tails = np.empty(cap, np.int64)
    alive = np.zeros(cap, np.bool_)
    starts = {np.int64(-1): np.int64(-1)}  # point -> contour whose first point it is (-1: typing only)
    ends = {np.int64(-1): np.int64(-1)}  # point -> contour whose last point it is
    n_nodes = 0
    n_contours = 0
    for r0 in range(h - 1):
        for c0 in range(w - 1):
            case = 0
            if mask[r0, c0] > 0.5:
                case += 1
            if mask[r0, c0 + 1] > 0.5:
                case += 2
            if mask[r0 + 1, c0] > 0.5:
                case += 4
            if mask[r0 + 1, c0 + 1] > 0.5:
                case += 8
            if case == 0 or case == 15:
                continue
            # the square's edges' midpoints: top, bottom, left, right
            points = (
                2 * r0 * span + 2 * c0 + 1,
                2 * (r0 + 1) * span + 2 * c0 + 1,
                (2 * r0 + 1) * span + 2 * c0,
                (2 * r0 + 1) * span + 2 * (c0 + 1),
            )
            n_pairs = 2 if SQUARE_SEGMENTS[case, 1, 0] >= 0 else 1
            for p in range(n_pairs):
                a, b = points[SQUARE_SEGMENTS[case, p, 0]], points[SQUARE_SEGMENTS[case, p, 1]]
                tail = head = np.int64(-1)
                if b in starts:
                    tail = starts[b]
                    del starts[b]
                if a in ends:
                    head = ends[a]
                    del ends[a]
                if tail >= 0 and head >= 0:
                    if tail == head:  # close the contour
                        key[n_nodes] = b
                        nxt[tails[head]] = n_nodes
                        tails[head] = n_nodes
                        n_nodes += 1
                    elif tail > head:  # tail was made later: append it to head
                        nxt[tails[head]] = heads[tail]
                        tails[head] = tails[tail]
                        alive[tail] = False
                        starts[key[heads[head]]] = head
                        ends[key[tails[head]]] = head
                    else:  # head was made later: put it before tail
                        if key[heads[head]] in starts:  # head's first point may be b itself
                            del starts[key[heads[head]]]
                        nxt[tails[head]] = heads[tail]
                        heads[tail] = heads[head]
                        alive[head] = False
                        starts[key[heads[tail]]] = tail
                        ends[key[tails[tail]]] = tail
                elif tail < 0 and head < 0:  # a new contour
                    key[n_nodes], key[n_nodes + 1] = a, b
                    nxt[n_nodes] = n_nodes + 1
                    heads[n_contours], tails[n_contours] = n_nodes, n_nodes + 1
                    alive[n_contours] = True
                    starts[a] = ends[b] = np.int64(n_contours)
                    n_nodes += 2
                    n_contours += 1
                elif head < 0:  # prepend to tail
                    key[n_nodes] = a
                    nxt[n_nodes] = heads[tail]
                    heads[tail] = n_nodes
                    n_nodes += 1
                    starts[a] = tail
                else:  # append to head
                    key[n_nodes] = b
                    nxt[tails[head]] = n_nodes
                    tails[head] = n_nodes
                    n_nodes += 1
                    ends[b] = head
    best, best_len = -1, -1
    for k in range(n_contours):
        if not alive[k]:
            continue
        length, node = 1, heads[k]
        while node != tails[k]:
            node = nxt[node]
            length += 1
        if length > best_len:
            best, best_len = k, length
    if best < 0:
        return np.zeros((0, 2))
    out = np.empty((best_len, 2))
    node = heads[best]
    for i in range(best_len):
        out[i, 0] = (key[node] // span) / 2
        out[i, 1] = (key[node] % span) / 2
        node = nxt[node]
    return out
