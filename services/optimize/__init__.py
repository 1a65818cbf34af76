"""Model optimisation toolkit behind ``shunter optimize``.

Build candidates from one registered version (quantised, pruned, distilled, compiled),
measure each the way a worker runs it (size, batch-1 latency, best-batch rows/s, accuracy,
agreement with the original), judge them against an accuracy budget, report, and
optionally register the winner as a ``staged`` version.

Modules, one job each: ``source`` (the original version), ``evalset`` (eval inputs and
labels), ``lift`` (torch artifact -> editable module), ``techniques/`` (one module per
family), ``measure`` (numbers), ``verdict`` (accept / reject / winner rule), ``report``
(table, report.md, PNG), ``register`` (the staged version), ``runner`` (the order).
"""
