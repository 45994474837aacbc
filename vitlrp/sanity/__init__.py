"""Sanity checks: does a map depend on what it claims to explain (the class, the model's parameters), and does it
stay put under input noise the model ignores? One concept per module:

- ``similarity``     the measures between two maps of one image
- ``draws``          the classes compared (every other class, or the runner-up and seeded others), noisy copies
- ``randomization``  randomizing a model's parameters: cascades top down, bottom up, one part alone
- ``runner``         every check on one batch: per-image rows and the maps of the figures
- ``mprt``           eMPRT's entropy and sMPRT's noise-smoothed maps
- ``datarand``       the data randomization test: the real model's maps against a random-label model's
- ``verdicts``       summaries, the pass/fail verdicts and their thresholds, the console's tables

A new check is a function of ``runner`` that returns rows (its ``test`` and ``step`` named in
:func:`vitlrp.sanity.verdicts.comparisons`); a new verdict is an entry of :data:`vitlrp.sanity.verdicts.CHECKS`.
"""
