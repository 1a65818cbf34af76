from google.protobuf import struct_pb2 as _struct_pb2
from services.gen.shunter.registry.v1 import registry_pb2 as _registry_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RolloutState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLLOUT_STATE_UNSPECIFIED: _ClassVar[RolloutState]
    RUNNING: _ClassVar[RolloutState]
    PAUSED: _ClassVar[RolloutState]
    PROMOTED: _ClassVar[RolloutState]
    ROLLED_BACK: _ClassVar[RolloutState]
    ABORTED: _ClassVar[RolloutState]
ROLLOUT_STATE_UNSPECIFIED: RolloutState
RUNNING: RolloutState
PAUSED: RolloutState
PROMOTED: RolloutState
ROLLED_BACK: RolloutState
ABORTED: RolloutState

class Gates(_message.Message):
    __slots__ = ("max_error_rate_increase", "max_p99_ratio", "max_drift", "min_requests", "failure_limit", "consecutive_failure_limit", "max_inconclusive")
    MAX_ERROR_RATE_INCREASE_FIELD_NUMBER: _ClassVar[int]
    MAX_P99_RATIO_FIELD_NUMBER: _ClassVar[int]
    MAX_DRIFT_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MAX_INCONCLUSIVE_FIELD_NUMBER: _ClassVar[int]
    max_error_rate_increase: float
    max_p99_ratio: float
    max_drift: float
    min_requests: int
    failure_limit: int
    consecutive_failure_limit: int
    max_inconclusive: int
    def __init__(self, max_error_rate_increase: _Optional[float] = ..., max_p99_ratio: _Optional[float] = ..., max_drift: _Optional[float] = ..., min_requests: _Optional[int] = ..., failure_limit: _Optional[int] = ..., consecutive_failure_limit: _Optional[int] = ..., max_inconclusive: _Optional[int] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("model", "version", "baseline", "steps", "step", "interval_s", "gates", "state", "failures", "consecutive_failures", "inconclusive", "revision", "fence", "started_by", "started_at_ms", "updated_at_ms", "window_start_ms", "next_judgement_at_ms", "reason", "finished_at_ms", "retire_at_ms", "retired")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    INCONCLUSIVE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    STARTED_BY_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_MS_FIELD_NUMBER: _ClassVar[int]
    NEXT_JUDGEMENT_AT_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    RETIRE_AT_MS_FIELD_NUMBER: _ClassVar[int]
    RETIRED_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    baseline: str
    steps: _containers.RepeatedScalarFieldContainer[int]
    step: int
    interval_s: float
    gates: Gates
    state: RolloutState
    failures: int
    consecutive_failures: int
    inconclusive: int
    revision: int
    fence: int
    started_by: str
    started_at_ms: int
    updated_at_ms: int
    window_start_ms: int
    next_judgement_at_ms: int
    reason: str
    finished_at_ms: int
    retire_at_ms: int
    retired: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., baseline: _Optional[str] = ..., steps: _Optional[_Iterable[int]] = ..., step: _Optional[int] = ..., interval_s: _Optional[float] = ..., gates: _Optional[_Union[Gates, _Mapping]] = ..., state: _Optional[_Union[RolloutState, str]] = ..., failures: _Optional[int] = ..., consecutive_failures: _Optional[int] = ..., inconclusive: _Optional[int] = ..., revision: _Optional[int] = ..., fence: _Optional[int] = ..., started_by: _Optional[str] = ..., started_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ..., window_start_ms: _Optional[int] = ..., next_judgement_at_ms: _Optional[int] = ..., reason: _Optional[str] = ..., finished_at_ms: _Optional[int] = ..., retire_at_ms: _Optional[int] = ..., retired: _Optional[bool] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("model", "version", "baseline", "at_ms", "step", "weight", "verdict", "outcome", "reasons", "window_start_ms", "window_end_ms", "evidence", "gates", "rollout_revision", "fence", "actor")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_MS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_MS_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_REVISION_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    baseline: str
    at_ms: int
    step: int
    weight: int
    verdict: str
    outcome: str
    reasons: _containers.RepeatedScalarFieldContainer[str]
    window_start_ms: int
    window_end_ms: int
    evidence: _struct_pb2.Struct
    gates: Gates
    rollout_revision: int
    fence: int
    actor: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., baseline: _Optional[str] = ..., at_ms: _Optional[int] = ..., step: _Optional[int] = ..., weight: _Optional[int] = ..., verdict: _Optional[str] = ..., outcome: _Optional[str] = ..., reasons: _Optional[_Iterable[str]] = ..., window_start_ms: _Optional[int] = ..., window_end_ms: _Optional[int] = ..., evidence: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., gates: _Optional[_Union[Gates, _Mapping]] = ..., rollout_revision: _Optional[int] = ..., fence: _Optional[int] = ..., actor: _Optional[str] = ...) -> None: ...

