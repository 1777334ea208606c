"""Run a model straight from its compressed form: sparse, shared weights, no dense rebuild.

:func:`load_compressed` reads a ``.dzip`` file into a model and replaces each compressed layer
by a runtime module (:class:`SparseLinear`, :class:`SparseConv`) that multiplies from a
value-grouped CSR (:mod:`deepzip.runtime.sparse`), or decodes it dense where that is faster, as
:class:`RuntimePolicy` decides; :func:`runtime_report` says which and why.

Importing this package does not import numba: the kernels are compiled on first use.
"""

from __future__ import annotations

from deepzip.runtime.bench import LayerTiming, ModelTiming, benchmark_layers, benchmark_model
from deepzip.runtime.conv import SparseConv, sparse_conv_unsupported
from deepzip.runtime.load import (
    LayerRuntime,
    RuntimeReport,
    compress_modules_,
    load_compressed,
    runtime_report,
)
from deepzip.runtime.policy import (
    CONV_THRESHOLDS,
    LINEAR_THRESHOLDS,
    WEIGHT_READING_PARENTS,
    Decision,
    RuntimeOverride,
    RuntimePolicy,
    decide,
    density_threshold,
    sparse_unsupported,
    weight_reading_parents,
)
from deepzip.runtime.sparse import (
    Backend,
    SharedCSRArrays,
    SharedCSRModule,
    build_shared_csr,
    check_shared,
)
from deepzip.runtime.sparse_linear import SparseLinear

__all__ = [
    "CONV_THRESHOLDS",
    "LINEAR_THRESHOLDS",
    "WEIGHT_READING_PARENTS",
    "Backend",
    "Decision",
    "LayerRuntime",
    "LayerTiming",
    "ModelTiming",
    "RuntimeOverride",
    "RuntimePolicy",
    "RuntimeReport",
    "SharedCSRArrays",
    "SharedCSRModule",
    "SparseConv",
    "SparseLinear",
    "benchmark_layers",
    "benchmark_model",
    "build_shared_csr",
    "check_shared",
    "compress_modules_",
    "decide",
    "density_threshold",
    "load_compressed",
    "runtime_report",
    "sparse_conv_unsupported",
    "sparse_unsupported",
    "weight_reading_parents",
]
