"""Reproducibility: ``audit`` (checks of one recorded run), ``replicate`` (replay it from its commit and compare),
``kit`` (a self-contained archive to rebuild it elsewhere) and the environment lock.

May import: every layer up to eval.
"""
