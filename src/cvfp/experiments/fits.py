"""Scaling-law fits and their uncertainty (algorithm §7 and 9.5).

Every function takes one value per *run* (a sample size may have several
runs, one per seed) and returns a JSON-ready dict. The fits, their intervals
and the shape comparison use the *size means* (``size_means``): seeds of one
size are replicates, not independent points, and counting them as points
shrinks every interval by the seed noise where the real uncertainty is how far
the sizes leave the curve (lack of fit). Degrees of freedom are sizes minus
parameters.

- ``fit_power_law``: the original's fit, ordinary least squares of log(PPL) on
  log(tokens), PPL = A * tokens^alpha, with R^2 and a 95% t-interval for alpha.
- ``bootstrap_alpha_seeds``: the seed spread of alpha, from resampling seeds
  within each size (seed noise only; reported beside the interval, never as it).
- ``sliding_alpha``: alpha over windows of consecutive sizes (does the curve bend?).
- ``fit_saturating``: L = floor + B * T^-beta on cross-entropy (T: train
  tokens), with its covariance and a verdict from the floor's interval: "not
  identified" when it includes 0 or is wider than 1 nat.
- ``compare_shapes``: power law, power law with a floor and exponential decay to
  a floor, ranked by AIC(c), with the spread of their predictions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import optimize, stats

PREDICT_TOKENS = (1_000_000, 5_000_000, 10_000_000)
BOOTSTRAP_RESAMPLES = 10_000
# A floor whose 95% interval is wider than this (nats) is not identified by the points.
FLOOR_WIDTH = 1.0


def size_means(tokens, values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct sizes (ascending), the mean of ``values`` at each, and the number of runs at each."""
    tokens = np.asarray(tokens, dtype=float)
    values = np.asarray(values, dtype=float)
    sizes, index, runs = np.unique(tokens, return_inverse=True, return_counts=True)
    return sizes, np.bincount(index, weights=values) / runs, runs


