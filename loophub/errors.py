"""Errors a user can hit. Each says what was wrong and what to do; the API service
maps ``status`` onto the HTTP response, the CLI onto a message and exit code 2."""

from __future__ import annotations


class LoophubError(Exception):
    status = 400

    def __init__(self, message: str, *, detail: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def to_dict(self) -> dict:
        return {"error": self.message, "detail": self.detail}


class InvalidInput(LoophubError):
    status = 400


class Unauthenticated(LoophubError):
    status = 401


class PermissionDenied(LoophubError):
    status = 403


class NotFound(LoophubError):
    status = 404


class Conflict(LoophubError):
    status = 409


class TooLarge(LoophubError):
    status = 413


class Unavailable(LoophubError):
    """The platform did not answer (restarting, or down); trying again later may work."""

    status = 503
