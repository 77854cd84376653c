"""How often do alpha's intervals cover the true alpha, with lack of fit present? (synthetic sweeps)

Real sweeps leave the straight line by more than seeds disagree (docs/sweeps/quick-seeds-cpu, log test PPL: the
seeds' squared deviations sum to 0.00043, the size means' residuals to 0.0020). This draws synthetic sweeps at the quick preset's four sizes (or
--sizes) with two sources of error in log PPL:

- lack of fit: each size's mean leaves the line by u_i ~ N(0, --lack-of-fit), drawn afresh per sweep (where a
  real curve bends is not known in advance); the target is the line's alpha;
- seed noise: each run leaves its size's mean by e_ij ~ N(0, --noise).

and a *bending* scenario: the truth is PPL = 250 + 4e6 * T^-1.2 (no line at all) with seed noise only, whose
target is the slope of the best line through the true curve at the measured sizes.

Intervals (``cvfp.experiments.fits``): the t-interval on the size means (what cvfp reports, sizes - 2 degrees
of freedom), the t-interval over every run (what cvfp reported before: runs - 2 degrees of freedom, seeds
counted as independent points), and the seed bootstrap (``bootstrap_alpha_seeds``, reported as the seed spread).

    python bench/bootstrap_coverage.py [--seeds 1,3] [--repeats 400] [--lack-of-fit 0.1] [--noise 0.005]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats

from cvfp.experiments.fits import bootstrap_alpha_seeds, fit_power_law


def runs_t_interval(tokens: np.ndarray, ppl: np.ndarray) -> list[float]:
    """The interval that counts every run as a point (the old fit), for comparison only."""
    res = stats.linregress(np.log(tokens), np.log(ppl))
    t = stats.t.ppf(0.975, len(tokens) - 2)
    return [res.slope - t * res.stderr, res.slope + t * res.stderr]


INTERVALS = {
    "t-interval on size means (cvfp)": lambda t, p, rep: fit_power_law(t, p, predict_at=())["alpha_ci95"],
    "t-interval over runs (before)": lambda t, p, rep: runs_t_interval(t, p),
    "seed bootstrap (seed spread)": lambda t, p, rep: bootstrap_alpha_seeds(t, p, resamples=1000, seed=rep).get("ci95"),
}


def sweep(scenario: str, sizes: np.ndarray, seeds: int, args, rng) -> tuple[np.ndarray, np.ndarray, float]:
    """(tokens, ppl) of one synthetic sweep, and the alpha its intervals should cover."""
    tokens = np.repeat(sizes, seeds)
    noise = rng.normal(0, args.noise, size=tokens.shape)
    if scenario == "line + lack of fit":
        bend = np.repeat(rng.normal(0, args.lack_of_fit, size=len(sizes)), seeds)
        return tokens, 4e5 * tokens**args.alpha * np.exp(bend + noise), args.alpha
    truth = 250 + 4e6 * sizes**-1.2
    target = stats.linregress(np.log(sizes), np.log(truth)).slope
    return tokens, np.repeat(truth, seeds) * np.exp(noise), target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,3", help="runs per size to try (comma-separated)")
    parser.add_argument("--sizes", default="3391,4923,11407,26044", help="train tokens of the sizes")
    parser.add_argument("--repeats", type=int, default=400, help="synthetic sweeps per setting")
    parser.add_argument("--lack-of-fit", type=float, default=0.1, help="std of each size's departure from the line")
    parser.add_argument("--noise", type=float, default=0.005, help="std of log PPL between seeds")
    parser.add_argument("--alpha", type=float, default=-0.7, help="true alpha of the line")
    args = parser.parse_args()
    sizes = np.array([float(s) for s in args.sizes.split(",")])
    print(f"{len(sizes)} sizes, lack of fit {args.lack_of_fit} and seed noise {args.noise} (std of log PPL), "
          f"{args.repeats} sweeps per row")  # fmt: skip
    print("| scenario | runs per size | interval | coverage | mean width |")
    print("|---|---:|---|---:|---:|")
    for scenario in ("line + lack of fit", "bending curve, seed noise only"):
        for seeds in (int(s) for s in args.seeds.split(",")):
            covered = {name: 0 for name in INTERVALS}
            widths = {name: [] for name in INTERVALS}
            for rep in range(args.repeats):
                tokens, ppl, target = sweep(scenario, sizes, seeds, args, np.random.default_rng(rep))
                for name, interval in INTERVALS.items():
                    ci = interval(tokens, ppl, rep)
                    if ci is not None:  # the seed bootstrap needs 2 seeds
                        covered[name] += ci[0] < target < ci[1]
                        widths[name].append(ci[1] - ci[0])
            for name in INTERVALS:
                if widths[name]:
                    print(f"| {scenario} | {seeds} | {name} | {covered[name] / len(widths[name]):.1%} | "
                          f"{np.mean(widths[name]):.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
