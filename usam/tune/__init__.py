"""Sweeps and ablations: validated specs (``spec``) and the statistics of ablation grids (``stats``)."""
