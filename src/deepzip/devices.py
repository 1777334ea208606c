"""Device selection: one check of a device request for every layer of the package."""

from __future__ import annotations

import torch

from deepzip.errors import ConfigError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn a device request into a usable ``torch.device``.

    Args:
        device: ``None`` for CUDA when available and else the CPU, or anything
            ``torch.device`` accepts (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).

    Returns:
        The device.

    Raises:
        ConfigError: the string is not a device name; a CUDA device (or MPS) is requested
            that this machine does not have; ``meta`` (no data to train or evaluate on); or
            another device type this PyTorch cannot make tensors on (``xpu`` without its
            build, ``ve``...).
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r} is not a valid torch device: {exc}") from exc
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {device!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(
                f"device {device!r} requested but only {count} CUDA device(s) are present"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} requested but MPS is not available")
    if dev.type == "meta":
        raise ConfigError(f"device {device!r} holds no data (meta tensors have none)")
    if dev.type not in ("cpu", "cuda", "mps"):
        try:  # failing here, not with a traceback in the middle of the work
            torch.empty(0, device=dev)
        except Exception as exc:  # AssertionError, NotImplementedError, ModuleNotFoundError...
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise ConfigError(
                f"device {device!r}: this PyTorch cannot make tensors on it ({reason[:200]})"
            ) from exc
    return dev
