from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AuthorizeRequest(_message.Message):
    __slots__ = ("event_json", "aws_request_id", "function_name", "function_version", "invoked_function_arn", "memory_limit_in_mb", "log_group_name", "log_stream_name", "timeout_ms")
    EVENT_JSON_FIELD_NUMBER: _ClassVar[int]
    AWS_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_NAME_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_VERSION_FIELD_NUMBER: _ClassVar[int]
    INVOKED_FUNCTION_ARN_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_IN_MB_FIELD_NUMBER: _ClassVar[int]
    LOG_GROUP_NAME_FIELD_NUMBER: _ClassVar[int]
    LOG_STREAM_NAME_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    event_json: str
    aws_request_id: str
    function_name: str
    function_version: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    log_group_name: str
    log_stream_name: str
    timeout_ms: int
    def __init__(self, event_json: _Optional[str] = ..., aws_request_id: _Optional[str] = ..., function_name: _Optional[str] = ..., function_version: _Optional[str] = ..., invoked_function_arn: _Optional[str] = ..., memory_limit_in_mb: _Optional[int] = ..., log_group_name: _Optional[str] = ..., log_stream_name: _Optional[str] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class AuthorizeResponse(_message.Message):
    __slots__ = ("response_json", "error")
    RESPONSE_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    response_json: str
    error: HandlerError
    def __init__(self, response_json: _Optional[str] = ..., error: _Optional[_Union[HandlerError, _Mapping]] = ...) -> None: ...

class HandlerError(_message.Message):
    __slots__ = ("kind", "exception_type")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[HandlerError.Kind]
        UNAUTHORIZED: _ClassVar[HandlerError.Kind]
        HANDLER_ERROR: _ClassVar[HandlerError.Kind]
        TIMEOUT: _ClassVar[HandlerError.Kind]
        MALFORMED: _ClassVar[HandlerError.Kind]
        OVERLOADED: _ClassVar[HandlerError.Kind]
    KIND_UNSPECIFIED: HandlerError.Kind
    UNAUTHORIZED: HandlerError.Kind
    HANDLER_ERROR: HandlerError.Kind
    TIMEOUT: HandlerError.Kind
    MALFORMED: HandlerError.Kind
    OVERLOADED: HandlerError.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    EXCEPTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    kind: HandlerError.Kind
    exception_type: str
    def __init__(self, kind: _Optional[_Union[HandlerError.Kind, str]] = ..., exception_type: _Optional[str] = ...) -> None: ...
