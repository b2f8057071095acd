"""Reports built from the records: the comparison table (``table``)."""
