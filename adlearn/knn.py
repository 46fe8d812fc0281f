"""Exact k-nearest-neighbour search in bounded memory (SPADE now, coreset methods later).

Distances are computed explicitly, ‖q − g‖² = ‖q‖² − 2 q·g + ‖g‖², over every channel and every
gallery vector — no approximation, no dropped candidates — block by block, so memory stays
bounded whatever the sizes of the gallery and of the query.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import AdlearnError

__all__ = ["nearest_neighbours", "BLOCK_ENTRIES"]

BLOCK_ENTRIES = 2**20
"""Distances per block (4 MiB in float32): small enough to stay in the CPU cache, which makes the
search ≈ 3× faster than one block per gathered chunk."""


def nearest_neighbours(query: Tensor, gallery: Tensor, k: int, *, rows: Tensor | None = None,
                       chunk_size: int = 4096, return_index: bool = True) -> tuple[Tensor, Tensor | None]:
    """The ``k`` nearest gallery vectors of every query vector, by exact Euclidean distance.

    Args:
        query: ``float[Q, C]``; its dtype is the precision of the computation.
        gallery: ``[N, P, C]``: N items (images) of P vectors each, any float dtype and device.
        k: neighbours per query.
        rows: which of the N items to search (default: all), e.g. the K retrieved images.
        chunk_size: gallery vectors gathered (and cast to the query's dtype) at a time, rounded
            to whole items (at least one).
        return_index: also return where the neighbours are (skipping it is faster for k = 1).

    Returns ``(distance, index)``, both ``[Q, k]`` sorted by increasing distance; ``index`` counts
    vectors in the order searched (item ``rows[i]`` holds indices ``i·P … i·P + P − 1``), or is
    ``None``. Memory: one gathered chunk plus one block of ``BLOCK_ENTRIES`` distances, whatever
    N and Q are.
    """
    n_items, per_item, channels = gallery.shape
    searched = n_items if rows is None else len(rows)
    if not 1 <= k <= searched * per_item:
        raise AdlearnError(f"k={k} neighbours requested from a gallery of {searched * per_item} vectors")
    step = max(1, chunk_size // per_item)
    best_d2 = query.new_full((len(query), k), float("inf"))
    best_i = torch.zeros(len(query), k, dtype=torch.long, device=query.device) if return_index else None
    for start in range(0, searched, step):
        items = slice(start, start + step) if rows is None else rows[start : start + step]
        block = gallery[items].reshape(-1, channels).to(query)
        block_norm = block.pow(2).sum(1)
        q_step = max(1, BLOCK_ENTRIES // len(block))
        for q0 in range(0, len(query), q_step):
            part = slice(q0, q0 + q_step)
            # ‖g‖² − 2 q·g for every pair in one matrix product; ‖q‖² (constant per row) comes last
            partial = torch.addmm(block_norm, query[part], block.T, alpha=-2)
            kk = min(k, partial.shape[1])
            if return_index:
                d2, i = partial.topk(kk, dim=1, largest=False) if kk > 1 else partial.min(dim=1, keepdim=True)
                merged, pos = torch.cat([best_d2[part], d2], 1).topk(k, dim=1, largest=False)
                best_i[part] = torch.cat([best_i[part], i + start * per_item], 1).gather(1, pos)
            else:
                d2 = (partial.topk(kk, dim=1, largest=False).values if kk > 1
                      else partial.amin(dim=1, keepdim=True))
                merged = torch.cat([best_d2[part], d2], 1).topk(k, dim=1, largest=False).values
            best_d2[part] = merged
    distance = (best_d2 + query.pow(2).sum(1, keepdim=True)).clamp_min_(0).sqrt_()
    return distance, best_i
