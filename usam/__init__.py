"""USAM Lab: experiment orchestration and reproducibility for spacetime autoregressive video models."""

__version__ = "0.1.0"
