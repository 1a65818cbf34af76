"""``shunter bench``: a ghz-like load generator for the Open Inference Protocol.

Closed loop (fixed concurrency) and open loop (Poisson arrivals at a rate), spread over
several client processes so the client is not the bottleneck; results merge exactly.
"""

from services.bench.runner import BenchError, BenchOptions, default_processes, run_bench
from services.bench.stats import format_table

__all__ = ["BenchError", "BenchOptions", "default_processes", "format_table", "run_bench"]
