"""Sweeps and ablations on Ray Tune + Optuna: validated specs (``spec``), the runner, result tables and the
statistics of ablation grids (``stats``).

May import: every layer up to report.
"""
