"""Offline evaluation: every method (the model and the baselines) is a *ranker* that scores the catalog for a
batch of buyer histories; the served scoring function (:mod:`twotower.scoring`) turns those scores into the
top-k lists, so every method competes under the configuration the service uses.

- ``metrics``: torchmetrics retrieval metrics and the exact chunked top-k.
- ``rankers`` / ``knn``: the ``Ranker`` protocol, ``ModelRanker`` and the baselines.
- ``queries``: a split's queries as ranker batches plus the scoring function's history input.
- ``tuning``: choose ranker and scoring settings on the validation split (small grids).
- ``report``: metrics of ranked lists overall and per slice, text tables.

The Hydra entry point is ``python -m twotower.evaluate``.
"""
