"""HTTP errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, and the one mapping from
the package's exceptions to status codes: the client's fault (a `RequestError`, bad audio, a bad policy
choice) is 400, anything unexpected 500 (its text is not sent: it may hold internals)."""

from __future__ import annotations

from typing import Any

from guardrail.errors import AudioInputError, GuardrailError, RequestError

__all__ = ["ApiError", "Cancelled", "error_body", "from_exception"]

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
    499: "cancelled",
    504: "timeout",
}


class ApiError(Exception):
    """An error answer: HTTP `status`, OpenAI's `type` (from the status unless given), `code` and `param`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    @property
    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.code, self.param)


class Cancelled(ApiError):
    """A request dropped before it generated: its client left (499, nginx's "client closed request")."""

    def __init__(self) -> None:
        super().__init__(499, "the request was cancelled: its client went away", code="cancelled")


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": TYPES.get(status, "server_error"), "param": param, "code": code}}


def from_exception(exc: BaseException) -> ApiError:
    """The answer for an exception raised while serving a request."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, (RequestError, AudioInputError)):
        code = "invalid_audio" if isinstance(exc, AudioInputError) else "invalid_request"
        return ApiError(400, str(exc), code=code)
    if isinstance(exc, GuardrailError):
        return ApiError(500, f"the guard failed: {type(exc).__name__}: {exc}", code="guard_error")
    return ApiError(500, f"internal error ({type(exc).__name__}); the server log has the details", code="internal")
