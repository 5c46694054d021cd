"""Command-line applications built on the library (``ood-det-score``: :mod:`ood_det.apps.score`)."""
