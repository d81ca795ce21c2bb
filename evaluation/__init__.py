"""Evaluation suite that reproduces the paper's tables, grouped by concern: ``data`` (test sets),
``metrics``, ``tasks`` (the evaluations), ``benchmarks`` (latency and speed) and ``reports``
(tables). It depends on the library only; run its scripts from the repository root, e.g.
``python -m evaluation.tasks.eval_super_resolution --help``."""
