from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeatureBins(_message.Message):
    __slots__ = ("name", "edges", "counts")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    edges: _containers.RepeatedScalarFieldContainer[float]
    counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., edges: _Optional[_Iterable[float]] = ..., counts: _Optional[_Iterable[int]] = ...) -> None: ...

class ReferenceProfile(_message.Message):
    __slots__ = ("model", "version", "features", "rows", "profile_id", "created_at_ms", "source", "bins", "creator")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    BINS_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    features: _containers.RepeatedCompositeFieldContainer[FeatureBins]
    rows: int
    profile_id: str
    created_at_ms: int
    source: str
    bins: int
    creator: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., features: _Optional[_Iterable[_Union[FeatureBins, _Mapping]]] = ..., rows: _Optional[int] = ..., profile_id: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., source: _Optional[str] = ..., bins: _Optional[int] = ..., creator: _Optional[str] = ...) -> None: ...

class SetReferenceProfileRequest(_message.Message):
    __slots__ = ("profile",)
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    profile: ReferenceProfile
    def __init__(self, profile: _Optional[_Union[ReferenceProfile, _Mapping]] = ...) -> None: ...

class GetReferenceProfileRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class DriftCounts(_message.Message):
    __slots__ = ("model", "version", "profile_id", "window", "window_s", "rows", "bins_per_feature", "counts")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    BINS_PER_FEATURE_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    profile_id: str
    window: int
    window_s: float
    rows: int
    bins_per_feature: int
    counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., profile_id: _Optional[str] = ..., window: _Optional[int] = ..., window_s: _Optional[float] = ..., rows: _Optional[int] = ..., bins_per_feature: _Optional[int] = ..., counts: _Optional[_Iterable[int]] = ...) -> None: ...

class ReportDriftCountsResponse(_message.Message):
    __slots__ = ("profile_id",)
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    profile_id: str
    def __init__(self, profile_id: _Optional[str] = ...) -> None: ...

class GetDriftRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class Thresholds(_message.Message):
    __slots__ = ("warn", "drift")
    WARN_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    warn: float
    drift: float
    def __init__(self, warn: _Optional[float] = ..., drift: _Optional[float] = ...) -> None: ...

class FeatureScore(_message.Message):
    __slots__ = ("feature", "psi", "js", "ks", "level")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    PSI_FIELD_NUMBER: _ClassVar[int]
    JS_FIELD_NUMBER: _ClassVar[int]
    KS_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    feature: str
    psi: float
    js: float
    ks: float
    level: str
    def __init__(self, feature: _Optional[str] = ..., psi: _Optional[float] = ..., js: _Optional[float] = ..., ks: _Optional[float] = ..., level: _Optional[str] = ...) -> None: ...

class VersionDrift(_message.Message):
    __slots__ = ("model", "version", "profile_id", "window", "window_s", "rows", "scored", "note", "method", "thresholds", "features", "window_end_ms")
    class ThresholdsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Thresholds
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Thresholds, _Mapping]] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PROFILE_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    SCORED_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_MS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    profile_id: str
    window: int
    window_s: float
    rows: int
    scored: bool
    note: str
    method: str
    thresholds: _containers.MessageMap[str, Thresholds]
    features: _containers.RepeatedCompositeFieldContainer[FeatureScore]
    window_end_ms: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., profile_id: _Optional[str] = ..., window: _Optional[int] = ..., window_s: _Optional[float] = ..., rows: _Optional[int] = ..., scored: _Optional[bool] = ..., note: _Optional[str] = ..., method: _Optional[str] = ..., thresholds: _Optional[_Mapping[str, Thresholds]] = ..., features: _Optional[_Iterable[_Union[FeatureScore, _Mapping]]] = ..., window_end_ms: _Optional[int] = ...) -> None: ...

class GetDriftResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[VersionDrift]
    def __init__(self, versions: _Optional[_Iterable[_Union[VersionDrift, _Mapping]]] = ...) -> None: ...
