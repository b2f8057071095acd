"""Reports built from the records: the comparison table (``table``) and the paper report (``paper``).

May import: every layer up to repro.
"""
