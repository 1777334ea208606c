"""Per-weight importance for Hessian-weighted quantization (Choi, El-Khamy & Lee, ICLR 2017).

Two diagonal-Hessian proxies, each returned as ``{parameter name: tensor}`` in the weight's
shape, for the tensors that :func:`~deepzip.targets.select_targets` picks:

* :func:`fisher_diagonal`: the mean squared gradient of the loss over a few batches (the
  empirical Fisher information, which approximates the Hessian's diagonal near a minimum);
* :func:`adam_second_moment`: Adam's running average of squared gradients (``exp_avg_sq``),
  free when the model was trained with Adam/AdamW (Choi et al.'s suggested proxy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from deepzip.errors import ConfigError
from deepzip.targets import Target, select_targets

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


def fisher_diagonal(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    max_batches: int = 10,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> dict[str, torch.Tensor]:
    """Mean over ``max_batches`` batches of the squared gradient of each selected weight.

    The model's parameters are not changed; their ``.grad`` is left cleared. Batches are moved
    to the device of the model's first parameter.

    Raises:
        ConfigError: ``max_batches < 1`` or a loader with no batches.
    """
    if max_batches < 1:
        raise ConfigError(f"max_batches must be >= 1, got {max_batches!r}")
    criterion = loss_fn if loss_fn is not None else nn.functional.cross_entropy
    targets = select_targets(model, include=include, exclude=exclude).targets
    stored = {t.name: _stored(t) for t in targets}
    device = next(model.parameters()).device
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in stored.items()}
    was_training = model.training
    model.eval()  # no dropout noise in the estimate; BatchNorm uses its running statistics
    flags = {n: p.requires_grad for n, p in stored.items()}
    count = 0
    try:
        for p in stored.values():
            p.requires_grad_(True)
        for inputs, labels in batches:
            if count == max_batches:
                break
            model.zero_grad(set_to_none=True)
            loss = criterion(model(inputs.to(device)), labels.to(device))
            torch.autograd.backward(loss)
            for n, p in stored.items():
                if p.grad is not None:
                    sums[n] += p.grad.detach().float() ** 2
            count += 1
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in stored.items():
            p.requires_grad_(flags[n])
        model.train(was_training)
    if count == 0:
        raise ConfigError("fisher_diagonal: the loader yielded no batches")
    return {n: s / count for n, s in sums.items()}


def adam_second_moment(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> dict[str, torch.Tensor]:
    """Adam's ``exp_avg_sq`` for each selected weight, from an optimizer that trained it.

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
        out[t.name] = state["exp_avg_sq"].detach().float().clone()
    return out
