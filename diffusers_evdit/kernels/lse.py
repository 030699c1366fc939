"""Dense attention that returns the row log-sum-exp, and its backward given any output and log-sum-exp.

These are the building blocks of the split kernel (:mod:`.split`) and of its exact backward
(:mod:`.split_backward`). The backward takes the *final* output and row log-sum-exp of a query row, not the ones
of the partial call: softmax attention over disjoint key sets then has, per key set, exactly the gradient that the
set's dense backward computes (the identity ring attention uses), so no merge is differentiated.

Fused kernels (PyTorch's own, through ``torch.ops.aten``, the way diffusers' ``attention_dispatch`` reaches them):
cuDNN (bf16/fp16) or memory-efficient attention (fp32) on CUDA, the flash kernel for CPUs elsewhere. Head
dimensions the fused CUDA kernels do not take (not a multiple of 8), and float64 inputs on CUDA, use the explicit
math versions.
"""

from __future__ import annotations

import torch

# torch >= 2.9 hands cuDNN's log-sum-exp around as [B, H, L, 1] (its backward expects the same)
CUDNN_LSE_TRAILING_DIM = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 9)


def lse_dtype(q: torch.Tensor) -> torch.dtype:
    """The dtype the row log-sum-exps of ``q``'s attention are kept in: float64 for float64 inputs, else float32."""
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _fused_cuda(q: torch.Tensor) -> bool:
    """Whether PyTorch's fused CUDA kernels take ``q``: head sizes in multiples of 8, and not float64 (cuDNN and
    memory-efficient attention refuse it)."""
    return q.device.type == "cuda" and q.shape[-1] % 8 == 0 and q.dtype != torch.float64


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None):
    """Dense attention of ``[B, H, L, D]`` inputs that also returns the row log-sum-exp ``[B, H, L]`` (float32;
    float64 for float64 inputs).

    Uses cuDNN (bf16/fp16) or memory-efficient attention (fp32) on CUDA, the fused CPU kernel elsewhere. The fused
    CUDA kernels need a head dimension that is a multiple of 8 and do not take float64; other head dimensions (tiny
    test models) and float64 inputs take :func:`attention_with_lse_math`.

    Example:
        >>> q = k = v = torch.randn(1, 2, 5, 8)
        >>> out, lse = attention_with_lse(q, k, v)
        >>> out.shape, lse.shape
        (torch.Size([1, 2, 5, 8]), torch.Size([1, 2, 5]))
    """
    # the fused ops read an input whose last dimension is strided (x[..., ::2]) as if it were contiguous
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    if q.device.type == "cuda":
        if not _fused_cuda(q):
            return attention_with_lse_math(q, k, v, scale)
        if q.dtype in (torch.bfloat16, torch.float16):
            out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, scale=scale)[:2]
        else:  # memory-efficient attention pads the LSE rows to a multiple of 32
            out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, scale=scale)[:2]
    else:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, scale=scale)
    return out, lse.reshape(*q.shape[:2], -1)[..., : q.shape[2]].to(lse_dtype(q))


def attention_with_lse_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None):
    """:func:`attention_with_lse` from explicit scores in float32 (float64 for float64 inputs; any device and head
    dimension; memory grows with ``L x S``, so it is only the fallback where no fused kernel applies).

    Example:
        >>> q = k = v = torch.randn(1, 2, 5, 3)
        >>> out, lse = attention_with_lse_math(q, k, v)
        >>> torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-5)
        True
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    acc = lse_dtype(q)
    scores = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.matmul(torch.exp(scores - lse.unsqueeze(-1)), v.to(acc))
    return out.to(q.dtype), lse


def attention_backward(grad_out, q, k, v, out, lse, scale: float | None = None):
    """Gradients ``(dq, dk, dv)`` of dense attention of ``[B, H, L, D]`` queries against ``[B, H, S, D]`` keys,
    given the rows' output ``out`` and log-sum-exp ``lse`` (``[B, H, L]``, the dtype of :func:`lse_dtype`).

    With the *final* ``out`` and ``lse`` of rows whose keys are split into disjoint sets, the results for each set
    sum to the gradient of attention over the union. Same kernel choice as :func:`attention_with_lse`.

    Example:
        >>> q, k, v = (torch.randn(1, 2, 5, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
        >>> out, lse = attention_with_lse(q.detach(), k.detach(), v.detach())
        >>> g = torch.randn_like(out)
        >>> ref = torch.autograd.grad((torch.nn.functional.scaled_dot_product_attention(q, k, v) * g).sum(), (q, k, v))
        >>> all(torch.allclose(a, b) for a, b in zip(attention_backward(g, q.detach(), k.detach(), v.detach(), out,
        ...                                                                 lse), ref))
        True
    """
    if q.device.type == "cuda":
        if not _fused_cuda(q):
            return attention_backward_math(grad_out, q, k, v, out, lse, scale)
        grad_out, q, k, v, out = (x.contiguous() for x in (grad_out, q, k, v, out))
        lse = lse.float().contiguous()
        if q.dtype in (torch.bfloat16, torch.float16):
            seed = offset = q.new_empty((), dtype=torch.int64)  # read only with dropout
            stats = lse.unsqueeze(-1) if CUDNN_LSE_TRAILING_DIM else lse
            return torch.ops.aten._scaled_dot_product_cudnn_attention_backward(
                grad_out, q, k, v, out, stats, seed, offset, None, None, None, q.shape[2], k.shape[2], 0.0, False,
                scale=scale,
            )
        seed = offset = q.new_empty((), dtype=torch.int64)
        rows = lse.shape[-1]  # laid out like the forward's: rows padded to a multiple of 32
        padded = lse.new_zeros(*lse.shape[:-1], -(-rows // 32) * 32)
        padded[..., :rows] = lse
        return torch.ops.aten._scaled_dot_product_efficient_attention_backward(
            grad_out, q, k, v, None, out, padded, seed, offset, 0.0, [True, True, True, False], False, scale=scale
        )[:3]
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        grad_out, q, k, v, out, lse.to(lse_dtype(q)), 0.0, False, scale=scale
    )


def attention_backward_math(grad_out, q, k, v, out, lse, scale: float | None = None):
    """:func:`attention_backward` from explicit scores (float32, float64 for float64 inputs; any device and head
    dimension; memory grows with ``L x S``)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    acc = lse_dtype(q)
    q32, k32, v32, do32 = (x.to(acc) for x in (q, k, v, grad_out))
    p = torch.exp(torch.matmul(q32, k32.transpose(-1, -2)) * scale - lse.to(acc).unsqueeze(-1))
    delta = (do32 * out.to(acc)).sum(-1, keepdim=True)
    ds = p * (torch.matmul(do32, v32.transpose(-1, -2)) - delta)
    dq = torch.matmul(ds, k32) * scale
    dk = torch.matmul(ds.transpose(-1, -2), q32) * scale
    dv = torch.matmul(p.transpose(-1, -2), do32)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
