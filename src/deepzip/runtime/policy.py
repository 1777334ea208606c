"""Which compressed layers run sparse and which are decoded dense: :class:`RuntimePolicy`.

The automatic rule (``mode="auto"``), for each compressed weight:

1. a layer without a sparse form stays dense: anything but ``Linear``, ``Conv1d`` and
   ``Conv2d`` (``Embedding``, ``Conv3d``, any other parameter), grouped convolutions, a
   weight that is not called ``weight``, a subclass of those three (its own ``forward``, or
   code that reads its ``.weight``, could not run on a runtime module), and a child of a
   module that reads its children's ``.weight`` directly (:data:`WEIGHT_READING_PARENTS`:
   ``MultiheadAttention``, ``TransformerEncoderLayer``, ``TransformerDecoderLayer``); this
   holds whatever ``mode`` and ``overrides`` say;
2. a layer whose dense float32 weight is smaller than ``min_dense_bytes`` (default 16 MB,
   16,000,000 bytes) stays dense: the sweep measured nothing smaller, and a dense weight that
   stays in the cache is read fast while a kernel call costs tens of microseconds of Python
   and dispatch;
3. otherwise the layer runs sparse when its density is at most the threshold for its kind and
   the expected batch size (``batch_size``), and dense above it.

The defaults are what ``benchmarks/runtime.py --sweep`` measured on one CPU thread of a quiet
machine (``benchmarks/results/runtime.json``) with the block kernel of
:mod:`deepzip.runtime.kernels`. At batch 1 a 4096×4096 layer (64 MiB dense) ran sparse 9.6×
faster at 3% density, 4.9× at 9%, 3.5× at 15% and 2.4× at 25%; a 2048×2048 layer (16.8 MB,
inside a 32 MiB cache) 2.7×, 2.1×, 1.5× and 1.4×; AlexNet's fc8 (16.4 MB, 25%) 1.9×. At
batch 8 and 64 both sizes gained 1.9-8.8× up to 15% (the least, 1.9×, at 4096×4096, 15%,
batch 64) and 1.2-1.6× at 25%. Linear thresholds
(:data:`LINEAR_THRESHOLDS`): 25% at batch 1 (the densest point measured; sparse still won on
every size), 15% from batch 8 (at 25% the batch gain was thin enough for a busy machine to
erase). Convolutions (sparse im2col against PyTorch's dense convolution) ran at most 1.2×
faster at batch 1 and up to 3% density, and slower from batch 8 at every density, so the
convolution threshold is 1% (:data:`CONV_THRESHOLDS`): their runtime form saves memory, not
time, and is there to be forced. For a batch size between two measured ones the threshold of
the next smaller one is used. ``linear_max_density``, ``conv_max_density`` and
``min_dense_bytes`` replace the defaults, ``mode="sparse"``/``"dense"`` forces every layer
that has a sparse form, and ``overrides`` force single layers by glob.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Literal

from torch import nn
from torch.nn.utils.parametrize import type_before_parametrizations

from deepzip.errors import ConfigError
from deepzip.runtime.conv import sparse_conv_unsupported
from deepzip.runtime.sparse import Backend

__all__ = [
    "CONV_THRESHOLDS",
    "LINEAR_THRESHOLDS",
    "WEIGHT_READING_PARENTS",
    "Decision",
    "LayerForm",
    "RuntimeOverride",
    "RuntimePolicy",
    "decide",
    "density_threshold",
    "sparse_unsupported",
    "weight_reading_parents",
]

LayerForm = Literal["sparse", "dense"]

LINEAR_THRESHOLDS: tuple[tuple[int, float], ...] = ((1, 0.25), (8, 0.15))
"""``(batch size, max density)`` for linear layers, from the measured crossovers."""

CONV_THRESHOLDS: tuple[tuple[int, float], ...] = ((1, 0.01),)
"""``(batch size, max density)`` for convolutions, from the measured crossovers."""

WEIGHT_READING_PARENTS: tuple[type[nn.Module], ...] = (
    nn.MultiheadAttention,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)
"""Modules whose code reads their children's ``.weight`` directly (``out_proj.weight``,
``linear1.weight``): their children keep a dense weight."""


@dataclass(frozen=True)
class RuntimeOverride:
    """Force the layers whose module or tensor name matches ``pattern`` (fnmatch) to a form."""

    pattern: str
    form: LayerForm

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ConfigError(f"override pattern must be a non-empty string, got {self.pattern!r}")
        if self.form not in ("sparse", "dense"):
            raise ConfigError(
                f"override {self.pattern!r}: form must be 'sparse' or 'dense', got {self.form!r}"
            )

    def matches(self, module_name: str, tensor_name: str) -> bool:
        """Whether the glob matches the module name or the tensor name."""
        return fnmatch.fnmatchcase(module_name, self.pattern) or fnmatch.fnmatchcase(
            tensor_name, self.pattern
        )


def _check_fraction(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1], got {value!r}")


@dataclass(frozen=True)
class RuntimePolicy:
    """How :func:`~deepzip.runtime.compress_modules_` picks sparse or dense per layer.

    Attributes:
        mode: ``"auto"`` (the measured rule, see the module docstring), ``"sparse"`` (every
            layer that has a sparse form) or ``"dense"`` (decode everything).
        batch_size: the batch size the model will mostly run at (``auto`` only).
        linear_max_density: replaces the measured threshold for linear layers.
        conv_max_density: replaces the measured threshold for convolutions.
        min_dense_bytes: layers whose dense float32 weight is smaller stay dense in
            ``auto`` mode (it fits in the cache).
        overrides: per-layer forms by glob; the last matching one wins over ``mode``.
        backend: how sparse layers multiply (see :data:`~deepzip.runtime.sparse.Backend`).
    """

    mode: Literal["auto", "sparse", "dense"] = "auto"
    batch_size: int = 1
    linear_max_density: float | None = None
    conv_max_density: float | None = None
    min_dense_bytes: int = 16_000_000
    overrides: tuple[RuntimeOverride, ...] = field(default_factory=tuple)
    backend: Backend = "auto"

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "sparse", "dense"):
            raise ConfigError(f"mode must be 'auto', 'sparse' or 'dense', got {self.mode!r}")
        for name, value in (
            ("batch_size", self.batch_size),
            ("min_dense_bytes", self.min_dense_bytes),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        _check_fraction("linear_max_density", self.linear_max_density)
        _check_fraction("conv_max_density", self.conv_max_density)
        if not isinstance(self.overrides, tuple) or not all(
            isinstance(o, RuntimeOverride) for o in self.overrides
        ):
            raise ConfigError("overrides must be a tuple of RuntimeOverride")
        if self.backend not in ("auto", "numba", "torch"):
            raise ConfigError(f"backend must be 'auto', 'numba' or 'torch', got {self.backend!r}")


def density_threshold(kind: Literal["linear", "conv"], batch_size: int) -> float:
    """The measured threshold for ``kind`` at ``batch_size`` (the next smaller measured one).

    Raises:
        ConfigError: ``kind`` is not ``"linear"`` or ``"conv"``, or ``batch_size`` is not an
            integer >= 1.
    """
    if kind not in ("linear", "conv"):
        raise ConfigError(f"kind must be 'linear' or 'conv', got {kind!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    table = LINEAR_THRESHOLDS if kind == "linear" else CONV_THRESHOLDS
    value = table[0][1]
    for batch, threshold in table:
        if batch <= batch_size:
            value = threshold
    return value


def weight_reading_parents(model: nn.Module) -> dict[nn.Module, str]:
    """The modules of ``model`` registered under a :data:`WEIGHT_READING_PARENTS` module.

    Returns:
        ``{child module: class name of its parent}`` (a module registered under several
        such parents is named once).
    """
    found: dict[nn.Module, str] = {}
    for parent in model.modules():
        if isinstance(parent, WEIGHT_READING_PARENTS):
            for child in parent.children():
                found.setdefault(child, type_before_parametrizations(parent).__name__)
    return found


def sparse_unsupported(module: nn.Module, attr: str, *, parent: str | None = None) -> str | None:
    """Why ``module.attr`` has no sparse runtime form, or ``None`` if it has one.

    Args:
        module: the layer.
        attr: the tensor's attribute name on it.
        parent: class name of a parent that reads ``module.weight`` directly (see
            :func:`weight_reading_parents`), or ``None``.
    """
    cls = type_before_parametrizations(module)  # a deepzip-quantized Linear is still a Linear
    kind = cls.__name__
    if attr != "weight":
        return f"{kind}.{attr} has no sparse runtime form (only a layer's weight has)"
    if cls not in (nn.Linear, nn.Conv1d, nn.Conv2d):
        for base in (nn.Linear, nn.Conv1d, nn.Conv2d):
            if issubclass(cls, base):
                return (
                    f"{kind} is a subclass of {base.__name__}: its own forward or code that "
                    "reads .weight could not run on a runtime module"
                )
    reason: str | None = None
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        reason = sparse_conv_unsupported(module)
    elif cls is not nn.Linear:
        reason = f"{kind} has no sparse runtime form"
    if reason is None and parent is not None:
        reason = (
            f"{kind} is a child of {parent}, which reads its children's .weight directly: "
            "a runtime module has none"
        )
    return reason


@dataclass(frozen=True)
class Decision:
    """The form picked for one layer and why."""

    form: LayerForm
    reason: str


def decide(
    policy: RuntimePolicy,
    module_name: str,
    tensor_name: str,
    module: nn.Module,
    attr: str,
    density: float,
    weights: int,
    *,
    parent: str | None = None,
) -> Decision:
    """Apply ``policy`` to one compressed weight (see the module docstring for the rule).

    ``parent`` names the class of a parent that reads ``module.weight`` directly (see
    :func:`weight_reading_parents`); such a layer stays dense whatever the policy says.
    """
    unsupported = sparse_unsupported(module, attr, parent=parent)
    if unsupported is not None:
        return Decision("dense", unsupported)
    forced: RuntimeOverride | None = None
    for o in policy.overrides:
        if o.matches(module_name, tensor_name):
            forced = o
    if forced is not None:
        return Decision(forced.form, f"override {forced.pattern!r}")
    if policy.mode != "auto":
        return Decision(policy.mode, f"mode={policy.mode!r}")
    if 4 * weights < policy.min_dense_bytes:
        return Decision(
            "dense",
            f"dense weight {4 * weights:,} bytes < min_dense_bytes {policy.min_dense_bytes:,} "
            "(stays in the cache: dense is faster)",
        )
    kind: Literal["linear", "conv"] = "linear" if isinstance(module, nn.Linear) else "conv"
    custom = policy.linear_max_density if kind == "linear" else policy.conv_max_density
    threshold = custom if custom is not None else density_threshold(kind, policy.batch_size)
    where = "set" if custom is not None else f"measured, batch {policy.batch_size}"
    sparse = density <= threshold
    # enough digits that the comparison reads right (not "1.5% > 2%" for 1.52% > 1.5%)
    return Decision(
        "sparse" if sparse else "dense",
        f"density {100 * density:.4g}% {'<=' if sparse else '>'} {100 * threshold:.4g}% "
        f"({kind}, {where})",
    )
