"""Seeds, devices and dtypes for an engine run, without touching the caller's global state."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional, Union

import torch

Seed = Union[int, torch.Generator, None]


def resolve_seed(seed: Seed) -> Optional[int]:
    """An integer seed from an int, a ``torch.Generator`` (one draw from it) or None."""
    if seed is None or isinstance(seed, int):
        return seed
    if isinstance(seed, torch.Generator):
        return int(torch.randint(0, 2**62, (1,), generator=seed, device=seed.device).item())
    raise TypeError(f"seed must be an int, a torch.Generator or None, got {type(seed).__name__}")


def resolve_device(device: Union[str, torch.device, None], *tensors: Any) -> torch.device:
    """``device`` if given, else the device of the first tensor found in ``tensors``, else CPU."""
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r} was asked for, but CUDA is not available")
        return device
    for t in _tensors(tensors):
        return t.device
    return torch.device("cpu")


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def move(obj: Any, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> Any:
    """``obj`` (tensors nested in dicts / lists / tuples) on ``device``, floats cast to ``dtype``."""
    if isinstance(obj, torch.Tensor):
        target_dtype = dtype if (dtype is not None and obj.is_floating_point()) else obj.dtype
        return obj.to(device=device or obj.device, dtype=target_dtype)
    if isinstance(obj, dict):
        return {k: move(v, device, dtype) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(move(v, device, dtype) for v in obj)
    return obj


@contextlib.contextmanager
def seeded(seed: Seed, device: Optional[torch.device] = None) -> Iterator[None]:
    """Run with torch's global RNG seeded, restoring the caller's RNG state afterwards."""
    seed = resolve_seed(seed)
    devices = []
    if device is not None and device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def defaults(device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> Iterator[None]:
    """Make new tensors (e.g. a distribution's float constants) default to ``device`` / ``dtype``."""
    old_dtype = torch.get_default_dtype()
    if dtype is not None and dtype.is_floating_point:
        torch.set_default_dtype(dtype)
    try:
        if device is not None and device.type != "cpu":
            with torch.device(device):
                yield
        else:
            yield
    finally:
        torch.set_default_dtype(old_dtype)
