"""Admission at the edge: refuse work at once instead of letting it queue past its use.

Without it, overload is handled by whatever queue fills first (gRPC's, the event loop's,
a batcher's), and a caller learns of it only when its deadline passes. ``Admission`` is an
edge ``Interceptor`` that counts the inference calls a process holds *from arrival* (the
edge's first hook, before parsing, lookup or queueing) and a check, ``admit``, that domain
code calls once it knows the model version. ``admit`` refuses when:

1. the process holds more than ``max_in_flight`` inference calls (0: no bound);
2. the version already holds ``max_in_flight_per_version`` (0: no bound);
3. (``deadline_aware``) the request has less time left than the version's calls have
   recently taken here (a moving average of their durations, queueing included).

Queues sized in time — the wait from the requests ahead and the observed service time —
belong to each version's batcher on the worker (``services/worker/batching/queue_time.py``,
``max_queue_wait_s`` and the deadline check there): it knows its queue in rows, its batch
size and its batch time exactly. An estimate made here from calls would not: Little's law
gives the rate calls *arrived* at, not the capacity, so a burst after a quiet spell, or a
batching model whose concurrency admission itself keeps low, would be refused for a wait
that never comes. So a router refuses on 3. only, and its workers refuse on their exact
queues; a router retries a worker's refusal on another worker.

A refusal is ``Overloaded``: UNAVAILABLE, the code DESIGN §6 gives a full queue, because
it is retryable and means "this server, now" — a router tries another worker, a client
retries after a backoff. RESOURCE_EXHAUSTED stays what it is in DESIGN §5: a caller's own
rate limit, which retrying elsewhere does not help. The message starts with
``OVERLOAD_PREFIX`` so a router can tell a refusal (the worker is healthy, just full:
retry, do not eject) from a broken connection.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter

from services.common import edge
from services.common.errors import Unavailable

#: How every admission refusal's message starts (routers match on it; see is_overload).
OVERLOAD_PREFIX = "overloaded: "
#: Inference methods counted; health, metadata and statistics calls are never refused.
INFERENCE_METHODS = frozenset({"ModelInfer", "ModelStreamInfer"})
#: Weight of the newest completion in the moving averages.
EWMA_WEIGHT = 0.05
#: Completions a version needs before its expected wait is trusted for refusals.
MIN_SAMPLES = 20
_STATE_KEY = "admission"
#: Why a call was refused: the process bound, the version bound, or time (the deadline, or
#: a worker batcher's queue wait: queue_time.py counts under "wait" too).
REASONS = ("in_flight", "version", "wait")

REFUSED = Counter(
    "shunter_admission_refused",
    "Inference calls refused at admission with UNAVAILABLE, by service and reason.",
    ["service", "reason"],
)


class Overloaded(Unavailable):
    """Refused at admission: UNAVAILABLE, retry on another server or after a backoff."""

    def __init__(self, message: str) -> None:
        super().__init__(OVERLOAD_PREFIX + message)


def is_overload(message: str) -> bool:
    """Whether an UNAVAILABLE's message is an admission refusal (not a broken server)."""
    return message.startswith(OVERLOAD_PREFIX)


#: How a refusal for the request's own deadline (not for a full server) ends its message,
#: here and in a worker batcher's (queue_time.py): the router learns no cap from those.
DEADLINE_SUFFIX = "left of the request's deadline"


def is_deadline_refusal(message: str) -> bool:
    """Whether an admission refusal was for that request's short deadline, not a full server."""
    return message.endswith(DEADLINE_SUFFIX)


