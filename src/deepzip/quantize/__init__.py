"""Stage 2 of Deep Compression: weight sharing with trainable codebooks.

Quantizers (1-D k-means, uniform, ECSQ) turn a layer's surviving weights into a codebook plus
one index per weight; :func:`quantize_` installs them as trainable shared weights.
"""

from __future__ import annotations

from deepzip.quantize.api import (
    QuantizedLayer,
    QuantizeReport,
    export_shared,
    layer_bits,
    quantize_,
    quantize_tensor,
    strip_,
)
from deepzip.quantize.importance import adam_second_moment, fisher_diagonal
from deepzip.quantize.kmeans import (
    KMeansResult,
    assign_nearest,
    bits_to_k,
    initial_centroids,
    kmeans_1d,
    optimal_kmeans_1d,
)
from deepzip.quantize.scalar import ecsq_quantize, uniform_quantize
from deepzip.quantize.shared import SharedTensor, SharedWeight, attach_shared, get_shared

__all__ = [
    "KMeansResult",
    "QuantizeReport",
    "QuantizedLayer",
    "SharedTensor",
    "SharedWeight",
    "adam_second_moment",
    "assign_nearest",
    "attach_shared",
    "bits_to_k",
    "ecsq_quantize",
    "export_shared",
    "fisher_diagonal",
    "get_shared",
    "initial_centroids",
    "kmeans_1d",
    "layer_bits",
    "optimal_kmeans_1d",
    "quantize_",
    "quantize_tensor",
    "strip_",
    "uniform_quantize",
]
