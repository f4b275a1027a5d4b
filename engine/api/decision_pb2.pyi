import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Effect(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EFFECT_UNSPECIFIED: _ClassVar[Effect]
    EFFECT_ALLOW: _ClassVar[Effect]
    EFFECT_DENY: _ClassVar[Effect]
    EFFECT_REVIEW: _ClassVar[Effect]
EFFECT_UNSPECIFIED: Effect
EFFECT_ALLOW: Effect
EFFECT_DENY: Effect
EFFECT_REVIEW: Effect

class DecideRequest(_message.Message):
    __slots__ = ("input",)
    INPUT_FIELD_NUMBER: _ClassVar[int]
    input: _struct_pb2.Struct
    def __init__(self, input: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class DecideResponse(_message.Message):
    __slots__ = ("decision",)
    DECISION_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    def __init__(self, decision: _Optional[_Union[Decision, _Mapping]] = ...) -> None: ...

class DecideStreamRequest(_message.Message):
    __slots__ = ("correlation_id", "input")
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    correlation_id: str
    input: _struct_pb2.Struct
    def __init__(self, correlation_id: _Optional[str] = ..., input: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class DecideStreamResponse(_message.Message):
    __slots__ = ("correlation_id", "decision", "error")
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    correlation_id: str
    decision: Decision
    error: Error
    def __init__(self, correlation_id: _Optional[str] = ..., decision: _Optional[_Union[Decision, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class Reason(_message.Message):
    __slots__ = ("policy", "message", "effect", "approvers", "window", "rows")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    EFFECT_FIELD_NUMBER: _ClassVar[int]
    APPROVERS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    policy: str
    message: str
    effect: Effect
    approvers: _containers.RepeatedScalarFieldContainer[str]
    window: str
    rows: int
    def __init__(self, policy: _Optional[str] = ..., message: _Optional[str] = ..., effect: _Optional[_Union[Effect, str]] = ..., approvers: _Optional[_Iterable[str]] = ..., window: _Optional[str] = ..., rows: _Optional[int] = ...) -> None: ...

class Mask(_message.Message):
    __slots__ = ("column", "method", "policy")
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    column: str
    method: str
    policy: str
    def __init__(self, column: _Optional[str] = ..., method: _Optional[str] = ..., policy: _Optional[str] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("decision_id", "effect", "reasons", "masks", "policy_revision", "eval_time", "command", "cached")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    EFFECT_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    MASKS_FIELD_NUMBER: _ClassVar[int]
    POLICY_REVISION_FIELD_NUMBER: _ClassVar[int]
    EVAL_TIME_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    effect: Effect
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    masks: _containers.RepeatedCompositeFieldContainer[Mask]
    policy_revision: str
    eval_time: _duration_pb2.Duration
    command: _struct_pb2.Struct
    cached: bool
    def __init__(self, decision_id: _Optional[str] = ..., effect: _Optional[_Union[Effect, str]] = ..., reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ..., masks: _Optional[_Iterable[_Union[Mask, _Mapping]]] = ..., policy_revision: _Optional[str] = ..., eval_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., command: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., cached: _Optional[bool] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServiceStatus(_message.Message):
    __slots__ = ("policy_revision", "last_activation", "last_reload_errors", "last_reload_error_time", "reloads", "reload_failures")
    POLICY_REVISION_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    LAST_RELOAD_ERRORS_FIELD_NUMBER: _ClassVar[int]
    LAST_RELOAD_ERROR_TIME_FIELD_NUMBER: _ClassVar[int]
    RELOADS_FIELD_NUMBER: _ClassVar[int]
    RELOAD_FAILURES_FIELD_NUMBER: _ClassVar[int]
    policy_revision: str
    last_activation: float
    last_reload_errors: _containers.RepeatedScalarFieldContainer[str]
    last_reload_error_time: float
    reloads: int
    reload_failures: int
    def __init__(self, policy_revision: _Optional[str] = ..., last_activation: _Optional[float] = ..., last_reload_errors: _Optional[_Iterable[str]] = ..., last_reload_error_time: _Optional[float] = ..., reloads: _Optional[int] = ..., reload_failures: _Optional[int] = ...) -> None: ...