@dataclass(frozen=True, slots=True)
class AdmissionSettings:
    #: Inference calls one process holds at once, counted from arrival (0: no bound).
    max_in_flight: int = 0
    #: Inference calls one model version holds at once in this process (0: no bound).
    max_in_flight_per_version: int = 0
    #: Longest expected queue wait a call is admitted to (0: only its own deadline bounds
    #: it); applied by each version's batcher on a worker (queue_time.py).
    max_queue_wait_s: float = 0.0
    #: Refuse a call whose expected wait is longer than its remaining deadline.
    deadline_aware: bool = True

    def __post_init__(self) -> None:
        for name in ("max_in_flight", "max_in_flight_per_version"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (no bound) or more, got {getattr(self, name)}")
        if self.max_queue_wait_s < 0:
            raise ValueError(f"max_queue_wait_s must be 0 (no bound) or more, got {self.max_queue_wait_s}")


class VersionLoad:
    """One model version's calls in flight here, and how long its calls recently took."""

    __slots__ = ("in_flight", "samples", "service_s")

    def __init__(self) -> None:
        self.in_flight = 0
        self.samples = 0
        #: Moving average of completed calls' durations (seconds).
        self.service_s = 0.0

    def observe(self, seconds: float) -> None:
        if self.samples == 0:
            self.service_s = seconds
        else:
            self.service_s += EWMA_WEIGHT * (seconds - self.service_s)
        self.samples += 1

    def expected_s(self) -> float:
        """How long a call of the version takes here now (0 before MIN_SAMPLES completions)."""
        return self.service_s if self.samples >= MIN_SAMPLES else 0.0


class Admission(edge.Interceptor):
    """Counts inference calls from arrival (as an edge interceptor) and refuses in ``admit``."""

    def __init__(
        self,
        service: str,
        settings: AdmissionSettings | None = None,
        methods: frozenset[str] = INFERENCE_METHODS,
    ) -> None:
        self.settings = settings or AdmissionSettings()
        self._methods = methods
        #: Inference calls between the edge's begin and end hooks.
        self.in_flight = 0
        self.versions: dict[tuple[str, str], VersionLoad] = {}
        #: Refusals by reason, as the metric counts them.
        self.refused: dict[str, int] = dict.fromkeys(REASONS, 0)
        self._counters = {reason: REFUSED.labels(service, reason) for reason in REASONS}

    # -- the interceptor hooks ---------------------------------------------------------

    def begin(self, call: edge.RpcCall) -> None:
        if call.method in self._methods:
            self.in_flight += 1
            if call.state is None:
                call.state = {}
            call.state[_STATE_KEY] = None

    def end(self, call: edge.RpcCall) -> None:
        state = call.state
        if state is None or _STATE_KEY not in state:
            return
        self.in_flight -= 1
        load: VersionLoad | None = state.pop(_STATE_KEY)
        if load is not None:
            load.observe(call.seconds)
            load.in_flight -= 1

    # -- the check ---------------------------------------------------------------------

    def admit(self, model: str, version: str, remaining_s: float | None) -> None:
        """Admit the current call to ``model`` ``version`` or raise Overloaded at once.

        ``remaining_s`` is what is left of the call's deadline (None: it has none). An
        admitted call counts against its version until the edge ends it; a call the edge
        does not track (no ``begin`` for it) is checked but not counted.
        """
        settings = self.settings
        if settings.max_in_flight and self.in_flight > settings.max_in_flight:
            self._refuse("in_flight")
            raise Overloaded(f"this server holds {self.in_flight - 1} requests, its limit is {settings.max_in_flight}")
        load = self.versions.get((model, version))
        if load is None:
            load = self.versions[(model, version)] = VersionLoad()
        ahead = load.in_flight
        cap = settings.max_in_flight_per_version
        if cap and ahead >= cap:
            self._refuse("version")
            raise Overloaded(f"model '{model}' version {version} holds {ahead} requests, its limit is {cap}")
        if settings.deadline_aware and remaining_s is not None:
            expected = load.expected_s()
            if expected > remaining_s:
                self._refuse("wait")
                raise Overloaded(
                    f"model '{model}' version {version} takes {expected * 1000:.0f} ms here now, longer than "
                    f"the {max(remaining_s, 0) * 1000:.0f} ms {DEADLINE_SUFFIX}"
                )
        call = edge.CURRENT.get()
        if call is not None and call.state is not None and call.state.get(_STATE_KEY, 0) is None:
            # Counted only for a call the edge will end (and only once per call).
            load.in_flight += 1
            call.state[_STATE_KEY] = load

    def _refuse(self, reason: str) -> None:
        self.refused[reason] += 1
        self._counters[reason].inc()
