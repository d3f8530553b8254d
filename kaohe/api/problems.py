"""RFC 9457 problem details: every error of kaohe's API is `application/problem+json` with a
type, a title, the status, a detail that says what to do, and the field it is about."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

MEDIA_TYPE = "application/problem+json"
BASE = "https://kaohe.invalid/problems/"  # names the kind; not meant to be fetched


class Problem(Exception):
    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.kind, self.title, self.detail = status, kind, title, detail
        self.field, self.headers, self.extra = field, headers or {}, extra

    def body(self, instance: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": BASE + self.kind,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
        }
        if self.field is not None:
            body["field"] = self.field
        return {**body, **self.extra}


def unauthenticated(detail: str) -> Problem:
    return Problem(
        401,
        "unauthenticated",
        "Not authenticated",
        detail,
        headers={"WWW-Authenticate": 'Bearer realm="kaohe"'},
    )


def forbidden(detail: str, field: str | None = None) -> Problem:
    return Problem(403, "forbidden", "Not allowed", detail, field)


def invalid(detail: str, field: str | None) -> Problem:
    return Problem(422, "invalid-request", "Invalid request", detail, field)


def _field_of(detail: str) -> str | None:
    return detail.split(":", 1)[0] if ":" in detail.split(" ", 1)[0] else None


def rejected(detail: str, *, retryable: bool = False) -> Problem:
    """The unit refused the action (wrong stage, a rule, a duplicate...). `retryable` is the
    unit's word (workflows/payloads.rejection_error): false, the same request fails again."""
    return Problem(
        409,
        "action-rejected",
        "Rejected by the unit",
        detail,
        _field_of(detail),
        retryable=retryable,
    )


def unavailable(detail: str, retry_after: int = 30) -> Problem:
    """The unit could not store the action (its database unavailable): nothing changed, and
    the same request may succeed later."""
    return Problem(
        503,
        "storage-unavailable",
        "Storage unavailable",
        detail,
        _field_of(detail),
        headers={"Retry-After": str(retry_after)},
        retryable=True,
    )


def too_large(detail: str, limit: int) -> Problem:
    return Problem(
        413, "payload-too-large", "Request body too large", detail, "(body)", limit=limit
    )


def not_found(detail: str) -> Problem:
    return Problem(404, "not-found", "Not found", detail)


def _response(problem: Problem, request: Request) -> JSONResponse:
    return JSONResponse(
        problem.body(request.url.path),
        status_code=problem.status,
        media_type=MEDIA_TYPE,
        headers=problem.headers,
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return _response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        field = ".".join(loc) or None
        detail = f"{field or '(request)'}: {first.get('msg', 'invalid')}"
        return _response(invalid(detail, field), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        problem = Problem(exc.status_code, "http", str(exc.detail), str(exc.detail))
        return _response(problem, request)
