"""3D shape kernels (compiled with numba): each object's convex-hull voxels and marching-cubes surface area,
straight from a label region, object by object (definitions: :mod:`bigseg.measure.crops`).

Per object: its mask over its bounding box, padded by one background voxel on every side; the hull points
(:func:`_hull_points`), their convex hull (:func:`_hull_planes`: incremental, in exact integer arithmetic) and
the voxel centres inside it line by line (:func:`_count_inside`); the mesh area from each 2 x 2 x 2 cube's
corner pattern (:func:`_surface`). All coordinates are doubled (voxel centres even, face centres odd), so every
point and plane is an integer one and every inside test exact: a voxel centre on the hull counts in, as
scikit-image's ``convex_hull_image`` counts it (``include_borders``, within 1e-10).
"""
from __future__ import annotations

import numba
import numpy as np

__all__ = ["shape_3d"]

_JIT = dict(cache=True, nogil=True)
#: The six face directions (axis, sign) in doubled coordinates.
_FACES = np.array([[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]], np.int64)


def shape_3d(region: np.ndarray, labels: np.ndarray, lo: np.ndarray, hi: np.ndarray,
             cube_areas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel count, hull voxels and surface area of each object ``labels[j]`` of ``region`` (3D), its bounding
    box ``lo[j]`` .. ``hi[j]`` (region indices, max exclusive, inside the region); ``cube_areas`` the mesh area of
    each of the 256 corner patterns (bit k: corner k in ``np.ndindex(2, 2, 2)`` order). An object absent from its
    box has count 0 (and hull and area 0)."""
    lo, hi = np.ascontiguousarray(lo, np.int64), np.ascontiguousarray(hi, np.int64)
    if region.dtype == np.bool_:
        region = region.view(np.uint8)
    return _shape_3d(region, np.asarray(labels).astype(region.dtype), lo, hi, np.asarray(cube_areas, np.float64),
                     _FACES)


@numba.njit(**_JIT)
def _shape_3d(region, labels, lo, hi, cube_areas, faces):
    k = labels.size
    count, hull, area = np.zeros(k), np.zeros(k), np.zeros(k)
    for j in range(k):
        ez, ey, ex = hi[j, 0] - lo[j, 0], hi[j, 1] - lo[j, 1], hi[j, 2] - lo[j, 2]
        mask = np.zeros((ez + 2, ey + 2, ex + 2), np.uint8)
        n = 0
        for z in range(ez):
            for y in range(ey):
                for x in range(ex):
                    if region[lo[j, 0] + z, lo[j, 1] + y, lo[j, 2] + x] == labels[j]:
                        mask[z + 1, y + 1, x + 1] = 1
                        n += 1
        if n == 0:
            continue
        count[j] = n
        area[j] = _surface(mask, cube_areas)
        points = _hull_points(mask, faces)
        planes, facets = _hull_planes(points)
        hull[j] = _count_inside(planes, facets, points, ez, ey, ex)
    return count, hull, area


@numba.njit(**_JIT)
def _surface(mask, cube_areas):
    """The area of skimage's marching-cubes mesh (Lewiner, level 0.5) of the padded mask: with values 0 and 1
    every cube of 2 x 2 x 2 voxels gets the triangles of its corners' pattern alone (vertices at edge midpoints,
    Lewiner's tests decided by the pattern), so the area is the sum over the cubes of their patterns' areas."""
    total = 0.0
    for z in range(mask.shape[0] - 1):
        for y in range(mask.shape[1] - 1):
            for x in range(mask.shape[2] - 1):
                p = (mask[z, y, x] | mask[z, y, x + 1] << 1 | mask[z, y + 1, x] << 2 | mask[z, y + 1, x + 1] << 3
                     | mask[z + 1, y, x] << 4 | mask[z + 1, y, x + 1] << 5 | mask[z + 1, y + 1, x] << 6
                     | mask[z + 1, y + 1, x + 1] << 7)
                if p != 0 and p != 255:
                    total += cube_areas[p]
    return total


@numba.njit(**_JIT)
def _hull_points(mask, faces):
    """The points (doubled box coordinates) whose hull is the object's voxel centres widened by their face
    centres: only the possible corners of that hull. A corner is a voxel centre c plus a face offset e/2 with c
    no voxel between two of the object's along an axis, and e dropped where c + e or any c + e +- e' (e' along
    another axis) is the object's (there a neighbour's point lies beyond it in every direction that favours e)."""
    out = np.empty((16, 3), np.int64)
    n = 0
    for z in range(1, mask.shape[0] - 1):
        for y in range(1, mask.shape[1] - 1):
            for x in range(1, mask.shape[2] - 1):
                if not mask[z, y, x]:
                    continue
                if ((mask[z - 1, y, x] and mask[z + 1, y, x]) or (mask[z, y - 1, x] and mask[z, y + 1, x])
                        or (mask[z, y, x - 1] and mask[z, y, x + 1])):
                    continue
                for f in range(6):
                    az, ay, ax = z + faces[f, 0], y + faces[f, 1], x + faces[f, 2]
                    if mask[az, ay, ax]:
                        continue
                    taken = True
                    for g in range(6):  # the ahead voxel's neighbours across the other axes
                        if faces[g, 0] * faces[f, 0] + faces[g, 1] * faces[f, 1] + faces[g, 2] * faces[f, 2] != 0:
                            continue
                        if mask[az + faces[g, 0], ay + faces[g, 1], ax + faces[g, 2]]:
                            taken = False
                            break
                    if not taken:
                        continue
                    if n == out.shape[0]:
                        grown = np.empty((2 * n, 3), np.int64)
                        grown[:n] = out
                        out = grown
                    out[n, 0] = 2 * (z - 1) + faces[f, 0]
                    out[n, 1] = 2 * (y - 1) + faces[f, 1]
                    out[n, 2] = 2 * (x - 1) + faces[f, 2]
                    n += 1
    return out[:n]


@numba.njit(**_JIT)
def _plane(p, a, b, c):
    """The normal (b - a) x (c - a) of the plane through p[a], p[b], p[c], and its offset (normal . p[a])."""
    ux, uy, uz = p[b, 0] - p[a, 0], p[b, 1] - p[a, 1], p[b, 2] - p[a, 2]
    vx, vy, vz = p[c, 0] - p[a, 0], p[c, 1] - p[a, 1], p[c, 2] - p[a, 2]
    n0, n1, n2 = uy * vz - uz * vy, uz * vx - ux * vz, ux * vy - uy * vx
    return n0, n1, n2, n0 * p[a, 0] + n1 * p[a, 1] + n2 * p[a, 2]


@numba.njit(**_JIT)
def _first_simplex(p):
    """Four points of ``p`` not in one plane (the points span 3D: a widened voxel set always does). The
    choices compare floats (squared lengths could overflow int64 on huge boxes); only nonzero matters."""
    n = p.shape[0]
    i0 = 0
    i1, best = 0, -1.0
    for i in range(n):
        d = float(p[i, 0] - p[i0, 0]) ** 2 + float(p[i, 1] - p[i0, 1]) ** 2 + float(p[i, 2] - p[i0, 2]) ** 2
        if d > best:
            i1, best = i, d
    i2, best = 0, -1.0
    for i in range(n):
        n0, n1, n2, _ = _plane(p, i0, i1, i)
        d = float(n0) ** 2 + float(n1) ** 2 + float(n2) ** 2
        if d > best:
            i2, best = i, d
    n0, n1, n2, off = _plane(p, i0, i1, i2)
    i3, best = 0, -1.0
    for i in range(n):
        d = abs(float(n0 * p[i, 0] + n1 * p[i, 1] + n2 * p[i, 2] - off))
        if d > best:
            i3, best = i, d
    return i0, i1, i2, i3


@numba.njit(**_JIT)
def _hull_planes(p):
    """Outward normals and offsets (normal . q <= offset inside: a row of 4) and points of the facets of the
    convex hull of ``p`` (integer points spanning 3D): incremental, a point added where it lies strictly outside
    some facet (the facets it sees are replaced by its cone over their horizon; coplanar facets may stay apart).
    The new facets take the seen ones' rows; the facets stay rows 0 .. nf - 1."""
    n = p.shape[0]
    cap = 2 * n + 4  # a hull of n points has at most 2 n - 4 facets
    verts = np.empty((cap, 3), np.int64)
    planes = np.empty((cap, 4), np.int64)
    simplex = _first_simplex(p)
    for f in range(4):
        a, b, c = [simplex[t] for t in range(4) if t != f]
        q = simplex[f]
        n0, n1, n2, off = _plane(p, a, b, c)
        if n0 * p[q, 0] + n1 * p[q, 1] + n2 * p[q, 2] > off:  # the fourth point must lie inside
            b, c = c, b
            n0, n1, n2, off = -n0, -n1, -n2, -off
        verts[f, 0], verts[f, 1], verts[f, 2] = a, b, c
        planes[f, 0], planes[f, 1], planes[f, 2], planes[f, 3] = n0, n1, n2, off
    nf = 4
    visible = np.empty(cap, np.int64)
    horizon = np.empty((cap, 2), np.int64)
    for i in range(n):
        if i == simplex[0] or i == simplex[1] or i == simplex[2] or i == simplex[3]:
            continue
        nv = 0
        for f in range(nf):
            if planes[f, 0] * p[i, 0] + planes[f, 1] * p[i, 1] + planes[f, 2] * p[i, 2] > planes[f, 3]:
                visible[nv] = f
                nv += 1
        if nv == 0:
            continue
        nh = 0
        for s in range(nv):  # edges of the visible facets whose reverse is no visible facet's: the horizon
            f = visible[s]
            for e in range(3):
                a, b = verts[f, e], verts[f, (e + 1) % 3]
                shared = False
                for t in range(nv):
                    g = visible[t]
                    if g != f and ((verts[g, 0] == b and verts[g, 1] == a) or (verts[g, 1] == b and verts[g, 2] == a)
                                   or (verts[g, 2] == b and verts[g, 0] == a)):
                        shared = True
                        break
                if not shared:
                    horizon[nh, 0], horizon[nh, 1] = a, b
                    nh += 1
        for s in range(max(nv, nh)):
            if s < nh:  # the cone's facet over a horizon edge: in a seen facet's row, or a new one
                f = visible[s] if s < nv else nf
                if s >= nv:
                    nf += 1
                a, b = horizon[s, 0], horizon[s, 1]
                n0, n1, n2, off = _plane(p, a, b, i)
                verts[f, 0], verts[f, 1], verts[f, 2] = a, b, i
                planes[f, 0], planes[f, 1], planes[f, 2], planes[f, 3] = n0, n1, n2, off
        if nh < nv:  # seen facets left over: the last rows move into them, from the highest row down
            left = np.sort(visible[nh:nv])[::-1]
            for f in left:
                nf -= 1
                if f != nf:
                    verts[f], planes[f] = verts[nf], planes[nf]
    return planes[:nf], verts[:nf]


