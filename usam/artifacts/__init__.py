"""The files training leaves behind, and how they come back: where each artifact lives (``layout``), weights
checked by sha256 before torch reads them (``weights``), the tokenizer and evaluators rebuilt from them
(``loaders``), and sampled codes turned back into pixels (``sampling``).

May import: errors, paths, seeding, files, config, data, models. Everything that trains or evaluates sits above.
"""
