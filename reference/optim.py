"""Float64 AdamW with AIMv2's semantics: the oracle both backends' optimizers are tested
against.

Example:
    >>> import numpy as np
    >>> from aimv2.optim import OptimConfig
    >>> p, s, n = adamw_step({"w": np.ones(1)}, {"w": np.zeros(1)}, {}, OptimConfig(), 1e-3,
    ...                      {"w": True})
    >>> n, s["step"]
    (0.0, 1)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .ops import f64

__all__ = ["adamw_step"]


def adamw_step(
    params: Mapping[str, np.ndarray],
    grads: Mapping[str, np.ndarray],
    state: Mapping[str, Any],
    cfg: Any,
    lr: float,
    decay: Mapping[str, bool],
) -> tuple[dict[str, np.ndarray], dict[str, Any], float]:
    """One AdamW update in float64 with AIMv2's semantics (see :mod:`aimv2.optim`).

    ``state`` holds ``step`` and ``exp_avg.<name>`` / ``exp_avg_sq.<name>`` (empty to
    start). Returns (new params, new state, gradient norm before clipping).

    Example:
        >>> from aimv2.optim import OptimConfig
        >>> p, s, n = adamw_step({"w": np.ones(2)}, {"w": np.ones(2)}, {}, OptimConfig(), 1e-3,
        ...                      {"w": False})
        >>> p["w"].round(6).tolist(), s["step"]
        ([0.999, 0.999], 1)
    """
    b1, b2 = cfg.betas
    t = int(state.get("step", 0)) + 1
    g = {k: f64(v) for k, v in grads.items()}
    norm = float(np.sqrt(sum((v * v).sum() for v in g.values())))
    if cfg.clip_norm is not None:
        coef = min(1.0, cfg.clip_norm / (norm + 1e-6))
        g = {k: v * coef for k, v in g.items()}
    new_p, new_s = {}, {"step": t}
    shrink = cfg.decay_factor(lr)
    for name, p in params.items():
        m = b1 * f64(state.get(f"exp_avg.{name}", 0.0)) + (1 - b1) * g[name]
        v = b2 * f64(state.get(f"exp_avg_sq.{name}", 0.0)) + (1 - b2) * g[name] ** 2
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        p = f64(p) * (shrink if decay[name] else 1.0)
        new_p[name] = p - lr * m_hat / (np.sqrt(v_hat) + cfg.eps)
        new_s[f"exp_avg.{name}"], new_s[f"exp_avg_sq.{name}"] = m, v
    return new_p, new_s, norm