def fit_power_law(tokens, ppl, predict_at=PREDICT_TOKENS) -> dict:
    """OLS of the size means of log(PPL) on log(tokens); the t-interval has sizes - 2 degrees of freedom."""
    ppl = np.asarray(ppl, dtype=float)
    if len(ppl) < 2:
        raise ValueError(f"a power-law fit needs at least 2 points, got {len(ppl)}")
    if not np.all(np.isfinite(np.log(ppl))):
        raise ValueError("a power-law fit needs finite perplexities")
    sizes, y, _ = size_means(tokens, np.log(ppl))
    x = np.log(sizes)
    n = len(x)
    if n < 2:
        raise ValueError("a power-law fit needs at least 2 distinct token counts")
    res = stats.linregress(x, y)
    alpha, log_a = float(res.slope), float(res.intercept)
    out = {
        "points": n,
        "runs": len(ppl),
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
    """Fitted PPL and its 95% band on ``grid`` (for plots; on the size means); None with < 3 sizes."""
    sizes, y, _ = size_means(tokens, np.log(np.asarray(ppl, dtype=float)))
    x = np.log(sizes)
    if len(x) < 3:
        return None
    res = stats.linregress(x, y)
    mid = np.exp(res.intercept + res.slope * np.log(grid))
    bands = np.array([_band(x, y, res, math.log(g)) for g in grid])
    return mid, bands[:, 0], bands[:, 1]


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    xc = x - x.mean()
    return float(xc @ (y - y.mean()) / (xc @ xc))


def bootstrap_alpha_seeds(tokens, ppl, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """alpha's 95% percentile interval from resampling seeds only (stratified by size).

    Runs are grouped by token count (one group per sample size, one run per
    seed). Each resample draws, within every size, as many runs as it has
    with replacement, and refits OLS log(PPL) on log(tokens) over all drawn
    runs. The interval therefore reflects seed-to-seed variation at the
    measured sizes only, not whether a straight line fits them; it needs at
    least 2 sizes and 2 runs at each. With few seeds a percentile bootstrap
    is too narrow; see the variance correction below, and
    ``bench/bootstrap_coverage.py`` for the coverage it reaches.
    """
    x = np.log(np.asarray(tokens, dtype=float))
    y = np.log(np.asarray(ppl, dtype=float))
    sizes = np.unique(x)
    groups = [np.flatnonzero(x == s) for s in sizes]
    base = {
        "method": "stratified bootstrap over seeds: runs resampled with replacement within each size (deviations "
        "from the size's mean inflated by sqrt(n/(n-1))), OLS refit, percentile interval",
        "runs": len(x),
        "sizes": len(sizes),
        "runs_per_size": [len(g) for g in groups],
        "resamples": resamples,
    }
    if len(sizes) < 2 or min(len(g) for g in groups) < 2:
        return base | {"error": "needs at least 2 sizes and 2 runs (seeds) at every size"}
    if not np.all(np.isfinite(y)):
        return base | {"error": "non-finite perplexity among the runs"}
    # Resampling n values with replacement shrinks their variance by (n-1)/n,
    # which at 3 seeds per size leaves a 95% interval covering about 83% of
    # the time (measured on synthetic data); deviations from each size's mean
    # are therefore inflated by sqrt(n/(n-1)) before resampling.
    y_adj = y.copy()
    for g in groups:
        mean = y[g].mean()
        y_adj[g] = mean + (y[g] - mean) * math.sqrt(len(g) / (len(g) - 1))
    rng = np.random.default_rng(seed)
    draws = np.concatenate([g[rng.integers(0, len(g), size=(resamples, len(g)))] for g in groups], axis=1)
    xs, ys = x[draws], y_adj[draws]
    xc = xs - xs.mean(axis=1, keepdims=True)
    slopes = (xc * (ys - ys.mean(axis=1, keepdims=True))).sum(axis=1) / (xc * xc).sum(axis=1)
    lo, hi = np.percentile(slopes, [2.5, 97.5])
    return base | {"alpha": _slope(x, y), "se": float(slopes.std(ddof=1)), "ci95": [float(lo), float(hi)]}


def sliding_alpha(tokens, ppl, window: int = 3) -> list[dict]:
    """OLS alpha over every run of ``window`` consecutive sizes (t-interval where defined)."""
    tokens = np.asarray(tokens, dtype=float)
    ppl = np.asarray(ppl, dtype=float)
    sizes = np.unique(tokens)
    out = []
    for i in range(len(sizes) - window + 1):
        lo, hi = sizes[i], sizes[i + window - 1]
        mask = (tokens >= lo) & (tokens <= hi)
        fit = fit_power_law(tokens[mask], ppl[mask], predict_at=())
        out.append(
            {"tokens": [int(lo), int(hi)], "runs": int(mask.sum()), "alpha": fit["alpha"], "ci95": fit["alpha_ci95"]}
        )
    return out


# ------------------------------------------------------------ curve shapes
def _profile_fit(d: np.ndarray, y: np.ndarray, basis: Callable[[np.ndarray, float], np.ndarray], grid: np.ndarray):
    """Least squares of y = floor + B * basis(d, theta): linear in (floor, B) for
    each theta on ``grid``; returns the best (floor, B, theta)."""
    best = None
    for theta in grid:
        design = np.column_stack([np.ones_like(d), basis(d, theta)])
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        rss = float(np.sum((y - design @ coef) ** 2))
        if best is None or rss < best[0]:
            best = (rss, float(coef[0]), float(coef[1]), float(theta))
    return best[1:]


def _power(d, beta):
    return d ** (-beta)


def _exp_decay(d, tau):
    return np.exp(-d / tau)


def fit_saturating(tokens, loss) -> dict:
    """Fit cross-entropy L = floor + B * T^-beta (T: train tokens) to the size means, with standard errors.

    Degrees of freedom: sizes - 3. ``identifiable`` is False (with the reason) when the floor's 95%
    interval includes 0 or is wider than ``FLOOR_WIDTH`` nats, or cannot be computed (no residual degree
    of freedom, or a singular fit): the points then do not pin the floor down.
    """
    d, y, _ = size_means(tokens, loss)
    if len(d) < 4:
        return {"error": f"needs at least 4 sizes (3 parameters and a residual degree of freedom), got {len(d)}"}
    if not np.all(np.isfinite(y)):
        return {"error": "non-finite loss among the runs"}
    scale = d.min()
    dd = d / scale
    e0, b0, beta0 = _profile_fit(dd, y, _power, np.geomspace(0.01, 5.0, 200))

    def model(x, e, b, beta):
        return e + b * x ** (-beta)

    p0 = (min(max(e0, 0.0), y.min()), max(b0, 1e-6), beta0)
    try:
        params, cov = optimize.curve_fit(
            model, dd, y, p0=p0, bounds=([0.0, 0.0, 0.0], [np.inf, np.inf, 5.0]), maxfev=20000
        )
    except (RuntimeError, ValueError) as err:
        return {"error": str(err)}
    e, b, beta = (float(p) for p in params)
    resid = y - model(dd, e, b, beta)
    dof = len(d) - 3
    se = np.sqrt(np.diag(cov)) if np.all(np.isfinite(cov)) else np.full(3, np.inf)
    t = stats.t.ppf(0.975, dof) if dof > 0 else math.inf
    floor_ci = [e - t * se[0], e + t * se[0]] if math.isfinite(t * se[0]) else None
    reasons = []
    if floor_ci is None:
        reasons.append("no interval (no residual degree of freedom)" if dof < 1 else "no interval (singular fit)")
    else:
        if floor_ci[0] <= 0:
            reasons.append("its 95% interval includes 0")
        if floor_ci[1] - floor_ci[0] > FLOOR_WIDTH:
            reasons.append(f"its 95% interval is wider than {FLOOR_WIDTH:g} nat")
    return {
        "floor": e,
        "B": b * scale**beta,  # in raw token units: L = floor + B * T^-beta
        "beta": beta,
        "floor_se": float(se[0]),
        "beta_se": float(se[2]),
        "floor_ci95": floor_ci,
        "beta_ci95": [beta - t * se[2], beta + t * se[2]] if math.isfinite(t * se[2]) else None,
        "rmse": float(np.sqrt(np.mean(resid**2))),
        "sizes": len(d),
        "dof": dof,
        "identifiable": not reasons,
        "why_not_identifiable": "; ".join(reasons) or None,
    }


SHAPES = {
    "power law": "L = a + b ln T (PPL = A T^alpha, the original's)",
    "power law + floor": "L = floor + B T^-beta",
    "exponential + floor": "L = floor + B exp(-T / tau)",
}


def _fit_shape(name: str, d: np.ndarray, y: np.ndarray):
    """Least-squares parameters of one shape and its predictor (T in raw train tokens)."""
    if name == "power law":
        b, a = np.polyfit(np.log(d), y, 1)
        return {"a": float(a), "alpha": float(b)}, lambda x: a + b * np.log(x)
    scale = d.max()
    dd = d / scale
    if name == "power law + floor":
        e, b, beta = _profile_fit(dd, y, _power, np.geomspace(1e-3, 5.0, 400))
        return {"floor": e, "B": b * scale**beta, "beta": beta}, lambda x: e + b * (x / scale) ** (-beta)
    e, b, tau = _profile_fit(dd, y, _exp_decay, np.geomspace(1e-3, 1e3, 400))
    return {"floor": e, "B": b, "tau": tau * scale}, lambda x: e + b * np.exp(-x / (tau * scale))


def compare_shapes(tokens, loss, predict_at: Sequence[int] = PREDICT_TOKENS) -> dict:
    """Fit every shape of ``SHAPES`` to the size means of cross-entropy by least squares; rank by AIC.

    Gaussian errors: AIC = n ln(RSS / n) + 2K with K = parameters + 1 (the
    noise variance); AICc adds 2K(K+1)/(n-K-1) and is used for the ranking
    when it is defined for every shape (n > K + 1), else AIC. Akaike weights
    exp(-delta/2), normalised. Predictions at ``predict_at`` are given per
    shape, with their spread (min-max PPL over shapes).
    """
    d, y, runs = size_means(tokens, loss)
    n = len(d)
    if n < 3:
        return {"error": f"needs at least 3 sizes, got {n}"}
    if not np.all(np.isfinite(y)):
        return {"error": "non-finite loss among the runs"}
    shapes = []
    for name, formula in SHAPES.items():
        params, predict = _fit_shape(name, d, y)
        k = len(params) + 1
        rss = max(float(np.sum((y - predict(d)) ** 2)), 1e-300)
        aic = n * math.log(rss / n) + 2 * k
        aicc = aic + 2 * k * (k + 1) / (n - k - 1) if n - k - 1 > 0 else None
        preds = [{"tokens": int(t), "ppl": _ppl(float(predict(np.array([t], dtype=float))[0]))} for t in predict_at]
        shapes.append(
            {
                "name": name,
                "formula": formula,
                "params": params,
                "k": k,
                "rss": rss,
                "aic": aic,
                "aicc": aicc,
                "predictions": preds,
            }
        )
    criterion = "aicc" if all(s["aicc"] is not None for s in shapes) else "aic"
    best = min(s[criterion] for s in shapes)
    weights = [math.exp(-(s[criterion] - best) / 2) for s in shapes]
    for s, w in zip(shapes, weights):
        s["delta"] = s[criterion] - best
        s["weight"] = w / sum(weights)
    spread = [
        {
            "tokens": int(t),
            "ppl_min": min(s["predictions"][i]["ppl"] for s in shapes),
            "ppl_max": max(s["predictions"][i]["ppl"] for s in shapes),
        }
        for i, t in enumerate(predict_at)
    ]
    return {
        "criterion": criterion,
        "sizes": n,
        "runs": int(runs.sum()),
        "best": min(shapes, key=lambda s: s[criterion])["name"],
        "shapes": shapes,
        "prediction_spread": spread,
    }


def _ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


def extrapolation_check(tokens, ppl) -> dict:
    """The honest test of an extrapolation: fit the power law without the largest size, predict it, compare.

    ``tokens``/``ppl``: one entry per run (seeds repeat sizes). Returns the
    prediction at the largest size (with its 95% band when there are more than
    2 smaller sizes), the measured mean PPL there, and the relative error
    (predicted / measured - 1).
    """
    tokens, ppl = np.asarray(tokens, dtype=float), np.asarray(ppl, dtype=float)
    largest = tokens.max()
    smaller = tokens < largest
    if len(np.unique(tokens[smaller])) < 2:
        raise ValueError("an extrapolation check needs at least 2 sizes below the largest")
    fit = fit_power_law(tokens[smaller], ppl[smaller], predict_at=(int(largest),))
    predicted = fit["predictions"][0]
    measured = float(np.exp(np.log(ppl[~smaller]).mean()))  # geometric mean over seeds, as the fit works in log PPL
    return {
        "fit_sizes": len(np.unique(tokens[smaller])),
        "alpha_without_largest": fit["alpha"],
        "tokens": int(largest),
        "predicted_ppl": predicted["ppl"],
        "predicted_ci95": predicted["ci95"],
        "measured_ppl": measured,
        "relative_error": predicted["ppl"] / measured - 1.0,
    }
