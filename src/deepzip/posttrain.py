"""Post-training compression of any checkpoint, without data: prune, quantize, code.

:func:`compress_checkpoint` reads a ``.safetensors`` file, a ``.pt``/``.pth`` state dict
(``torch.load(weights_only=True)``) or a Hugging Face model directory of safetensors shards,
and writes a ``.dzip`` file one tensor at a time: each selected weight is magnitude-pruned
(:func:`deepzip.prune.masks.sparsity_mask`), quantized by weight sharing
(the quantizers of :mod:`deepzip.quantize`: uniform, ECSQ or k-means, with ``2**bits`` or
any number of levels) and entropy-coded; every
other tensor is stored raw and listed in the report with the reason. Nothing is retrained, so
moderate sparsity and 4-6 bits are the useful range (see ``benchmarks/posttrain.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from deepzip.config import CoderName, IndexBitsSpec, QuantizeConfig, check_index_bits
from deepzip.errors import CheckpointError, ConfigError
from deepzip.format.api import IndexBits, gap_width, tie_key
from deepzip.format.checkpoint import load_pickled_state_dict
from deepzip.format.dzip_report import SaveReport
from deepzip.format.dzip_spec import MAX_K
from deepzip.format.dzip_writer import DzipWriter, GapWidth, Layout
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

ProgressFn = Callable[[str, int, int], None]
"""``progress(tensor name, index, total)``, called before each tensor is processed."""


@dataclass(frozen=True)
class PostTrainConfig:
    """What :func:`compress_checkpoint` does to each selected weight.

    Attributes:
        sparsity: fraction of each selected tensor's weights removed by magnitude, in [0, 1).
        bits: bits per weight index (1..8, ``2**bits`` levels); ``None`` leaves the weights
            in float (pruned ones are then stored sparse, the others raw).
        levels: number of quantization levels k (2..256) instead of ``2**bits``: with an
            entropy coder the rate follows the step size, not a power of two.
        quantizer: ``"uniform"``, ``"ecsq"`` or ``"kmeans"``.
        ecsq_lambda: ECSQ's rate weight (``quantizer="ecsq"``); 0 equals uniform.
        step: one grid step for every quantized tensor (``quantizer="uniform"`` only; see
            :func:`~deepzip.quantize.scalar.step_quantize`): each tensor gets the levels its
            range needs, at most 256, instead of ``levels``/``2**bits`` spread over its range.
            Tensors a ``layer_bits`` glob matches keep their ``2**bits`` levels.
        layer_bits: ``{glob: bits}`` per-tensor bits; the last matching glob wins.
        include: globs; when given, only matching tensors are compressed.
        exclude: globs of tensors left raw.
        min_elements: tensors with fewer elements are left raw (their codebook would cost
            more than it saves).
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
        for pattern, bits in self.layer_bits:
            QuantizeConfig(bits=bits)
            if not isinstance(pattern, str) or not pattern:
                raise ConfigError(f"layer_bits pattern must be a non-empty glob, got {pattern!r}")
        for key, globs in (("include", self.include), ("exclude", self.exclude)):
            # a bare string would be read as one glob per character
            if not isinstance(globs, tuple) or any(not isinstance(g, str) or not g for g in globs):
                raise ConfigError(f"{key} must be a tuple of non-empty glob strings, got {globs!r}")
        if isinstance(self.min_elements, bool) or not isinstance(self.min_elements, int):
            raise ConfigError(f"min_elements must be an integer, got {self.min_elements!r}")

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
        }

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


class _Source:
    """The tensor names of a checkpoint, and a way to load them one at a time."""

    def __init__(
        self,
        names: list[str],
        load: Callable[[str], torch.Tensor],
        files: Sequence[Path],
        *,
        ties: bool = False,
    ) -> None:
        self.names = names
        self.load = load
        self.files = tuple(files)
        # whether two names of one tensor share its storage when loaded (a pickled state dict
        # keeps its ties; safetensors files cannot hold shared tensors, and each load is new
        # memory whose address a later load may reuse)
        self.ties = ties


def _safetensors_source(files: Sequence[Path]) -> _Source:
    """The tensors of safetensors files, each read by opening its file afresh.

    ``safe_open`` memory-maps the whole file and every page a read touches stays resident
    while the handle is open; reopening per tensor releases them, so the peak memory is one
    tensor, not the checkpoint.
    """
    from safetensors import SafetensorError, safe_open

    owner: dict[str, Path] = {}
    names: list[str] = []
    for f in files:
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

    return _Source(names, load, files)


