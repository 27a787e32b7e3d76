"""One small error hierarchy; each error knows its HTTP status, its DIMSE status and its reason.

Services translate these in exactly one place each (the web app's exception handler,
the SCP's C-STORE handler), so a new failure mode needs a new class here and nowhere else.
The reason (`message`) is written once, where the failure is found (a truncated file is described
by dicom/parse.py); each face only formats it: STOW-RS in a `Warning` header and the failed
instance's Error Comment, C-STORE in the response's Error Comment (0000,0902).
"""

import re

# Anything outside printable ASCII: DICOM's default repertoire for a status text, and an HTTP header's safe set.
_NOT_PRINTABLE = re.compile(r"[^\x20-\x7e]+")


class DicomCloudError(Exception):
    """Base of every error the archive raises on purpose."""

    http_status = 500
    dimse_status = 0xC000  # Failure: cannot understand
    failure_reason = 0x0110  # PS3.18 STOW FailureReason: processing failure

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def reason(self) -> str:
        """The message in printable ASCII, for a status text a person reads on the other side."""
        return _NOT_PRINTABLE.sub("?", self.message).strip()


class InvalidInput(DicomCloudError):
    """The request or object is malformed: bad UID, truncated file, unparsable query."""

    http_status = 400
    dimse_status = 0xC000
    failure_reason = 0xC000


class InvalidUID(InvalidInput):
    """A UID or tenant id that does not match its strict pattern; it never reaches a path."""


class IdentifierMismatch(InvalidInput):
    """A C-FIND/C-GET/C-MOVE identifier that does not fit its information model or level."""

    dimse_status = 0xA900  # Failure: Identifier does not match SOP Class


class NotFound(DicomCloudError):
    http_status = 404


class Conflict(DicomCloudError):
    """The object cannot be stored as sent: study UID mismatch, duplicate rejected by policy."""

    http_status = 409
    dimse_status = 0xA900
    failure_reason = 0xA900


class DuplicateInstance(Conflict):
    """A different object with an already stored SOP Instance UID, under the `reject` policy."""

    dimse_status = 0x0111
    failure_reason = 0x0111


class OperationRefused(DicomCloudError):
    """An operation the requestor is not allowed to perform (a DIMSE peer's entry does not list it)."""

    http_status = 403
    dimse_status = 0x0124  # Refused: Not Authorized
    failure_reason = 0x0124


class UnsupportedMediaType(DicomCloudError):
    http_status = 415


class NotAcceptable(DicomCloudError):
    """None of the representations the client accepts can be served."""

    http_status = 406


class CannotConvert(DicomCloudError):
    """The stored pixels cannot be given in the form asked for: no encoder, lossy pixels asked to be
    lossless, pixels that do not decode, frames that cannot be told apart."""

    http_status = 406


class PayloadTooLarge(DicomCloudError):
    http_status = 413


class StorageFailure(DicomCloudError):
    """The file could not be made durable, or the bus did not accept its event."""

    http_status = 503
    dimse_status = 0xA700  # Refused: out of resources
    failure_reason = 0xA700


class ShuttingDown(DicomCloudError):
    """A request that arrived after the service began to stop: nothing was done, so sending it again later is safe."""

    http_status = 503
    dimse_status = 0xA700  # Refused: out of resources (the status a sender retries)
    failure_reason = 0xA700


class AuthError(DicomCloudError):
    """A request without the right to what it asked; `challenge` is its `WWW-Authenticate` header."""

    def __init__(self, message: str, challenge: str) -> None:
        super().__init__(message)
        self.challenge = challenge


class Unauthenticated(AuthError):
    """No bearer token, or one that does not verify."""

    http_status = 401


class Forbidden(AuthError):
    """A valid token without the scope, role or tenant the request needs."""

    http_status = 403


class ServiceUnavailable(DicomCloudError):
    """A service the request depends on (the token issuer) cannot be reached."""

    http_status = 503
