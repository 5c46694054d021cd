"""Confidence calibration: expected calibration error and temperature fitting.

* :func:`expected_calibration_error` -- ECE with equal-width confidence bins (Naeini et al., AAAI
  2015; Guo et al., ICML 2017): ``ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|``, where the
  confidence of a row is its maximum softmax probability and bin ``b`` holds the rows with
  ``b / n_bins < conf <= (b + 1) / n_bins``.
* :func:`fit_temperature` -- the temperature ``T`` that minimises ``ECE(softmax(logits / T))``,
  as the DisMax authors do (Macêdo et al., "Enhanced Isotropy Maximization Loss", 2022): bounded
  L-BFGS (scipy's ``L-BFGS-B``) started at ``init`` within ``bounds = (1e-3, 100)``.

ECE is a *discontinuous* function of ``T``: a row's confidence moves continuously with ``T``, but
every time it crosses a bin edge the sum jumps, and accuracy (the argmax) does not depend on ``T``
at all. L-BFGS-B differentiates it by finite differences with a step of 1e-8, so it often stops
where it started or in a nearby local step. :func:`fit_temperature` therefore also runs a
**robust fallback** -- our addition, not the authors': a bounded search in ``log T`` (a
log-spaced grid over ``bounds``, then a finer grid around the best point) -- and returns the
candidate (start, L-BFGS result, grid search) with the lowest ECE. The result is never worse than
the starting point. ``return_info=True`` reports what each candidate achieved, including whether
L-BFGS moved at all.

Everything is computed in float64 on the input's device; inputs may be torch tensors or numpy
arrays.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch

ArrayLike = Union[torch.Tensor, np.ndarray]

__all__ = ["expected_calibration_error", "fit_temperature", "temperature_ece"]


def _as_tensor(x: ArrayLike, name: str, dtype=None) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got {type(x).__name__}")
    return x if dtype is None else x.to(dtype)


def _check(scores: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    if scores.dim() != 2:
        raise ValueError(f"{what}: expected [N, C] scores, got shape {tuple(scores.shape)}")
    if labels.dim() != 1 or labels.shape[0] != scores.shape[0]:
        raise ValueError(
            f"{what}: labels must be [N] with N = {scores.shape[0]} rows, got shape "
            f"{tuple(labels.shape)}"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= scores.shape[1]):
        raise ValueError(
            f"{what}: labels must lie in 0 .. {scores.shape[1] - 1}, got values in "
            f"{int(labels.min())} .. {int(labels.max())}"
        )
    if not torch.isfinite(scores).all():
        bad = int((~torch.isfinite(scores)).any(dim=1).sum())
        raise ValueError(f"{what}: {bad} of {scores.shape[0]} rows contain NaN or inf")


def _looks_like_probs(x: torch.Tensor) -> bool:
    if x.numel() == 0:
        return False
    return bool(
        (x.min() >= 0) and (x.max() <= 1) and torch.allclose(x.sum(dim=1), x.new_ones(()), atol=1e-3)
    )


def _binned_ece(conf: torch.Tensor, correct: torch.Tensor, n_bins: int) -> torch.Tensor:
    """ECE of confidences ``conf`` ``[..., N]`` (float64) with 0/1 ``correct`` ``[N]``: ``[...]``.

    Bins are ``(b / n_bins, (b + 1) / n_bins]``; a confidence of exactly 0 falls in no bin (it
    cannot occur for a softmax).
    """
    n = conf.shape[-1]
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=conf.dtype, device=conf.device)
    # bucketize(right=False): edges[i-1] < x <= edges[i]  ->  index i; bin = i - 1
    idx = torch.bucketize(conf, edges, right=False) - 1
    valid = idx >= 0
    idx = idx.clamp(0, n_bins - 1)
    gap = torch.where(valid, correct.to(conf.dtype) - conf, torch.zeros_like(conf))
    sums = torch.zeros(conf.shape[:-1] + (n_bins,), dtype=conf.dtype, device=conf.device)
    sums.scatter_add_(-1, idx, gap)
    return sums.abs().sum(dim=-1) / max(n, 1)


def expected_calibration_error(
    logits_or_probs: ArrayLike,
    labels: ArrayLike,
    n_bins: int = 15,
    is_probs: Optional[bool] = None,
) -> float:
    """Expected calibration error of a classifier, with ``n_bins`` equal-width bins.

    Args:
        logits_or_probs: ``[N, C]`` logits, or probabilities (rows in [0, 1] summing to 1).
        labels: ``[N]`` int class indices in ``0 .. C-1``.
        n_bins: number of equal-width bins on the max softmax probability (15 as DisMax).
        is_probs: whether ``logits_or_probs`` are probabilities; None = detect (all values in
            [0, 1] and every row summing to 1 within 1e-3).

    Returns:
        ECE in [0, 1] as a python float (0.0 for N = 0).
    """
    if n_bins <= 0:
        raise ValueError(f"expected_calibration_error: n_bins must be positive, got {n_bins}")
    x = _as_tensor(logits_or_probs, "logits_or_probs").detach().to(torch.float64)
    y = _as_tensor(labels, "labels").detach().to(device=x.device, dtype=torch.long)
    _check(x, y, "expected_calibration_error")
    if x.shape[0] == 0:
        return 0.0
    if is_probs is None:
        is_probs = _looks_like_probs(x)
    probs = x if is_probs else torch.softmax(x, dim=1)
    conf, pred = probs.max(dim=1)
    return float(_binned_ece(conf, pred.eq(y), n_bins))


def temperature_ece(
    logits: ArrayLike,
    labels: ArrayLike,
    temperatures: ArrayLike,
    n_bins: int = 15,
    chunk: Optional[int] = None,
) -> torch.Tensor:
    """ECE of ``softmax(logits / T)`` for every ``T`` in ``temperatures`` ``[M]`` -> ``[M]`` (float64).

    Vectorised over temperatures, ``chunk`` at a time (default: as many as keep the temporary
    ``[chunk, N, C]`` array under 4M elements). The argmax, hence the accuracy, does not
    depend on ``T > 0``, and the max softmax probability is ``1 / sum_j exp((l_j - l_max) / T)``.
    """
    x = _as_tensor(logits, "logits").detach().to(torch.float64)
    y = _as_tensor(labels, "labels").detach().to(device=x.device, dtype=torch.long)
    _check(x, y, "temperature_ece")
    t = _as_tensor(temperatures, "temperatures").detach().to(device=x.device, dtype=torch.float64)
    t = t.reshape(-1)
    if (t <= 0).any():
        raise ValueError(f"temperature_ece: temperatures must be > 0, got min {float(t.min())}")
    if x.shape[0] == 0:
        return torch.zeros_like(t)
    top, pred = x.max(dim=1)
    return _ece_many(x - top[:, None], pred.eq(y), t, n_bins, chunk)


def _ece_many(
    shifted: torch.Tensor, correct: torch.Tensor, t: torch.Tensor, n_bins: int, chunk: Optional[int]
) -> torch.Tensor:
    """ECE at temperatures ``t`` ``[M]`` of logits already shifted so that each row's max is 0."""
    if chunk is None:
        chunk = max(1, (4 * 1024 * 1024) // max(shifted.numel(), 1))
    out = []
    for i in range(0, t.numel(), chunk):
        tc = t[i : i + chunk]
        # conf[m, n] = 1 / sum_j exp(shifted[n, j] / T_m)
        conf = 1.0 / torch.exp(shifted[None, :, :] / tc[:, None, None]).sum(dim=-1)
        out.append(_binned_ece(conf, correct, n_bins))
    return torch.cat(out)


def fit_temperature(
    logits: ArrayLike,
    labels: ArrayLike,
    bounds: Tuple[float, float] = (1e-3, 100.0),
    init: float = 1.0,
    n_bins: int = 15,
    grid_size: int = 200,
    max_evals: int = 150,
    return_info: bool = False,
) -> Union[float, Tuple[float, Dict[str, float]]]:
    """Temperature ``T`` minimising ``ECE(softmax(logits / T))`` on held-out data.

    Bounded L-BFGS (scipy ``L-BFGS-B``, finite-difference gradient) from ``init`` as the DisMax
    authors do, plus our robust fallback: a ``grid_size``-point log-spaced search over ``bounds``
    refined by a second grid of ``grid_size // 2`` points between the neighbours of the best point.
    The candidate with the lowest ECE wins (ties: start, then L-BFGS, then grid), so the result is
    never worse than ``init``.

    Args:
        logits: ``[N, C]`` uncalibrated logits (held-out in-distribution data).
        labels: ``[N]`` int in ``0 .. C-1``.
        bounds: ``(T_min, T_max)``, both > 0.
        init: the starting temperature (inside ``bounds``).
        n_bins: ECE bins.
        grid_size: points of the coarse log-``T`` grid.
        max_evals: cap on L-BFGS-B's ECE evaluations (its finite-difference line searches on the
            discontinuous ECE can take hundreds; the grid search covers what it misses).
        return_info: also return ``{"ece_init", "ece_lbfgs", "ece_grid", "ece", "t_lbfgs", "t_grid",
            "lbfgs_moved"}``.

    Returns:
        ``T`` as a python float (and the info dict when ``return_info``).
    """
    from scipy.optimize import minimize

    lo, hi = float(bounds[0]), float(bounds[1])
    if not (0 < lo < hi):
        raise ValueError(f"fit_temperature: bounds must satisfy 0 < low < high, got {bounds}")
    if not (lo <= init <= hi):
        raise ValueError(f"fit_temperature: init={init} is outside bounds {bounds}")
    x = _as_tensor(logits, "logits").detach().to(torch.float64)
    y = _as_tensor(labels, "labels").detach().to(device=x.device, dtype=torch.long)
    _check(x, y, "fit_temperature")
    if x.shape[0] == 0:
        raise ValueError("fit_temperature: no rows to calibrate on (N = 0)")

    top, pred = x.max(dim=1)
    shifted, correct = x - top[:, None], pred.eq(y)

    def ece_of(ts) -> np.ndarray:
        t = torch.as_tensor(np.asarray(ts, dtype=np.float64).reshape(-1), device=x.device)
        return _ece_many(shifted, correct, t, n_bins, None).cpu().numpy()

    ece_init = float(ece_of([init])[0])

    # 1) the authors' procedure: bounded L-BFGS from init
    res = minimize(
        lambda v: float(ece_of(v)[0]),
        x0=np.array([init]),
        method="L-BFGS-B",
        bounds=[(lo, hi)],
        options={"maxfun": max_evals},
    )
    t_lbfgs = float(np.clip(res.x[0], lo, hi))
    ece_lbfgs = float(ece_of([t_lbfgs])[0])

    # 2) robust fallback: coarse log-T grid, then a fine grid around the best coarse point
    log_grid = np.linspace(math.log(lo), math.log(hi), max(int(grid_size), 3))
    coarse = ece_of(np.exp(log_grid))
    k = int(np.argmin(coarse))
    a, b = log_grid[max(k - 1, 0)], log_grid[min(k + 1, len(log_grid) - 1)]
    fine_grid = np.linspace(a, b, max(int(grid_size) // 2, 3))
    fine = ece_of(np.exp(fine_grid))
    j = int(np.argmin(fine))
    if fine[j] <= coarse[k]:
        t_grid, ece_grid = float(math.exp(fine_grid[j])), float(fine[j])
    else:
        t_grid, ece_grid = float(math.exp(log_grid[k])), float(coarse[k])

    candidates = [(ece_init, 0, float(init)), (ece_lbfgs, 1, t_lbfgs), (ece_grid, 2, t_grid)]
    best_ece, _, best_t = min(candidates)
    if not return_info:
        return best_t
    info = {
        "ece_init": ece_init,
        "ece_lbfgs": ece_lbfgs,
        "ece_grid": ece_grid,
        "ece": best_ece,
        "t_lbfgs": t_lbfgs,
        "t_grid": t_grid,
        "lbfgs_moved": float(abs(t_lbfgs - init) > 1e-6 * max(1.0, abs(init))),
    }
    return best_t, info