def _hf_shards(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
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
    shards = sorted(directory.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(
            f"{directory}: no model.safetensors.index.json and no *.safetensors files"
        )
    return shards


def _open_source(src: Path) -> _Source:
    if src.is_dir():
        return _safetensors_source(_hf_shards(src))
    if not src.is_file():
        raise CheckpointError(f"checkpoint not found: {src}")
    suffix = src.suffix.lower()
    if suffix == ".safetensors":
        return _safetensors_source([src])
    if suffix in (".pt", ".pth", ".bin"):
        state = load_pickled_state_dict(src, mmap=True)
        return _Source(list(state), state.__getitem__, [src], ties=True)
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


# ----------------------------------------------------------------------------- selection


def _skip_reason(name: str, tensor: torch.Tensor, config: PostTrainConfig) -> str | None:
    module, _, attr = name.rpartition(".")
    for pattern in config.exclude:
        if matches(pattern, module, attr):
            return f"excluded by pattern {pattern!r}"
    if config.include and not any(matches(p, module, attr) for p in config.include):
        return "not matched by any include pattern"
    if tensor.dtype not in _FLOATS:
        return f"not a floating-point tensor ({str(tensor.dtype).removeprefix('torch.')})"
    if tensor.dim() < 2:
        return f"{tensor.dim()}-D tensor (bias/normalization vector, kept in float)"
    if tensor.numel() < config.min_elements:
        return f"{tensor.numel()} elements, fewer than min_elements={config.min_elements}"
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
    metadata: Mapping[str, str] | None = None,
    progress: ProgressFn | None = None,
) -> SaveReport:
    """Compress a checkpoint into a ``.dzip`` file without data: prune, quantize, code.

    Each floating-point tensor of 2 or more dimensions (and at least ``min_elements``
    elements) that the globs select is pruned to ``sparsity`` by magnitude, quantized to
    ``2**bits`` shared values and entropy-coded; every other tensor is stored raw and listed
    in ``report.skipped`` with the reason. Tensors are read, compressed and written one at a
    time, so memory holds one tensor (and its temporaries) at a time. A tensor a pickled state
    dict holds under several names (tied embeddings) is stored once, as ``ALIAS`` entries
    (``docs/format.md`` 6.6), when its names get the same treatment (else each is compressed
    by its own settings).

    Args:
        src: a ``.safetensors`` file, a ``.pt``/``.pth``/``.bin`` state dict (read with
            ``torch.load(weights_only=True)``), or a Hugging Face model directory of
            safetensors shards (``model.safetensors.index.json`` or ``*.safetensors``).
        dest: the ``.dzip`` file (written atomically).
        sparsity: fraction of each selected tensor removed by magnitude, in [0, 1).
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
        metadata: the caller's string key/values.
        progress: called with ``(name, index, total)`` before each tensor.

    Returns:
        The per-tensor report (real file size, ratio to float32, skipped tensors).

    Raises:
        CheckpointError: the checkpoint cannot be read.
        ConfigError: a bad setting, a glob that matches no tensor, or ``dest`` is (a shard
            of) the checkpoint ``src``.
        InvalidTensorError: a selected tensor holds NaN or infinity (names it).
    """
    config = PostTrainConfig(
        sparsity=sparsity,
        bits=bits,
        levels=levels,
        quantizer=quantizer,
        ecsq_lambda=ecsq_lambda,
        step=step,
        layer_bits=tuple((layer_bits or {}).items()),
        include=_globs("include", include),
        exclude=_globs("exclude", exclude),
        min_elements=min_elements,
    )
    layers: dict[str, dict[str, Any]] = {}
    meta: dict[str, Any] = {
        "user": {str(k): str(v) for k, v in (metadata or {}).items()},
        "recipe": config.to_dict(),
    }
    _check_index_bits(index_bits)
    source = _open_source(Path(src))
    _check_dest(Path(dest), source)
    _check_globs(source.names, config, index_bits)
    # a tied tensor (one tensor under several names, as a pickled state dict with tied
    # embeddings holds it) is stored once when its names get the same treatment
    first_of: dict[tuple[Any, ...], tuple[str, tuple[Any, ...]]] = {}
    with DzipWriter(dest, coder=coder, metadata=meta) as writer:
        total = len(source.names)
        for i, name in enumerate(source.names):
            if progress is not None:
                progress(name, i, total)
            tensor = source.load(name)
            reason = _skip_reason(name, tensor, config)
            width = None if reason is not None else _gap_width(name, tensor, index_bits)
            treatment = (
                ("raw",)
                if reason is not None
                else ("compressed", config.levels_for(name), config.step_for(name), width)
            )
            key = tie_key(tensor) if source.ties else None
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
                writer.add_raw(name, tensor)
                writer.skip(name, reason)
                continue
            assert width is not None
            layers[name] = _compress_tensor(writer, name, tensor, config, width, layout)
            del tensor
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
    config: PostTrainConfig,
    width: GapWidth,
    layout: Layout,
) -> dict[str, Any]:
    """Prune, quantize and write one tensor; returns its line of the metadata report."""
    check_finite(name, tensor)
    k = config.levels_for(name)
    mask = (
        sparsity_mask(tensor, config.sparsity, name=name)
        if config.sparsity > 0
        else torch.ones(tensor.shape, dtype=torch.bool)
    )
    kept = int(mask.sum())
    if k is None or kept == 0:
        if config.sparsity > 0:
            writer.add_sparse_float(name, tensor, mask, gap_width=width)
        else:
            writer.add_raw(name, tensor)
        return {"levels": None, "kept": kept}
    values = tensor[mask].to(torch.float32) if config.sparsity > 0 else tensor.reshape(-1).float()
    step = config.step_for(name)
    result = _quantize(values, k, config, name, step)
    del values
    indices = torch.zeros(tensor.shape, dtype=torch.uint8)
    if config.sparsity > 0:
        indices[mask] = result.labels.to(torch.uint8)
    else:
        indices.view(-1).copy_(result.labels)
    shared = SharedTensor(result.centroids.cpu(), indices, mask)
    writer.add_shared(name, shared, dtype=tensor.dtype, gap_width=width, layout=layout)
    if step is not None:
        return {"step": step, "levels": result.k, "used": result.k, "kept": kept}
    return {"levels": k, "used": result.k, "kept": kept}
