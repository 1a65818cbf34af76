"""Model monitoring (issue 13 §3–4): output metrics in the worker, input drift per version.

A shared library like services/common (it imports only that and the generated protos):

- ``features``  which numbers of a request are drift features, and how to pull them out;
- ``profile``   a version's reference profile (fixed quantile bins plus reference counts);
- ``stats``     PSI, Jensen-Shannon and a binned KS between two binned distributions;
- ``windows``   cluster-wide window counts in Redis and ``drift_score`` (the rollout gate);
- ``outputs``   per-batch model-output metrics (class counts, confidence, norms, NaN/Inf);
- ``observer``  the worker's monitor thread: batches in, metrics and window counts out;
- ``service``   the ``shunter.monitor.v1.Monitor`` gRPC service the registry serves.
"""
