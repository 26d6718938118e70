"""Whole-volume counts, connected components and look-ups in bounded memory.

Why: on a 1000-slice 512 x 512 series a uint8 label map is 250 MB, but `np.bincount` casts
its input to int64 (2 GB), `ndimage.label` writes int32 (1 GB) and a fancy-indexed look-up
allocates a full intermediate. These helpers give the same numbers while working on slabs
of slices (about 4 M voxels each) and labelling into uint16 when the count fits.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy import ndimage

SLAB_VOXELS = 1 << 22


def slabs(volume: np.ndarray) -> Iterator[slice]:
    """Slices along axis 0 that each cover at most SLAB_VOXELS voxels (at least one slice)."""
    per_slice = max(1, int(np.prod(volume.shape[1:], dtype=np.int64)))
    step = max(1, SLAB_VOXELS // per_slice)
    for start in range(0, volume.shape[0], step):
        yield slice(start, start + step)


def value_counts(values: np.ndarray, minlength: int = 0) -> np.ndarray:
    """`np.bincount(values.ravel(), minlength=minlength)`, counted slab by slab."""
    total = np.zeros(minlength, dtype=np.intp)
    for part in slabs(values):
        counts = np.bincount(values[part].ravel(), minlength=minlength)
        if counts.size > total.size:
            total = np.pad(total, (0, counts.size - total.size))
        total[: counts.size] += counts
    return total


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """`ndimage.label(mask)` (non-zero = feature), into uint16 while 65535 labels suffice.

    Same component numbers as int32 output. More components fall back to int32, after scipy's
    own int32 attempt: masks that can hold that many (noise) belong to `SlabComponents`.
    """
    try:
        return ndimage.label(mask, output=np.uint16)
    except RuntimeError:  # insufficient bit depth
        return ndimage.label(mask)


class SlabComponents:
    """3D connected components of `mask != 0` (6-connected, as `ndimage.label`), slab by slab.

    Each slab is labelled on its own; components touching across slab borders are joined
    with a graph of the touching pairs. Only one slab's labels exist at a time, whatever the
    number of components: `sizes[c]` is the voxel count of component c (1..count, sizes[0]
    is 0) and `slab_numbers()` labels the slabs again, yielding each with its numbers.
    """

    def __init__(self, mask: np.ndarray) -> None:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        self.mask = mask
        self.offsets: list[int] = []
        local_sizes, pairs = [], []
        previous_last, total = None, 0
        for part in slabs(mask):
            local, n = ndimage.label(mask[part])
            self.offsets.append(total)
            local_sizes.append(np.bincount(local.ravel(), minlength=n + 1)[1:])
            if previous_last is not None:
                touching = (previous_last > 0) & (local[0] > 0)
                pairs.append((previous_last[touching] - 1, local[0][touching] + total - 1))
            previous_last = np.where(local[-1] > 0, local[-1] + total, 0)
            total += n
        rows = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0, np.intp)
        cols = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0, np.intp)
        graph = coo_matrix((np.ones(rows.size, dtype=bool), (rows, cols)), shape=(total, total))
        self.count, component = connected_components(graph, directed=False)
        #: component number (1..count) of each slab-local label, numbered across slabs from 1
        self.number = np.concatenate([[0], component + 1])
        self.sizes = np.zeros(self.count + 1, dtype=np.intp)
        np.add.at(self.sizes, self.number[1:], np.concatenate(local_sizes) if local_sizes else 0)

    def slab_numbers(self) -> Iterator[tuple[slice, np.ndarray]]:
        """(slab, component numbers of its voxels, 0 outside the mask) for every slab in order.

        Slabs are labelled again from `mask`: a slab may be changed once it has been yielded.
        """
        for part, offset in zip(slabs(self.mask), self.offsets, strict=True):
            local, n = ndimage.label(self.mask[part])
            table = self.number[offset : offset + n + 1].copy()
            table[0] = 0
            yield part, table[local]


def lookup(table: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """`table[indices]` (e.g. component number -> keep/value), slab by slab."""
    out = np.empty(indices.shape, dtype=table.dtype)
    for part in slabs(indices):
        out[part] = table[indices[part]]
    return out
