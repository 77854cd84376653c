"""How often do alpha's intervals cover the true alpha? (synthetic sweeps)

Draws many synthetic sweeps of a known power law PPL = A * tokens^alpha with
log-normal seed noise, at the quick preset's four sizes (or --sizes), and
counts how often the 95% OLS t-interval and the 95% stratified bootstrap
interval (``cvfp.experiments.fits.bootstrap_alpha``) contain the true alpha.

    python bench/bootstrap_coverage.py [--seeds 2,3,5] [--repeats 400] [--noise 0.05]
"""

from __future__ import annotations

import argparse

import numpy as np

from cvfp.experiments.fits import bootstrap_alpha, fit_power_law


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
    print("| runs per size | t-interval coverage | bootstrap coverage | mean bootstrap width | mean t width |")
    print("|---:|---:|---:|---:|---:|")
    for seeds in (int(s) for s in args.seeds.split(",")):
        cover_t = cover_b = 0
        width_t, width_b = [], []
        for rep in range(args.repeats):
            rng = np.random.default_rng(rep)
            tokens = np.repeat(sizes, seeds)
            ppl = 4e5 * tokens**args.alpha * np.exp(rng.normal(0, args.noise, size=tokens.shape))
            lo, hi = fit_power_law(tokens, ppl, predict_at=())["alpha_ci95"]
            cover_t += lo < args.alpha < hi
            width_t.append(hi - lo)
            lo, hi = bootstrap_alpha(tokens, ppl, resamples=2000, seed=rep)["ci95"]
            cover_b += lo < args.alpha < hi
            width_b.append(hi - lo)
        print(f"| {seeds} | {cover_t / args.repeats:.1%} | {cover_b / args.repeats:.1%} | "
              f"{np.mean(width_b):.3f} | {np.mean(width_t):.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
