"""Experiments on top of training runs: sweeps over sizes and seeds, grids, fits, reports."""