@numba.njit(**_JIT)
def _count_inside(planes, facets, p, ez, ey, ex):
    """Voxel centres of the box (0 .. e - 1 per axis) inside or on every plane (``planes``: normal and offset in
    doubled coordinates, one per facet, ``facets`` their points' indices into ``p``), line by line along x: a
    plane with an x part bounds x on one side, any other keeps or drops the whole line. A plane z only meets the
    facets whose points' z-range holds it, and those alone bound its lines (the plane cuts the hull inside)."""
    nf = planes.shape[0]
    zmin, zmax = np.empty(nf, np.int64), np.empty(nf, np.int64)
    for f in range(nf):
        a, b, c = p[facets[f, 0], 0], p[facets[f, 1], 0], p[facets[f, 2], 0]
        zmin[f], zmax[f] = min(a, b, c), max(a, b, c)
    near = np.empty(nf, np.int64)
    total = 0
    for z in range(ez):
        m = 0
        for f in range(nf):
            if zmin[f] <= 2 * z <= zmax[f]:
                near[m] = f
                m += 1
        for y in range(ey):
            first, last = 0, ex - 1
            for s in range(m):
                f = near[s]
                r = planes[f, 3] - 2 * (planes[f, 0] * z + planes[f, 1] * y)  # the plane: 2 n_x x <= r
                q = 2 * planes[f, 2]
                if q > 0:
                    last = min(last, r // q)  # the last x inside (floor division: exact)
                elif q < 0:
                    first = max(first, -(-r // q))  # the first x inside
                elif r < 0:
                    first = ex
                if first > last:
                    break
            if last >= first:
                total += last - first + 1
    return total
