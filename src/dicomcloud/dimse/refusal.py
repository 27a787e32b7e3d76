"""A refused DIMSE request's response status, saying why: the error's status, and its reason as Error
Comment (0000,0902) cut to the 64 characters its VR (LO) holds; the log line keeps the whole text.
C-STORE, C-FIND, C-GET and C-MOVE responses all have the field (PS3.7 C.4)."""

from __future__ import annotations

from pydicom.dataset import Dataset

from dicomcloud.errors import DicomCloudError

ERROR_COMMENT_LENGTH = 64


def refusal(exc: DicomCloudError) -> Dataset:
    """A failure response's status fields: the error's status and its reason as Error Comment."""
    status = Dataset()
    status.Status = exc.dimse_status
    reason = exc.reason
    if len(reason) > ERROR_COMMENT_LENGTH:
        reason = reason[: ERROR_COMMENT_LENGTH - 3].rsplit(" ", 1)[0] + "..."
    status.ErrorComment = reason
    return status
