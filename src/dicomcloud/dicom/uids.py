"""UIDs and tenant ids, validated once at the edge and trusted inside.

A value that passes these checks can be joined into a filesystem path or a cache key:
digits and dots only for UIDs, a short lowercase slug for tenants.
"""

import re

from dicomcloud.errors import InvalidUID

UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
LENIENT_UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_UID_LENGTH = 64


def validate_uid(value: object, what: str = "UID") -> str:
    """Return the UID, or raise InvalidUID.

    Leading zeros in a component are tolerated (real modalities emit them), so this checks
    the lenient form; what matters for safety is digits and dots only, at most 64 characters.
    """
    if not isinstance(value, str):
        raise InvalidUID(f"{what} must be a string")
    uid = value.strip("\x00 ")
    if not uid or len(uid) > MAX_UID_LENGTH or not LENIENT_UID_PATTERN.fullmatch(uid):
        raise InvalidUID(f"invalid {what}: {value[:80]!r}")
    return uid


def validate_tenant(value: object) -> str:
    if not isinstance(value, str) or not TENANT_PATTERN.fullmatch(value):
        shown = value[:80] if isinstance(value, str) else type(value).__name__
        raise InvalidUID(f"invalid tenant id: {shown!r}")
    return value
