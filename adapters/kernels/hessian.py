"""Calibration Hessians ``H = 2 XᵀX / N`` of a linear layer: accumulation, damping, inverse factor, error."""

from __future__ import annotations

import torch

__all__ = ["DAMPING", "accumulate_xtx", "prepare_hessian", "inverse_cholesky", "relative_output_error"]

DAMPING = 0.01  # fraction of mean(diag H) added to the diagonal (GPTQ / SparseGPT default)


def accumulate_xtx(total: torch.Tensor | None, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Add ``XᵀX`` (fp32) of the inputs ``x`` (``[..., in]``) to ``total``; returns it and the rows added.

    ``total`` ``None`` starts a new ``(in, in)`` sum on ``x``'s device. ``2 · total / rows`` is the Hessian.
    """
    flat = x.detach().reshape(-1, x.shape[-1]).float()
    if total is None:
        total = torch.zeros(flat.shape[1], flat.shape[1], dtype=torch.float32, device=flat.device)
    total.addmm_(flat.T, flat)
    return total, int(flat.shape[0])


def prepare_hessian(h: torch.Tensor, damping: float = DAMPING) -> tuple[torch.Tensor, torch.Tensor]:
    """Damped copy of ``h`` and the mask of dead input columns.

    A column whose input was always zero (``H[j, j] == 0``) gets ``H[j, j] = 1``
    so the matrix is invertible; the weights of such a column never affect the
    output. Then ``damping · mean(diag H)`` is added to the diagonal.
    """
    h = h.detach().to(torch.float32).clone()
    diag = torch.diagonal(h)
    dead = diag == 0
    diag[dead] = 1.0
    diag += damping * torch.mean(diag)
    return h, dead


def inverse_cholesky(h: torch.Tensor, damping: float = DAMPING) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor ``U`` of ``(H + damping)⁻¹`` (``U Uᵀ``-free form used by OBS updates) and dead mask.

    ``Uᵀ U = H⁻¹``; row ``j`` of ``U`` holds the update coefficients for
    eliminating column ``j`` given that columns ``< j`` are already fixed. If
    the damped matrix is still not positive definite the damping is raised
    tenfold (up to three times) before giving up.

    Raises:
        ValueError: if ``H`` stays singular after raising the damping.
    """
    for attempt in range(4):
        hd, dead = prepare_hessian(h, damping * (10**attempt))
        lower, info = torch.linalg.cholesky_ex(hd)
        if int(info) == 0:
            hinv = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
            if int(info) == 0:
                return upper, dead
    raise ValueError("the calibration Hessian is singular even with 10x damping; use more calibration tokens")


def relative_output_error(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor) -> float:
    """Normalised layer output error ``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`` with ``ΔW = W_hat − W`` (raw ``H``)."""
    w = w.to(torch.float32)
    dw = w_hat.to(torch.float32) - w
    num = torch.sum((dw @ h) * dw)
    den = torch.sum((w @ h) * w)
    return float(num / den) if float(den) > 0 else float(num)
