"""An independent reference for the Huffman tests: the optimal unlimited code's cost."""

from __future__ import annotations

import heapq
from collections.abc import Iterable


def reference_huffman_cost(counts: Iterable[int]) -> int:
    """Optimal (unlimited) Huffman cost sum(count * length): the sum of all merge weights."""
    heap = [int(c) for c in counts if c > 0]
    if len(heap) == 1:
        return heap[0]
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        cost += merged
        heapq.heappush(heap, merged)
    return cost
