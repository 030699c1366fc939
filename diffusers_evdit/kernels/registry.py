"""A registry of tile-attention kernels with declared constraints, checked in one place.

In the style of diffusers' ``attention_dispatch`` registry: each kernel is a function registered under its name with
what it supports (devices, dtypes, head sizes, key-padding masks, an exact backward, Triton, FlashAttention-4).
:meth:`KernelSpec.check` tells why a kernel cannot run a call; ``TileAttention`` runs a forced kernel only after that
check, and its ``"auto"`` choice takes the first kernel of its preference order whose check passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..layout import TileLayout
from .fa4 import fa4_available
from .triton_support import triton_runs

PADDING = ("any", "text", "none")


class UnsupportedKernelError(ValueError, RuntimeError):
    """A kernel was asked for a call it does not support (a ``ValueError``; also a ``RuntimeError``, which the
    kernels raised for a missing Triton or backward before the registry checked them).

    Example:
        >>> issubclass(UnsupportedKernelError, ValueError) and issubclass(UnsupportedKernelError, RuntimeError)
        True
    """
  # which key-padding masks a kernel takes: any, text tokens only, none


@dataclass
class TileCall:
    """One tile-attention call: ``[B, H, N, D]`` inputs, the layout, the plan entry and the options.

    Example:
        >>> layout = TileLayout(num_frames=4, tokens_per_frame=8)
        >>> q = torch.randn(1, 2, layout.seq_len, 16, requires_grad=True)
        >>> call = TileCall(q, q, q, layout, k_ref=1)
        >>> call.needs_grad, call.pads_video()
        (True, False)
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    layout: TileLayout
    k_ref: int | None
    key_padding_mask: torch.Tensor | None = None
    scale: float | None = None
    dense_fn: Callable | None = None

    @property
    def needs_grad(self) -> bool:
        """Whether autograd records this call (gradients enabled and an input requires them)."""
        return torch.is_grad_enabled() and (self.q.requires_grad or self.k.requires_grad or self.v.requires_grad)

    def pads_video(self) -> bool:
        """Whether the key-padding mask drops a video token (data-dependent: a device sync, and a graph break under
        ``torch.compile``)."""
        if self.key_padding_mask is None:
            return False
        return not bool(self.key_padding_mask[:, self.layout.video_slice].all())


