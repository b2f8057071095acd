"""Evaluation: the metrics of the comparison table (fidelity, temporal, cost), generators of every family
behind one interface, and scoring of trained evaluators and tokenizers.

May import: every layer up to train.
"""
