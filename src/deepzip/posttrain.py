"""Post-training compression of any checkpoint, without data: prune, quantize, code.

:func:`compress_checkpoint` reads a ``.safetensors`` file, a ``.pt``/``.pth`` state dict
(``torch.load(weights_only=True)``) or a Hugging Face model directory of safetensors shards,
and writes a ``.dzip`` file one tensor at a time: each selected weight is magnitude-pruned
(:func:`deepzip.prune.masks.sparsity_mask`), quantized by weight sharing
(the quantizers of :mod:`deepzip.quantize`: uniform, ECSQ or k-means, with ``2**bits`` or
any number of levels) and entropy-coded; every
other tensor is stored raw and listed in the report with the reason. Nothing is retrained, so
moderate sparsity and 4-6 bits are the useful range (see ``benchmarks/posttrain.py``).

Exact zeros are pruned weights: a weight's exact zeros (those of a pruned model, whether its
checkpoint carries masks or not) are never quantized to a level, so they read back as exact
zeros whatever the quantizer and layout. A checkpoint written by
:func:`deepzip.save_checkpoint` (``deepzip train``, ``prune``, ``quantize``...) is read as
such: its ``__deepzip_mask__``/``__deepzip_codebook__``/``__deepzip_index__``/
``__deepzip_bloomier__`` entries are the model's pruning masks, shared weights and Weightless
filters, never tensors of the output (see :func:`compress_checkpoint`).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from deepzip._atomic import os_error_reason
from deepzip._select import masked_values
from deepzip.config import CoderName, IndexBitsSpec, QuantizeConfig, check_index_bits
from deepzip.errors import CheckpointError, ConfigError, InvalidTensorError
from deepzip.format.api import IndexBits, gap_width, tie_key
from deepzip.format.checkpoint import (
    BLOOMIER_PREFIX,
    CODEBOOK_PREFIX,
    DEEPZIP_KEY_PREFIX,
    INDEX_PREFIX,
    MASK_PREFIX,
    check_bloomier_entry,
    check_checkpoint_file,
    check_shared_entry,
    check_string_metadata,
    checkpoint_read_errors,
    load_pickled_state_dict,
)
from deepzip.format.dzip_report import SaveReport
from deepzip.format.dzip_spec import MAX_K
from deepzip.format.dzip_writer import DzipWriter, GapWidth, Layout, check_layout
from deepzip.prune.masks import check_finite, sparsity_mask
from deepzip.quantize.kmeans import KMeansResult, bits_to_k, kmeans_1d
from deepzip.quantize.scalar import check_step, ecsq_quantize, step_quantize, uniform_quantize
from deepzip.quantize.shared import SharedTensor
from deepzip.targets import check_glob_sequence, matches

__all__ = [
    "DEFAULT_BITS",
    "DEFAULT_QUANTIZER",
    "PostTrainConfig",
    "Quantizer",
    "compress_checkpoint",
    "iter_checkpoint",
]

Quantizer = Literal["kmeans", "uniform", "ecsq"]

DEFAULT_QUANTIZER: Quantizer = "uniform"
"""The post-training default. In ``benchmarks/posttrain.py`` (float LeNets, no retraining)
uniform quantization with entropy coding gave the best ratio at equal accuracy: with 16 levels
17.8x vs k-means' 9.1x on LeNet-300-100 and 13.7x vs 8.5x on LeNet-5 (LeNet-5 at the same
test accuracy, LeNet-300-100 0.6 points lower); ECSQ was never better than uniform at the same
accuracy. On LeNet-5 one grid step shared by every tensor (``step=``) did better still, but the
step depends on the model's weight scale, so it is an option, not the default."""

DEFAULT_BITS = 5
"""Default bits per weight index (32 levels): within 0.2 points of float test accuracy on both
LeNets in ``benchmarks/posttrain.py`` (11.7x on LeNet-300-100, 9.7x on LeNet-5); fewer levels
(``levels=``) trade accuracy for ratio."""

_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_F32_MAX = torch.finfo(torch.float32).max

ProgressFn = Callable[[str, int, int], None]
"""``progress(tensor name, index, total)``, called before each tensor is processed."""