@dataclass(frozen=True)
class KernelSpec:
    """A registered kernel and its declared constraints.

    Attributes:
        name: the kernel's name (``TileAttention(kernel=name)``).
        fn: ``fn(attention, call) -> Tensor`` with ``attention`` the calling ``TileAttention`` (its caches and
            options) and ``call`` a :class:`TileCall`.
        devices: device types it runs on (``None``: any).
        dtypes: input dtypes it takes (``None``: any), on ``dtype_devices``.
        dtype_devices: device types where ``dtypes`` applies (``None``: all).
        head_dim_multiple: head sizes it takes are multiples of this, on ``head_dim_devices`` (``None``: all).
        max_head_dim: the largest head size it takes (``None``: no limit), on ``head_dim_devices``.
        padding: key-padding masks it takes: ``"any"``, ``"text"`` (text tokens only) or ``"none"``.
        backward: whether it has an exact backward pass, and on which devices (``True``: all, a tuple: those).
        needs_triton: whether it runs only where Triton kernels run (CUDA, or the CPU under ``TRITON_INTERPRET=1``).
        needs_fa4: whether it runs only where FlashAttention-4 runs (:func:`.fa4.fa4_available`).
        fix: what to do instead, appended to every refusal.

    Example:
        >>> spec = KernelSpec("cuda_only", fn=None, devices=("cuda",), fix="use kernel='split'")
        >>> q = torch.randn(1, 1, 8, 4)
        >>> spec.refusal(TileCall(q, q, q, TileLayout(num_frames=2, tokens_per_frame=4), k_ref=1))
        'runs on cuda tensors, got cpu'
    """

    name: str
    fn: Callable
    devices: tuple[str, ...] | None = None
    dtypes: tuple[torch.dtype, ...] | None = None
    dtype_devices: tuple[str, ...] | None = None
    head_dim_multiple: int = 1
    head_dim_devices: tuple[str, ...] | None = None
    max_head_dim: int | None = None
    padding: str = "any"
    backward: bool | tuple[str, ...] = True
    needs_triton: bool = False
    needs_fa4: bool = False
    fix: str = "use kernel='auto'"

    def has_backward(self, device: torch.device) -> bool:
        """Whether this kernel's backward pass is exact for tensors on ``device``."""
        return self.backward is True or (isinstance(self.backward, tuple) and device.type in self.backward)

    def refusal(self, call: TileCall) -> str | None:
        """Why this kernel cannot run ``call`` (``None`` when it can). The one place constraints are checked."""
        q = call.q
        if self.devices is not None and q.device.type not in self.devices:
            return f"runs on {'/'.join(self.devices)} tensors, got {q.device.type}"
        if self.needs_triton and not triton_runs(q.device):
            return "needs Triton and CUDA tensors (or TRITON_INTERPRET=1)"
        if self.needs_fa4 and not fa4_available(q.device):
            return "needs FlashAttention-4 (`pip install flash-attn-4`) and a Hopper or Blackwell GPU"
        dtype_applies = self.dtype_devices is None or q.device.type in self.dtype_devices
        if self.dtypes is not None and dtype_applies and q.dtype not in self.dtypes:
            where = f" on {'/'.join(self.dtype_devices)}" if self.dtype_devices else ""
            return f"takes {', '.join(str(d) for d in self.dtypes)} inputs{where}, got {q.dtype}"
        on_device = self.head_dim_devices is None or q.device.type in self.head_dim_devices
        if on_device and q.shape[-1] % self.head_dim_multiple:
            return f"needs a head_dim that is a multiple of {self.head_dim_multiple}, got {q.shape[-1]}"
        if on_device and self.max_head_dim is not None and q.shape[-1] > self.max_head_dim:
            return f"takes head sizes up to {self.max_head_dim}, got {q.shape[-1]}"
        if call.key_padding_mask is not None:
            if self.padding == "none":
                return "takes no key-padding mask"
            if self.padding == "text" and call.pads_video():
                return "supports key-padding masks on text tokens only"
        if call.needs_grad and not self.has_backward(q.device):
            return f"has no exact backward pass on {q.device.type} (inference only)"
        return None

    def supports(self, call: TileCall) -> bool:
        """Whether :meth:`refusal` finds nothing."""
        return self.refusal(call) is None

    def check(self, call: TileCall) -> None:
        """Raise :class:`UnsupportedKernelError` naming the constraint and the fix when this kernel cannot run
        ``call``."""
        reason = self.refusal(call)
        if reason is not None:
            raise UnsupportedKernelError(f"The {self.name!r} tile kernel {reason}; {self.fix}.")


@dataclass
class KernelRegistry:
    """Kernels by name, registered with their constraints.

    Example:
        >>> registry = KernelRegistry()
        >>> @registry.register("twice", devices=("cpu",))
        ... def twice(attention, call):
        ...     return 2 * call.q
        >>> registry.names()
        ('twice',)
        >>> registry["twice"].devices
        ('cpu',)
    """

    kernels: dict[str, KernelSpec] = field(default_factory=dict)

    def register(self, name: str, **constraints) -> Callable[[Callable], Callable]:
        """Decorator: register ``fn(attention, call)`` under ``name`` with ``constraints`` (:class:`KernelSpec`)."""
        if constraints.get("padding", "any") not in PADDING:
            raise ValueError(f"padding must be one of {PADDING}, got {constraints['padding']!r}.")

        def decorator(fn: Callable) -> Callable:
            self.kernels[name] = KernelSpec(name, fn, **constraints)
            return fn

        return decorator

    def __getitem__(self, name: str) -> KernelSpec:
        return self.kernels[name]

    def __contains__(self, name: str) -> bool:
        return name in self.kernels

    def names(self) -> tuple[str, ...]:
        """Registered kernel names, in registration order."""
        return tuple(self.kernels)

    def trainable(self, device: torch.device | str) -> tuple[str, ...]:
        """Names of the kernels with an exact backward pass on ``device``."""
        device = torch.device(device)
        return tuple(name for name, spec in self.kernels.items() if spec.has_backward(device))