class PolicyChange(_message.Message):
    __slots__ = ("model", "at_ms", "who", "action", "before", "after", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    WHO_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    at_ms: int
    who: str
    action: str
    before: _registry_pb2.TrafficPolicy
    after: _registry_pb2.TrafficPolicy
    reason: str
    def __init__(self, model: _Optional[str] = ..., at_ms: _Optional[int] = ..., who: _Optional[str] = ..., action: _Optional[str] = ..., before: _Optional[_Union[_registry_pb2.TrafficPolicy, _Mapping]] = ..., after: _Optional[_Union[_registry_pb2.TrafficPolicy, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class ModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class StartRolloutRequest(_message.Message):
    __slots__ = ("model", "version", "baseline", "steps", "interval_s", "gates")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    baseline: str
    steps: _containers.RepeatedScalarFieldContainer[int]
    interval_s: float
    gates: Gates
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., baseline: _Optional[str] = ..., steps: _Optional[_Iterable[int]] = ..., interval_s: _Optional[float] = ..., gates: _Optional[_Union[Gates, _Mapping]] = ...) -> None: ...

class RolloutHistoryResponse(_message.Message):
    __slots__ = ("decisions",)
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[Decision]
    def __init__(self, decisions: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ...) -> None: ...

class SwitchTrafficRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class TrafficHistoryResponse(_message.Message):
    __slots__ = ("changes",)
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[PolicyChange]
    def __init__(self, changes: _Optional[_Iterable[_Union[PolicyChange, _Mapping]]] = ...) -> None: ...

class ExperimentReportRequest(_message.Message):
    __slots__ = ("model", "since_s")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SINCE_S_FIELD_NUMBER: _ClassVar[int]
    model: str
    since_s: float
    def __init__(self, model: _Optional[str] = ..., since_s: _Optional[float] = ...) -> None: ...

class VariantStats(_message.Message):
    __slots__ = ("version", "weight", "requests", "errors", "error_rate", "p50_ms", "p95_ms", "p99_ms")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    version: str
    weight: int
    requests: int
    errors: int
    error_rate: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    def __init__(self, version: _Optional[str] = ..., weight: _Optional[int] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., error_rate: _Optional[float] = ..., p50_ms: _Optional[float] = ..., p95_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ...) -> None: ...

class Comparison(_message.Message):
    __slots__ = ("metric", "variant", "against", "test", "statistic", "pvalue", "significant", "statement", "more_requests_needed")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    AGAINST_FIELD_NUMBER: _ClassVar[int]
    TEST_FIELD_NUMBER: _ClassVar[int]
    STATISTIC_FIELD_NUMBER: _ClassVar[int]
    PVALUE_FIELD_NUMBER: _ClassVar[int]
    SIGNIFICANT_FIELD_NUMBER: _ClassVar[int]
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    MORE_REQUESTS_NEEDED_FIELD_NUMBER: _ClassVar[int]
    metric: str
    variant: str
    against: str
    test: str
    statistic: float
    pvalue: float
    significant: bool
    statement: str
    more_requests_needed: int
    def __init__(self, metric: _Optional[str] = ..., variant: _Optional[str] = ..., against: _Optional[str] = ..., test: _Optional[str] = ..., statistic: _Optional[float] = ..., pvalue: _Optional[float] = ..., significant: _Optional[bool] = ..., statement: _Optional[str] = ..., more_requests_needed: _Optional[int] = ...) -> None: ...

class ExperimentReportResponse(_message.Message):
    __slots__ = ("model", "window_start_ms", "window_end_ms", "control", "variants", "comparisons")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_MS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_MS_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    COMPARISONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    window_start_ms: int
    window_end_ms: int
    control: str
    variants: _containers.RepeatedCompositeFieldContainer[VariantStats]
    comparisons: _containers.RepeatedCompositeFieldContainer[Comparison]
    def __init__(self, model: _Optional[str] = ..., window_start_ms: _Optional[int] = ..., window_end_ms: _Optional[int] = ..., control: _Optional[str] = ..., variants: _Optional[_Iterable[_Union[VariantStats, _Mapping]]] = ..., comparisons: _Optional[_Iterable[_Union[Comparison, _Mapping]]] = ...) -> None: ...

class DiffBucket(_message.Message):
    __slots__ = ("upper", "count")
    UPPER_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    upper: float
    count: int
    def __init__(self, upper: _Optional[float] = ..., count: _Optional[int] = ...) -> None: ...

class ShadowVersionReport(_message.Message):
    __slots__ = ("version", "compared", "agree", "errors", "agreement", "agreement_low", "agreement_high", "argmax_rows", "argmax_flips", "flip_rate", "flip_rate_high", "max_abs_diff", "shadow_p50_ms", "shadow_p99_ms", "primary_p50_ms", "primary_p99_ms", "samples")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    COMPARED_FIELD_NUMBER: _ClassVar[int]
    AGREE_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_LOW_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_HIGH_FIELD_NUMBER: _ClassVar[int]
    ARGMAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    ARGMAX_FLIPS_FIELD_NUMBER: _ClassVar[int]
    FLIP_RATE_FIELD_NUMBER: _ClassVar[int]
    FLIP_RATE_HIGH_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    SHADOW_P50_MS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_P99_MS_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    version: str
    compared: int
    agree: int
    errors: int
    agreement: float
    agreement_low: float
    agreement_high: float
    argmax_rows: int
    argmax_flips: int
    flip_rate: float
    flip_rate_high: float
    max_abs_diff: _containers.RepeatedCompositeFieldContainer[DiffBucket]
    shadow_p50_ms: float
    shadow_p99_ms: float
    primary_p50_ms: float
    primary_p99_ms: float
    samples: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    def __init__(self, version: _Optional[str] = ..., compared: _Optional[int] = ..., agree: _Optional[int] = ..., errors: _Optional[int] = ..., agreement: _Optional[float] = ..., agreement_low: _Optional[float] = ..., agreement_high: _Optional[float] = ..., argmax_rows: _Optional[int] = ..., argmax_flips: _Optional[int] = ..., flip_rate: _Optional[float] = ..., flip_rate_high: _Optional[float] = ..., max_abs_diff: _Optional[_Iterable[_Union[DiffBucket, _Mapping]]] = ..., shadow_p50_ms: _Optional[float] = ..., shadow_p99_ms: _Optional[float] = ..., primary_p50_ms: _Optional[float] = ..., primary_p99_ms: _Optional[float] = ..., samples: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ...) -> None: ...

class ShadowReportResponse(_message.Message):
    __slots__ = ("model", "window_start_ms", "window_end_ms", "shadow_version", "versions")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_MS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_MS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    window_start_ms: int
    window_end_ms: int
    shadow_version: str
    versions: _containers.RepeatedCompositeFieldContainer[ShadowVersionReport]
    def __init__(self, model: _Optional[str] = ..., window_start_ms: _Optional[int] = ..., window_end_ms: _Optional[int] = ..., shadow_version: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[ShadowVersionReport, _Mapping]]] = ...) -> None: ...
