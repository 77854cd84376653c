"""Scaling-law fits (SPEC 7 and 9.5).

``fit_power_law``: the seed's fit, ordinary least squares of log(PPL) on
log(tokens), PPL = A * tokens^alpha, with R^2 and a 95% t-interval for alpha.
``fit_saturating``: L = E + B * D^-beta on cross-entropy, which allows an
irreducible loss E (three parameters: with four points it has one degree of
freedom, so treat it as a sanity check, not a measurement).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats

PREDICT_TOKENS = (1_000_000, 5_000_000, 10_000_000)


def fit_power_law(tokens, ppl, predict_at=PREDICT_TOKENS) -> dict:
    x = np.log(np.asarray(tokens, dtype=float))
    y = np.log(np.asarray(ppl, dtype=float))
    n = len(x)
    if n < 2:
        raise ValueError(f"a power-law fit needs at least 2 points, got {n}")
    if not np.all(np.isfinite(y)):
        raise ValueError("a power-law fit needs finite perplexities")
    res = stats.linregress(x, y)
    alpha, log_a = float(res.slope), float(res.intercept)
    out = {
        "points": n,
        "alpha": alpha,
        "A": math.exp(log_a),
        "r2": float(res.rvalue**2) if n > 2 else 1.0,
        "alpha_se": None,
        "alpha_ci95": None,
        "reduction_per_doubling": 1.0 - 2.0**alpha,
    }
    if n > 2:
        t = stats.t.ppf(0.975, n - 2)
        out["alpha_se"] = float(res.stderr)
        out["alpha_ci95"] = [alpha - t * res.stderr, alpha + t * res.stderr]
    out["predictions"] = [
        {"tokens": int(d), "ppl": math.exp(log_a + alpha * math.log(d)), "ci95": _band(x, y, res, math.log(d))}
        for d in predict_at
    ]
    return out


def _band(x: np.ndarray, y: np.ndarray, res, x0: float) -> list[float] | None:
    """95% confidence band of the fitted mean log(PPL) at log-tokens x0, as PPL."""
    n = len(x)
    if n <= 2:
        return None
    resid = y - (res.intercept + res.slope * x)
    s = math.sqrt(float(resid @ resid) / (n - 2))
    se = s * math.sqrt(1 / n + (x0 - x.mean()) ** 2 / float(((x - x.mean()) ** 2).sum()))
    t = stats.t.ppf(0.975, n - 2)
    mid = res.intercept + res.slope * x0
    return [math.exp(mid - t * se), math.exp(mid + t * se)]


def power_law_band(tokens, ppl, grid) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Fitted PPL and its 95% band on ``grid`` (for plots); None with < 3 points."""
    x = np.log(np.asarray(tokens, dtype=float))
    y = np.log(np.asarray(ppl, dtype=float))
    if len(x) < 3:
        return None
    res = stats.linregress(x, y)
    mid = np.exp(res.intercept + res.slope * np.log(grid))
    bands = np.array([_band(x, y, res, math.log(g)) for g in grid])
    return mid, bands[:, 0], bands[:, 1]


def fit_saturating(tokens, loss) -> dict:
    """Fit cross-entropy L = E + B * D^-beta; returns parameters or an error."""
    d = np.asarray(tokens, dtype=float)
    y = np.asarray(loss, dtype=float)
    if len(d) < 4:
        return {"error": f"needs at least 4 points, got {len(d)}"}
    scale = d.min()

    def model(dd, e, b, beta):
        return e + b * (dd / scale) ** (-beta)

    try:
        params, _ = optimize.curve_fit(
            model, d, y, p0=(max(y.min() - 1.0, 0.0), 1.0, 0.3),
            bounds=([0.0, 0.0, 0.0], [np.inf, np.inf, 5.0]), maxfev=20000,
        )
    except (RuntimeError, ValueError) as err:
        return {"error": str(err)}
    e, b, beta = (float(p) for p in params)
    resid = y - model(d, e, b, beta)
    return {
        "E": e,
        "B": b * scale**beta,  # in raw token units: L = E + B * D^-beta
        "beta": beta,
        "rmse": float(np.sqrt(np.mean(resid**2))),
        "dof": len(d) - 3,
    }
