"""Per-weight importance for Hessian-weighted quantization (Choi, El-Khamy & Lee, ICLR 2017).

Two diagonal-Hessian proxies, each returned as ``{parameter name: tensor}`` in the weight's
shape, for the tensors that :func:`~deepzip.targets.select_targets` picks:

* :func:`fisher_diagonal`: the mean over a few batches' samples of each sample's squared
  loss gradient (the empirical Fisher information, which approximates the Hessian's diagonal
  near a minimum);
* :func:`adam_second_moment`: the square root of Adam's running average of squared gradients
  (``sqrt(exp_avg_sq)``), free when the model was trained with Adam/AdamW: Choi et al.'s
  alternative of the Hessian (their section 4.4, and the square roots used in section 6).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from deepzip.errors import ConfigError
from deepzip.quantize.shared import get_shared
from deepzip.targets import Target, eval_mode, select_targets

__all__ = ["adam_second_moment", "fisher_diagonal"]


def _stored(t: Target) -> torch.Tensor:
    """The tensor that holds a target's gradient: the parameter, or a masked layer's original."""
    params = getattr(t.module, "parametrizations", None)
    if params is not None and t.param_name in params:
        original = params[t.param_name].original
        assert isinstance(original, torch.Tensor)
        return original
    value = getattr(t.module, t.param_name)
    assert isinstance(value, torch.Tensor)
    return value


# samples whose gradients are computed together (vmap): bounds the per-sample gradient memory
# to this many copies of the selected weights
_FISHER_CHUNK = 32


def fisher_diagonal(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    max_batches: int = 10,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> dict[str, torch.Tensor]:
    """The empirical Fisher diagonal of each selected weight over the first ``max_batches``.

    That is the mean over every sample ``i`` of those batches of ``(∂ℓᵢ/∂w)²``, where ``ℓᵢ`` is
    the loss of sample ``i`` alone: squared *per-sample* gradients, not the square of a batch's
    mean gradient (which near a minimum is far smaller and noisier). Per-sample gradients come
    from ``torch.func`` (``vmap`` over ``grad``), ``_FISHER_CHUNK`` samples at a time; a model
    ``vmap`` cannot trace (data-dependent control flow, an autograd function without vmap
    support) falls back to one backward pass per sample, with the same result.

    The model runs in eval mode (no dropout noise; BatchNorm uses its running statistics); each
    submodule's own training flag is restored afterwards. Its parameters are not changed and
    their ``.grad`` is left cleared. Batches are moved to the device of the model's first
    parameter. ``loss_fn(output, labels)`` gets one sample's output
    and label (a batch of one); the default is cross-entropy.

    Raises:
        ConfigError: ``max_batches`` not an integer >= 1, a loader with no batches, or a
            selected weight that is already weight-shared (no gradient reaches its weights).
    """
    if isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1:
        raise ConfigError(f"max_batches must be an integer >= 1, got {max_batches!r}")
    criterion = loss_fn if loss_fn is not None else nn.functional.cross_entropy
    targets = select_targets(model, include=include, exclude=exclude).targets
    for t in targets:
        if get_shared(t.module, t.param_name) is not None:
            raise ConfigError(
                f"{t.name} is already weight-shared: its codebook trains, not its weights, so "
                "its Fisher importance would be zero; compute the importance before quantizing "
                "it (or exclude it)"
            )
    stored = {t.name: _stored(t) for t in targets}
    full_names: dict[int, str] = {}  # a tensor's first name
    for full, param in model.named_parameters(remove_duplicate=False):
        full_names.setdefault(id(param), full)
    param_name = {n: full_names[id(p)] for n, p in stored.items() if id(p) in full_names}
    first = next(model.parameters(), None)  # a model without parameters has no Fisher
    device = first.device if first is not None else torch.device("cpu")
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in stored.items()}
    flags = {n: p.requires_grad for n, p in stored.items()}
    samples = 0
    batch_count = 0
    use_vmap = len(param_name) == len(stored)
    with eval_mode(model):
        try:
            for p in stored.values():
                p.requires_grad_(True)
            for inputs, labels in batches:
                if batch_count == max_batches:
                    break
                batch_count += 1
                inputs, labels = inputs.to(device), labels.to(device)
                for lo in range(0, int(inputs.shape[0]), _FISHER_CHUNK):
                    x, y = inputs[lo : lo + _FISHER_CHUNK], labels[lo : lo + _FISHER_CHUNK]
                    squares = None
                    if use_vmap:
                        try:
                            squares = _vmap_squares(model, criterion, stored, param_name, x, y)
                        except (RuntimeError, NotImplementedError):
                            use_vmap = False  # not traceable by vmap: the same sums, one by one
                    if squares is None:
                        squares = _loop_squares(model, criterion, stored, x, y)
                    for n, sq in squares.items():
                        sums[n] += sq
                    samples += int(x.shape[0])
        finally:
            model.zero_grad(set_to_none=True)
            for n, p in stored.items():
                p.requires_grad_(flags[n])
    if batch_count == 0:
        raise ConfigError("fisher_diagonal: the loader yielded no batches")
    if samples == 0:
        raise ConfigError("fisher_diagonal: the loader's batches hold no samples")
    return {n: s / samples for n, s in sums.items()}


def _vmap_squares(
    model: nn.Module,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    stored: dict[str, torch.Tensor],
    param_name: dict[str, str],
    x: torch.Tensor,
    y: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """``Σᵢ (∂ℓᵢ/∂w)²`` over the samples of ``x`` for each stored tensor, by ``vmap``."""
    params = {param_name[n]: p.detach() for n, p in stored.items()}

    def sample_loss(
        ps: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor
    ) -> torch.Tensor:
        # tie_weights=False: a selected tensor is never tied to another attribute
        # (select_targets skips tied ones), and a module registered under several names has
        # one attribute that every name reaches; tying it would swap that one slot twice,
        # and restoring left a plain tensor in place of the model's parameter (PyTorch
        # #164759)
        out = torch.func.functional_call(model, ps, (xi.unsqueeze(0),), tie_weights=False)
        return criterion(out, yi.unsqueeze(0))

    # the outer no_grad keeps the result off the autograd graph of the model's other
    # parameters; torch.func.grad differentiates inside it all the same
    with torch.no_grad():
        per_sample = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0, 0))
        grads = per_sample(params, x, y)
    return {n: (grads[param_name[n]].float() ** 2).sum(0) for n in stored}


def _loop_squares(
    model: nn.Module,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    stored: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """``Σᵢ (∂ℓᵢ/∂w)²`` over the samples of ``x``, one backward pass per sample."""
    out = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in stored.items()}
    for i in range(int(x.shape[0])):
        model.zero_grad(set_to_none=True)
        loss = criterion(model(x[i : i + 1]), y[i : i + 1])
        torch.autograd.backward(loss)
        for n, p in stored.items():
            if p.grad is not None:
                out[n] += p.grad.detach().float() ** 2
    return out


def adam_second_moment(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    root: bool = True,
) -> dict[str, torch.Tensor]:
    """Choi et al.'s Hessian proxy from Adam: ``sqrt(exp_avg_sq)`` of each selected weight,
    from an optimizer that trained it.

    Choi, El-Khamy & Lee (ICLR 2017, section 4.4) propose "some function (e.g., square root)"
    of Adam's second moment estimates as the alternative of the Hessian, and their experiments
    (section 6) use its square root. The reason: Adam's step ``m / sqrt(v)`` divides by
    ``sqrt(v)`` where Newton's method divides by the Hessian, so ``sqrt(v)`` is the quantity
    that stands in for the curvature; ``v`` itself, the running mean of squared gradients, is
    its square, and would weight the weights with large gradients far more. Adam's bias
    correction (one factor per step count) is left out: it scales every weight that trained
    as long the same, which neither k-means nor ECSQ sees.

    Args:
        model: the trained model.
        optimizer: the Adam/AdamW optimizer that trained it (its state holds ``exp_avg_sq``).
        include: globs restricting the layers (see :func:`deepzip.targets.select_targets`).
        exclude: globs of layers to leave out.
        root: ``False`` returns the raw ``exp_avg_sq`` instead of its square root.

    Returns:
        ``{parameter name: importance}`` (float32, the weight's shape and device).

    Raises:
        ConfigError: a selected weight has no Adam state (not trained by this optimizer, or
            the optimizer is not Adam/AdamW).
    """
    out: dict[str, torch.Tensor] = {}
    for t in select_targets(model, include=include, exclude=exclude).targets:
        state = optimizer.state.get(_stored(t), {})
        if "exp_avg_sq" not in state:
            raise ConfigError(
                f"{t.name}: no Adam second moment in the optimizer state "
                f"({type(optimizer).__name__}); train with Adam/AdamW or use Fisher importance"
            )
        v = state["exp_avg_sq"].detach().float()
        out[t.name] = v.sqrt() if root else v.clone()
    return out
