"""Sanity checks: does a map depend on what it claims to explain (the class, the model's parameters), and does it
stay put under input noise the model ignores? One concept per module:

- ``similarity``     the measures between two maps of one image
- ``draws``          the classes compared (runner-up, a seeded random other class) and seeded noisy copies
- ``randomization``  cascading top-down randomization of a model's parameters
- ``runner``         every check on one batch: per-image rows and the maps of the figures
- ``verdicts``       summaries, the pass/fail verdicts and their thresholds, the console's tables

A new check is a function of ``runner`` that returns rows (its ``test`` and ``step`` named in
:func:`vitlrp.sanity.verdicts.comparisons`); a new verdict is an entry of :data:`vitlrp.sanity.verdicts.CHECKS`.
"""
