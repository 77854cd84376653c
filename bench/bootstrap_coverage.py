"""How often do alpha's intervals cover the true alpha? (synthetic sweeps)

Draws many synthetic sweeps of a known power law PPL = A * tokens^alpha with
log-normal seed noise, at the quick preset's four sizes (or --sizes), and
counts how often the 95% OLS t-interval and the two 95% bootstrap intervals
(``cvfp.experiments.fits``: ``bootstrap_alpha`` over runs, seeds and sizes;
``bootstrap_alpha_seeds`` over seeds within each size) contain the true alpha.

    python bench/bootstrap_coverage.py [--seeds 2,3,5] [--repeats 400] [--noise 0.05]
"""

from __future__ import annotations

import argparse

import numpy as np

from cvfp.experiments.fits import bootstrap_alpha, bootstrap_alpha_seeds, fit_power_law


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="2,3,5", help="runs per size to try (comma-separated)")
    parser.add_argument("--sizes", default="3391,4923,11407,26044", help="train tokens of the sizes")
    parser.add_argument("--repeats", type=int, default=400, help="synthetic sweeps per setting")
    parser.add_argument("--noise", type=float, default=0.05, help="std of log PPL between seeds")
    parser.add_argument("--alpha", type=float, default=-0.7, help="true alpha")
    args = parser.parse_args()
    sizes = np.array([float(s) for s in args.sizes.split(",")])
    print(f"true alpha {args.alpha}, {len(sizes)} sizes, seed noise {args.noise} in log PPL, {args.repeats} sweeps")
    print("| runs per size | interval | coverage | mean width |")
    print("|---:|---|---:|---:|")
    intervals = {
        "t-interval": lambda t, p, rep: fit_power_law(t, p, predict_at=())["alpha_ci95"],
        "bootstrap over runs": lambda t, p, rep: bootstrap_alpha(t, p, resamples=2000, seed=rep)["ci95"],
        "bootstrap over seeds": lambda t, p, rep: bootstrap_alpha_seeds(t, p, resamples=2000, seed=rep)["ci95"],
    }
    for seeds in (int(s) for s in args.seeds.split(",")):
        covered = {name: 0 for name in intervals}
        widths = {name: [] for name in intervals}
        for rep in range(args.repeats):
            rng = np.random.default_rng(rep)
            tokens = np.repeat(sizes, seeds)
            ppl = 4e5 * tokens**args.alpha * np.exp(rng.normal(0, args.noise, size=tokens.shape))
            for name, interval in intervals.items():
                lo, hi = interval(tokens, ppl, rep)
                covered[name] += lo < args.alpha < hi
                widths[name].append(hi - lo)
        for name in intervals:
            print(f"| {seeds} | {name} | {covered[name] / args.repeats:.1%} | {np.mean(widths[name]):.3f} |")


if __name__ == "__main__":
    main()