@dataclass(frozen=True)
class PostTrainConfig:
    """What :func:`compress_checkpoint` does to each selected weight.

    Attributes:
        sparsity: fraction of each selected tensor's weights removed by magnitude, in [0, 1)
            (its exact zeros and the weights its checkpoint mask prunes come first).
        bits: bits per weight index (1..8, ``2**bits`` levels); ``None`` leaves the weights
            in float (pruned ones are then stored sparse, the others raw).
        levels: number of quantization levels k (2..256) instead of ``2**bits``: with an
            entropy coder the rate follows the step size, not a power of two.
        quantizer: ``"uniform"``, ``"ecsq"`` or ``"kmeans"``.
        ecsq_lambda: ECSQ's rate weight (``quantizer="ecsq"``): 0 is k-means started from
            the uniform quantizer's centres; a larger value trades distortion for a lower
            entropy of the indices.
        step: one grid step for every quantized tensor (``quantizer="uniform"`` only; see
            :func:`~deepzip.quantize.scalar.step_quantize`): each tensor gets the levels its
            range needs, at most 256, instead of ``levels``/``2**bits`` spread over its range.
            Tensors a ``layer_bits`` glob matches keep their ``2**bits`` levels.
        layer_bits: ``((glob, bits), ...)`` per-tensor bits; the last matching glob wins.
        include: globs; when given, only matching tensors are compressed.
        exclude: globs of tensors left raw.
        min_elements: tensors with fewer elements are left raw (their codebook would cost
            more than it saves).
        requantize: whether a tensor that a deepzip checkpoint already holds weight-shared
            (``__deepzip_codebook__``/``__deepzip_index__`` entries) is quantized again by
            these settings; ``False`` keeps its codebook and indices (a ``layer_bits`` glob
            that matches it still re-quantizes it).
    """

    sparsity: float = 0.0
    bits: int | None = DEFAULT_BITS
    levels: int | None = None
    quantizer: Quantizer = DEFAULT_QUANTIZER
    ecsq_lambda: float = 0.0
    step: float | None = None
    layer_bits: tuple[tuple[str, int], ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_elements: int = 256
    requantize: bool = False

    def __post_init__(self) -> None:
        # QuantizeConfig validates bits, method and lambda with the house's messages
        QuantizeConfig(bits=self.bits, method=self.quantizer, ecsq_lambda=self.ecsq_lambda)
        if self.levels is not None and (
            isinstance(self.levels, bool)
            or not isinstance(self.levels, int)
            or not 2 <= self.levels <= MAX_K
        ):
            raise ConfigError(f"levels must be an integer from 2 to {MAX_K}, got {self.levels!r}")
        if self.levels is not None and self.bits is None:
            raise ConfigError("levels needs quantization: give bits a value or leave it default")
        if self.step is not None:
            check_step(self.step)
            if self.quantizer != "uniform":
                raise ConfigError(
                    "step sets a uniform grid: it needs quantizer 'uniform', "
                    f"got {self.quantizer!r}"
                )
            if self.levels is not None:
                raise ConfigError("give step or levels, not both")
            if self.bits is None:
                raise ConfigError("step needs quantization: give bits a value or leave it default")
        s = self.sparsity
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s < 1.0:
            raise ConfigError(f"sparsity must be a number in [0, 1), got {s!r}")
        if not isinstance(self.layer_bits, tuple) or any(
            not isinstance(p, tuple) or len(p) != 2 for p in self.layer_bits
        ):  # a {glob: bits} dict would be read as its globs, each split into two characters
            raise ConfigError(
                f"layer_bits must be a tuple of (glob, bits) pairs, got {self.layer_bits!r}"
            )
        for pattern, bits in self.layer_bits:
            if not isinstance(pattern, str) or not pattern:
                raise ConfigError(f"layer_bits pattern must be a non-empty glob, got {pattern!r}")
            if bits is None:  # QuantizeConfig takes None (per-layer defaults); here it is no width
                raise ConfigError(f"layer_bits[{pattern!r}]: bits must be an integer, got None")
            try:
                QuantizeConfig(bits=bits)
            except ConfigError as exc:
                raise ConfigError(f"layer_bits[{pattern!r}]: {exc}") from exc
        for key, globs in (("include", self.include), ("exclude", self.exclude)):
            # a bare string would be read as one glob per character
            if not isinstance(globs, tuple) or any(not isinstance(g, str) or not g for g in globs):
                raise ConfigError(f"{key} must be a tuple of non-empty glob strings, got {globs!r}")
        if (
            isinstance(self.min_elements, bool)
            or not isinstance(self.min_elements, int)
            or self.min_elements < 0
        ):
            raise ConfigError(f"min_elements must be an integer >= 0, got {self.min_elements!r}")
        if not isinstance(self.requantize, bool):
            raise ConfigError(f"requantize must be True or False, got {self.requantize!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored as the file's recipe)."""
        return {
            "stage": "post_training",
            "sparsity": self.sparsity,
            "bits": self.bits,
            "levels": self.levels,
            "quantizer": self.quantizer,
            "ecsq_lambda": self.ecsq_lambda,
            "step": self.step,
            "layer_bits": [list(p) for p in self.layer_bits],
            "include": list(self.include),
            "exclude": list(self.exclude),
            "min_elements": self.min_elements,
            # only when set: a file compressed from any other checkpoint stays byte for byte
            # what earlier versions wrote (committed benchmark sizes still reproduce)
            **({"requantize": True} if self.requantize else {}),
        }

    def requantizes(self, name: str) -> bool:
        """Whether an already weight-shared tensor is quantized again: ``requantize``, or a
        ``layer_bits`` glob matches it."""
        module, _, attr = name.rpartition(".")
        return self.requantize or any(matches(p, module, attr) for p, _ in self.layer_bits)

    def step_for(self, name: str) -> float | None:
        """The grid step of one tensor: ``step``, unless a ``layer_bits`` glob matches it."""
        module, _, attr = name.rpartition(".")
        if self.step is None or any(matches(p, module, attr) for p, _ in self.layer_bits):
            return None
        return self.step

    def levels_for(self, name: str) -> int | None:
        """Levels of one tensor: ``2**bits`` of the last matching ``layer_bits`` glob, else
        ``levels``, else ``2**bits``; ``None`` when the weights stay in float."""
        module, _, attr = name.rpartition(".")
        found = None
        for pattern, b in self.layer_bits:
            if matches(pattern, module, attr):
                found = b
        if found is not None:
            return bits_to_k(found)
        if self.bits is None:
            return None
        return self.levels if self.levels is not None else bits_to_k(self.bits)


# ------------------------------------------------------------------------------ reading


_ENTRY_KINDS = (
    (MASK_PREFIX, "mask"),
    (CODEBOOK_PREFIX, "codebook"),
    (INDEX_PREFIX, "index"),
    (BLOOMIER_PREFIX, "bloomier"),
)


class _Source:
    """The tensor names of a checkpoint, and a way to load them one at a time.

    ``names`` are all of the file's entries; ``tensors`` the model's tensors among them, and
    ``entries`` maps each tensor that a deepzip checkpoint prunes or shares to its
    ``{"mask" | "codebook" | "index" | "bloomier": entry name}``.
    """

    def __init__(
        self,
        names: list[str],
        load: Callable[[str], torch.Tensor],
        files: Sequence[Path],
        *,
        label: str,
        ties: bool = False,
    ) -> None:
        self.names = names
        self.load = load
        self.files = tuple(files)
        self.label = label
        # whether two names of one tensor share its storage when loaded (a pickled state dict
        # keeps its ties; safetensors files cannot hold shared tensors, and each load is new
        # memory whose address a later load may reuse)
        self.ties = ties
        self.tensors, self.entries = _split_entries(label, names)


def _split_entries(label: str, names: Sequence[str]) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The model's tensor names, and the deepzip entries (masks, codebooks, indices, Bloomier
    filters of :func:`deepzip.save_checkpoint`) of each tensor that has some.

    Raises:
        CheckpointError: an unknown ``__deepzip_`` entry, one for a tensor the checkpoint does
            not hold, or a quantized tensor without its codebook, indices or mask.
    """
    tensors = [n for n in names if not n.startswith(DEEPZIP_KEY_PREFIX)]
    held = set(tensors)
    entries: dict[str, dict[str, str]] = {}
    for key in names:
        if not key.startswith(DEEPZIP_KEY_PREFIX):
            continue
        found = next(((p, k) for p, k in _ENTRY_KINDS if key.startswith(p)), None)
        if found is None:
            raise CheckpointError(
                f"{label}: unknown deepzip entry {key!r} (written by a newer version?)"
            )
        prefix, kind = found
        target = key[len(prefix) :]
        if target not in held:
            raise CheckpointError(
                f"{label}: entry {key!r} is the {kind} of {target!r}, a tensor the checkpoint "
                "does not hold"
            )
        entries.setdefault(target, {})[kind] = key
    for target, kinds in entries.items():
        if set(kinds) != {"mask"}:  # a mask alone is a pruned float tensor
            lacking = [k for k in ("codebook", "index", "mask") if k not in kinds]
            if lacking:
                raise CheckpointError(
                    f"{label}: tensor {target!r} has a {', '.join(sorted(kinds))} entry but no "
                    f"{' or '.join(lacking)} (a quantized tensor needs its codebook, indices "
                    "and mask)"
                )
    return tensors, entries


def _safetensors_source(files: Sequence[Path], label: str) -> _Source:
    """The tensors of safetensors files, each read by opening its file afresh.

    ``safe_open`` memory-maps the whole file and every page a read touches stays resident
    while the handle is open; reopening per tensor releases them, so the peak memory is one
    tensor, not the checkpoint.
    """
    from safetensors import SafetensorError, safe_open

    owner: dict[str, Path] = {}
    names: list[str] = []
    for f in files:
        check_checkpoint_file(f)  # (safe_open reports a shard it may not read as missing)
        try:
            with safe_open(str(f), framework="pt") as handle:
                keys = list(handle.keys())
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{f}: not a readable safetensors file: {exc}") from exc
        for key in keys:
            if key in owner:
                raise CheckpointError(f"tensor {key!r} appears in two shards ({f})")
            owner[key] = f
            names.append(key)

    def load(name: str) -> torch.Tensor:
        try:
            with safe_open(str(owner[name]), framework="pt") as handle:
                tensor: torch.Tensor = handle.get_tensor(name)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"tensor {name!r}: cannot be read: {exc}") from exc
        return tensor

    return _Source(names, load, files, label=label)


def _hf_shards(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    with checkpoint_read_errors(index):  # (the directory may not be searched)
        indexed = index.is_file()
    if indexed:
        with checkpoint_read_errors(index):
            raw = index.read_bytes()
        try:
            weight_map = json.loads(raw.decode("utf-8"))["weight_map"]
            files = sorted({str(v) for v in weight_map.values()})
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index ({exc})") from exc
        paths = []
        for name in files:
            # a bare file name, checked by its text: a shard may be a symbolic link out of the
            # directory (the Hugging Face hub cache links snapshots/<rev>/* to blobs/)
            p = directory / name
            if name in ("", ".", "..") or Path(name).name != name or not p.is_file():
                raise CheckpointError(f"{index}: shard {name!r} is not a file in {directory}")
            paths.append(p)
        return paths
    try:  # (glob finds nothing in a directory it may not list)
        with os.scandir(directory):
            pass
    except OSError as exc:
        raise CheckpointError(f"{directory}: cannot list it: {os_error_reason(exc)}") from exc
    shards = sorted(directory.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(
            f"{directory}: no model.safetensors.index.json and no *.safetensors files"
        )
    return shards


def _open_source(src: Path) -> _Source:
    label = str(src)
    with checkpoint_read_errors(src):  # (a directory on the way that may not be searched)
        directory = src.is_dir()
    if directory:
        return _safetensors_source(_hf_shards(src), label)
    check_checkpoint_file(src)
    suffix = src.suffix.lower()
    if suffix == ".safetensors":
        return _safetensors_source([src], label)
    if suffix in (".pt", ".pth", ".bin"):
        # torch maps only the zip format (PyTorch >= 1.6); a legacy file is read into memory
        state = load_pickled_state_dict(src, mmap=zipfile.is_zipfile(src))

        def load(name: str) -> torch.Tensor:
            # a saved nn.Parameter comes back requiring grad: its values only are needed
            return state[name].detach()

        return _Source(list(state), load, [src], label=label, ties=True)
    raise CheckpointError(
        f"{src}: unknown checkpoint type {suffix!r}; expected .safetensors, .pt, .pth "
        "or a Hugging Face model directory"
    )


def iter_checkpoint(src: str | os.PathLike[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of a checkpoint one tensor at a time (safetensors lazily).

    Raises:
        CheckpointError: missing, unreadable or not a state dict.
    """
    source = _open_source(Path(src))
    for name in source.names:
        yield name, source.load(name)


@dataclass(frozen=True)
class _Prior:
    """What a deepzip checkpoint says of one tensor: its pruning mask, and its codebook and
    indices (and Weightless filter) when it is weight-shared."""

    mask: torch.Tensor
    shared: SharedTensor | None = None
    bloomier: bytes | None = None

    def values(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor as :func:`deepzip.load_checkpoint` makes it: pruned positions zero, a
        shared tensor ``codebook[indices]`` in the tensor's dtype."""
        if self.shared is None:
            return tensor.masked_fill(~self.mask, 0)
        gathered = self.shared.codebook.to(tensor.dtype)[self.shared.indices.long()]
        return gathered.masked_fill(~self.mask, 0)


def _load_prior(source: _Source, name: str, tensor: torch.Tensor) -> _Prior | None:
    """The deepzip entries of ``name``, checked against the tensor, or ``None``.

    Raises:
        CheckpointError: a mask, codebook, indices or Bloomier filter that does not fit the
            tensor or each other (names the tensor).
    """
    kinds = source.entries.get(name)
    if kinds is None:
        return None
    where = f"{source.label}: tensor {name!r}"
    shape = tuple(tensor.shape)
    mask = source.load(kinds["mask"])
    if tuple(mask.shape) != shape:
        raise CheckpointError(f"{where}: its mask has shape {tuple(mask.shape)}, it {shape}")
    mask = mask.to(torch.bool)
    if "codebook" not in kinds:
        return _Prior(mask)
    codebook, indices = source.load(kinds["codebook"]), source.load(kinds["index"])
    shared = check_shared_entry(source.label, name, codebook, indices, mask, shape)
    if not bool(torch.isfinite(shared.codebook).all()):  # it becomes the stored codebook
        raise CheckpointError(f"{where}: its codebook holds NaN or infinity")
    if "bloomier" not in kinds:
        return _Prior(mask, shared)
    return _Prior(
        mask,
        shared,
        check_bloomier_entry(source.label, name, source.load(kinds["bloomier"]), shared),
    )


# ----------------------------------------------------------------------------- selection


def _skip_reason(name: str, tensor: torch.Tensor, config: PostTrainConfig) -> str | None:
    module, _, attr = name.rpartition(".")
    for pattern in config.exclude:
        if matches(pattern, module, attr):
            return f"excluded by pattern {pattern!r}"
    if config.include and not any(matches(p, module, attr) for p in config.include):
        return "not matched by any include pattern"
    dtype = str(tensor.dtype).removeprefix("torch.")
    if tensor.dtype not in _FLOATS:
        if tensor.is_floating_point():  # float8: its own format, stored as it is
            return f"{dtype} tensor (only float32, float16, bfloat16 and float64 are compressed)"
        return f"not a floating-point tensor ({dtype})"
    if tensor.dim() < 2:
        return f"{tensor.dim()}-D tensor (bias/normalization vector, kept in float)"
    if tensor.numel() < config.min_elements:
        return f"{tensor.numel()} elements, fewer than min_elements={config.min_elements}"
    if (
        tensor.dtype == torch.float64
        and config.levels_for(name) is not None
        and tensor.layout == torch.strided
        and not tensor.is_meta
    ):
        # the levels are float32: a finite float64 beyond its range has no level (NaN and
        # infinity are left to the finiteness check, which names them)
        largest = float(tensor.abs().max())
        if _F32_MAX < largest < float("inf"):
            return f"float64 values beyond float32's range (largest magnitude {largest:g}), kept"
    return None


def _check_globs(names: Sequence[str], config: PostTrainConfig, index_bits: IndexBits) -> None:
    pairs = [(n.rpartition(".")[0], n.rpartition(".")[2]) for n in names]
    for key, globs in (
        ("include", config.include),
        ("exclude", config.exclude),
        ("layer_bits", tuple(p for p, _ in config.layer_bits)),
        ("index_bits", tuple(index_bits) if isinstance(index_bits, Mapping) else ()),
    ):
        for g in globs:
            if not any(matches(g, m, a) for m, a in pairs):
                sample = ", ".join(names[:8])
                raise ConfigError(f"{key} pattern {g!r} matches no tensor (tensors: {sample})")


def _layer_bits(layer_bits: Mapping[str, int] | None) -> tuple[tuple[str, int], ...]:
    """``layer_bits`` as :class:`PostTrainConfig` takes it (``ConfigError`` for a non-mapping:
    a list of pairs has no ``items``)."""
    if layer_bits is None:
        return ()
    if not isinstance(layer_bits, Mapping):
        raise ConfigError(f"layer_bits must be a {{glob: bits}} mapping, got {layer_bits!r}")
    return tuple(layer_bits.items())


def _globs(key: str, globs: Sequence[str]) -> tuple[str, ...]:
    """``include``/``exclude`` as a tuple; a bare string is refused, not split into characters."""
    check_glob_sequence(globs, key)
    return tuple(globs)


def _check_dest(dest: Path, source: _Source) -> None:
    """Refuse a destination that is a file of the checkpoint being read: the atomic rename
    would replace the checkpoint with the ``.dzip`` file."""
    if not dest.exists():
        return
    for f in source.files:
        if os.path.samefile(dest, f):
            raise ConfigError(
                f"{dest} is the checkpoint being compressed; write the .dzip file elsewhere"
            )


def _check_index_bits(index_bits: IndexBits) -> None:
    if isinstance(index_bits, Mapping):
        for pattern, spec in index_bits.items():
            check_index_bits(f"index_bits[{pattern!r}]", spec)
    elif index_bits is not None:
        check_index_bits("index_bits", index_bits)


def _gap_width(name: str, tensor: torch.Tensor, index_bits: IndexBits) -> GapWidth:
    spec: IndexBitsSpec = "auto"
    if isinstance(index_bits, Mapping):
        module, _, attr = name.rpartition(".")
        for pattern, bits in index_bits.items():
            if matches(pattern, module, attr):
                spec = bits
    elif index_bits is not None:
        spec = index_bits
    return gap_width(spec, tensor.dim() >= 3)


# ------------------------------------------------------------------------------ the verb


def compress_checkpoint(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    sparsity: float = 0.0,
    bits: int | None = DEFAULT_BITS,
    levels: int | None = None,
    quantizer: Quantizer = DEFAULT_QUANTIZER,
    ecsq_lambda: float = 0.0,
    step: float | None = None,
    coder: CoderName = "auto",
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    layer_bits: Mapping[str, int] | None = None,
    index_bits: IndexBits = None,
    layout: Layout = "auto",
    min_elements: int = 256,
    requantize: bool | None = None,
    metadata: Mapping[str, str] | None = None,
    progress: ProgressFn | None = None,
) -> SaveReport:
    """Compress a checkpoint into a ``.dzip`` file without data: prune, quantize, code.

    Each floating-point tensor (float32, float16, bfloat16 or float64) of 2 or more
    dimensions (and at least ``min_elements`` elements) that the globs select is pruned to
    ``sparsity`` by magnitude, quantized to ``2**bits`` shared values and entropy-coded; every
    other tensor (biases and normalization vectors, integer and bool buffers, float8, a float64
    tensor beyond float32's range) is stored raw and listed in ``report.skipped`` with the
    reason. Tensors are read, compressed and written one at a time, so memory holds one tensor
    (and its temporaries) at a time (a ``.pt`` file in the legacy, pre-zip format of
    PyTorch < 1.6 is read whole, as torch cannot map it). A tensor a pickled state
    dict holds under several names (tied embeddings) is stored once, as ``ALIAS`` entries
    (``docs/format.md`` 6.6), when its names get the same treatment (else each is compressed
    by its own settings).

    Exact zeros are already pruned: a compressed tensor's exact zeros are never quantized
    (zero need not be one of a quantizer's levels), so they read back as exact zeros (a
    negative zero as +0.0) whatever the quantizer and layout, and they count towards
    ``sparsity``.

    A checkpoint of :func:`deepzip.save_checkpoint` (``deepzip train``, ``prune``,
    ``quantize``...) is read as the model it holds, as :func:`deepzip.load_checkpoint` would
    load it; its ``__deepzip_*`` entries are never stored as tensors, and the file holds (and
    ``report.float32_bytes`` counts) the model's tensors only, so it loads into the model with
    :func:`deepzip.load_model`:

    - a mask (``__deepzip_mask__.<name>``) is the tensor's pruning: its pruned positions stay
      pruned, and ``sparsity`` prunes further (the smallest magnitudes among the kept weights)
      only where it asks for more than is already pruned;
    - a weight-shared tensor (``__deepzip_codebook__``/``__deepzip_index__``) keeps its
      codebook and indices, stored with the shared encodings, unless it is re-quantized
      (``requantize``, or a ``layer_bits`` glob that matches it): then its kept weights are
      quantized by these settings (or stored in float with ``bits=None``);
    - a Weightless layer (``__deepzip_bloomier__``) keeps its Bloomier filter (``BLOOMIER``
      encoding) when it is neither re-quantized nor pruned further; else it is stored as a
      shared tensor, as above.

    Args:
        src: a ``.safetensors`` file, a ``.pt``/``.pth``/``.bin`` state dict (read with
            ``torch.load(weights_only=True)``), or a Hugging Face model directory of
            safetensors shards (``model.safetensors.index.json`` or ``*.safetensors``).
        dest: the ``.dzip`` file (written atomically).
        sparsity: fraction of each selected tensor removed by magnitude, in [0, 1) (the
            already pruned weights and exact zeros included).
        bits: bits per weight index, 1..8; ``None`` stores the (pruned) weights in float.
        levels: quantization levels (2..256) instead of ``2**bits``.
        quantizer: ``"uniform"`` (default), ``"ecsq"`` or ``"kmeans"``.
        ecsq_lambda: ECSQ's rate weight.
        step: one uniform grid step for every quantized tensor (NNCodec's way), instead of
            ``levels`` per tensor; each tensor uses the levels its range needs (at most 256).
        coder: ``"auto"`` (the smaller of Huffman and ANS per stream), ``"huffman"``,
            ``"ans"`` or ``"raw"``.
        include: globs (tensor or module names); when given, only matching tensors are
            compressed.
        exclude: globs of tensors left raw.
        layer_bits: ``{glob: bits}`` per-tensor bit widths (the last matching glob wins).
        index_bits: gap width of the relative sparse index: one ``IndexBitsSpec`` (bits,
            ``"auto"`` or ``"paper"``: 8 bits for tensors of 3+ dimensions, 5 otherwise),
            ``{glob: spec}`` (tensor or module names; the last matching glob wins, ``"auto"``
            elsewhere), or ``None`` (``"auto"``: each tensor's smallest index).
        layout: ``"auto"``, ``"dense"`` or ``"sparse"`` (see :meth:`DzipWriter.add_shared`).
        min_elements: tensors smaller than this are left raw.
        requantize: whether the weight-shared tensors of a deepzip checkpoint are quantized
            again by these settings; ``None`` (default): when any of ``bits``, ``levels``,
            ``step``, ``quantizer`` and ``ecsq_lambda`` differs from its default.
        metadata: the caller's string key/values (a key or value that is not a string is
            refused, not converted).
        progress: called with ``(name, index, total)`` before each tensor.

    Returns:
        The per-tensor report (real file size, ratio to float32, skipped tensors).

    Raises:
        CheckpointError: the checkpoint cannot be read, or its deepzip entries are unknown,
            incomplete or do not fit their tensor (names it).
        ConfigError: a bad setting (``layout``, ``metadata`` and ``progress`` included,
            checked before anything is read), a glob that matches no tensor, or ``dest`` is
            (a shard of) the checkpoint ``src``.
        InvalidTensorError: a selected tensor holds NaN or infinity, is on the meta device or
            is not strided (sparse), or a tensor cannot be stored (names it).
    """
    if requantize is None:
        requantize = (
            bits != DEFAULT_BITS
            or levels is not None
            or step is not None
            or quantizer != DEFAULT_QUANTIZER
            or ecsq_lambda != 0.0
        )
    config = PostTrainConfig(
        sparsity=sparsity,
        bits=bits,
        levels=levels,
        quantizer=quantizer,
        ecsq_lambda=ecsq_lambda,
        step=step,
        layer_bits=_layer_bits(layer_bits),
        include=_globs("include", include),
        exclude=_globs("exclude", exclude),
        min_elements=min_elements,
        requantize=requantize,
    )
    _check_index_bits(index_bits)
    check_layout(layout)  # here too: with nothing to quantize add_shared is never reached
    check_string_metadata(metadata, Path(dest))
    if progress is not None and not callable(progress):
        raise ConfigError(f"progress must be a callable or None, got {progress!r}")
    source = _open_source(Path(src))
    _check_dest(Path(dest), source)
    _check_globs(source.tensors, config, index_bits)
    if config.requantize and not any("codebook" in kinds for kinds in source.entries.values()):
        # nothing to quantize again: the recipe stored in the file does not say it (a file
        # compressed from a plain checkpoint stays byte for byte what earlier versions wrote)
        config = replace(config, requantize=False)
    layers: dict[str, dict[str, Any]] = {}
    meta: dict[str, Any] = {
        "user": dict(metadata or {}),
        "recipe": config.to_dict(),
    }
    # a tied tensor (one tensor under several names, as a pickled state dict with tied
    # embeddings holds it) is stored once when its names get the same treatment
    first_of: dict[tuple[Any, ...], tuple[str, tuple[Any, ...]]] = {}
    with DzipWriter(dest, coder=coder, metadata=meta) as writer:
        total = len(source.tensors)
        for i, name in enumerate(source.tensors):
            if progress is not None:
                progress(name, i, total)
            tensor = source.load(name)
            prior = _load_prior(source, name, tensor)
            reason = _skip_reason(name, tensor, config)
            width = None if reason is not None else _gap_width(name, tensor, index_bits)
            treatment = (
                ("raw",)
                if reason is not None
                else ("compressed", config.levels_for(name), config.step_for(name), width)
            )
            # a tensor with masks or codebooks of its own is never taken for another's alias
            key = tie_key(tensor) if source.ties and prior is None else None
            if key is not None:
                first = first_of.setdefault(key, (name, treatment))
                if first[0] != name and first[1] == treatment:
                    writer.add_alias(name, first[0])
                    if reason is not None:
                        writer.skip(name, reason)
                    else:
                        layers[name] = {"alias_of": first[0]}
                    continue
            if reason is not None:
                writer.add_raw(name, tensor if prior is None else prior.values(tensor))
                writer.skip(name, reason)
                continue
            assert width is not None
            layers[name] = _compress_tensor(writer, name, tensor, prior, config, width, layout)
            del tensor, prior
        meta["report"] = {
            "layers": layers,
            "skipped": {n: r for n, r in writer.skipped},
        }
        writer.metadata = meta
    return writer.report


def _quantize(
    values: torch.Tensor, k: int, config: PostTrainConfig, name: str, step: float | None
) -> KMeansResult:
    """The configured quantizer with ``k`` levels (what ``quantize_tensor`` does for 2**bits),
    or the grid ``step`` when the tensor has one."""
    if step is not None:
        return step_quantize(values, step, name=name)
    if config.quantizer == "uniform":
        return uniform_quantize(values, k)
    if config.quantizer == "ecsq":
        return ecsq_quantize(values, k, config.ecsq_lambda)
    return kmeans_1d(values, k)


def _compress_tensor(
    writer: DzipWriter,
    name: str,
    tensor: torch.Tensor,
    prior: _Prior | None,
    config: PostTrainConfig,
    width: GapWidth,
    layout: Layout,
) -> dict[str, Any]:
    """Prune, quantize and write one tensor; returns its line of the metadata report.

    The tensor's exact zeros and the positions its checkpoint mask prunes are pruned before
    ``sparsity`` prunes further; a weight-shared tensor of the checkpoint keeps its codebook
    unless the config re-quantizes it.
    """
    if tensor.is_meta:
        raise InvalidTensorError(
            f"{name}: a tensor on the meta device has no values to store; materialize the "
            "model first (model.to_empty(device=...) and load its weights)"
        )
    if tensor.layout != torch.strided:
        raise InvalidTensorError(f"{name}: only strided (dense) tensors can be stored")
    values = tensor if prior is None else prior.values(tensor)
    check_finite(name, values)
    pruned = values != 0  # exact zeros are pruned weights: no level may replace them
    if prior is not None:
        pruned &= prior.mask
    mask = (
        sparsity_mask(values, config.sparsity, current=pruned, name=name)
        if config.sparsity > 0
        else pruned
    )
    kept = int(mask.sum())
    dense = kept == mask.numel()
    if prior is not None and prior.shared is not None and not config.requantizes(name):
        return _keep_shared(writer, name, tensor, prior, prior.shared, pruned, mask, width, layout)
    k = config.levels_for(name)
    if k is None or kept == 0:
        if dense:
            writer.add_raw(name, values)
        else:
            writer.add_sparse_float(name, values, mask, gap_width=width)
        return {"levels": None, "kept": kept}
    flat = values.reshape(-1).float() if dense else masked_values(values, mask, dtype=torch.float32)
    step = config.step_for(name)
    result = _quantize(flat, k, config, name, step)
    del flat
    indices = torch.zeros(tensor.shape, dtype=torch.uint8)
    if dense:
        indices.view(-1).copy_(result.labels)
    else:  # (indexing by a bool mask would build int64 positions, 8 bytes a weight)
        indices.masked_scatter_(mask, result.labels.to(torch.uint8))
    centroids, used = result.centroids.cpu(), result.k
    del result  # its int64 labels (8 bytes a weight) are in the uint8 indices now
    shared = SharedTensor(centroids, indices, mask)
    writer.add_shared(name, shared, dtype=tensor.dtype, gap_width=width, layout=layout)
    if step is not None:
        return {"step": step, "levels": used, "used": used, "kept": kept}
    return {"levels": k, "used": used, "kept": kept}


def _keep_shared(
    writer: DzipWriter,
    name: str,
    tensor: torch.Tensor,
    prior: _Prior,
    shared: SharedTensor,
    pruned: torch.Tensor,
    mask: torch.Tensor,
    width: GapWidth,
    layout: Layout,
) -> dict[str, Any]:
    """Write a checkpoint's weight-shared tensor with its own codebook and indices: as its
    Bloomier filter when nothing more is pruned, else with the shared encodings."""
    k = shared.codebook.numel()
    line: dict[str, Any] = {"levels": k, "codebook": "checkpoint"}
    if prior.bloomier is not None and torch.equal(mask, pruned):
        # the filter decodes the positions whose level is zero to zero as well
        record = writer.add_bloomier(
            name, shared.codebook, prior.bloomier, tuple(tensor.shape), dtype=tensor.dtype
        )
        return {**line, "kept": record.kept, "bloomier": True}
    writer.add_shared(
        name,
        SharedTensor(shared.codebook, shared.indices, mask),
        dtype=tensor.dtype,
        gap_width=width,
        layout=layout,
    )
    used = int(torch.unique(masked_values(shared.indices, mask)).numel())
    return {**line, "used": used, "kept": int(mask.sum())}
