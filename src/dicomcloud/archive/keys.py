"""Where the archive keeps its objects: one storage key layout for every adapter (a path under the
filesystem root, an object key under the bucket).

Everything of a series lives under `<TenantID>/<StudyUID>/<SeriesUID>/` (the user's layout):
- `<SOPUID>.dcm`                      the original, as received (never modified);
- `<SOPUID>_<TransferSyntaxUID>.dcm`  a derived copy in another transfer syntax (`_` never occurs in a UID);
- `<SOPUID>.json`                     the instance's metadata entry: its DICOM JSON and frame index, as
                                      ingest learnt them (dicom/seriesdoc.py `InstanceEntry`);
- `series.json`                       the series metadata document, all entries in one object.
Every id is validated before it becomes part of a key, so no key can leave its series' folder.
"""

from __future__ import annotations

from dicomcloud.dicom.uids import validate_tenant, validate_uid
from dicomcloud.ports.index import SeriesKey

ORIGINAL_SUFFIX = ".dcm"
ENTRY_SUFFIX = ".json"
DERIVED_SEPARATOR = "_"
SERIES_DOCUMENT = "series.json"


def series_prefix(tenant_id: str, study_uid: str, series_uid: str) -> str:
    tenant = validate_tenant(tenant_id)
    study = validate_uid(study_uid, "StudyInstanceUID")
    series = validate_uid(series_uid, "SeriesInstanceUID")
    return f"{tenant}/{study}/{series}/"


def original_key(tenant_id: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """The key of an instance as received: `<TenantID>/<StudyUID>/<SeriesUID>/<SOPUID>.dcm`."""
    sop = validate_uid(sop_uid, "SOPInstanceUID")
    return f"{series_prefix(tenant_id, study_uid, series_uid)}{sop}{ORIGINAL_SUFFIX}"


def _stem(original: str) -> str:
    if not original.endswith(ORIGINAL_SUFFIX) or DERIVED_SEPARATOR in original.rpartition("/")[2]:
        raise ValueError(f"not the key of an original: {original[:200]!r}")
    return original.removesuffix(ORIGINAL_SUFFIX)


def derived_key(original: str, transfer_syntax: str) -> str:
    """The key of the copy of `original` in `transfer_syntax`."""
    syntax = validate_uid(transfer_syntax, "TransferSyntaxUID")
    return f"{_stem(original)}{DERIVED_SEPARATOR}{syntax}{ORIGINAL_SUFFIX}"


def derived_prefix(original: str) -> str:
    """What every derived copy of `original` starts with (to list them)."""
    return _stem(original) + DERIVED_SEPARATOR


def copy_prefix_of(key: str) -> str | None:
    """The `derived_prefix` a derived copy's key starts with; None for any other key."""
    folder, _, name = key.rpartition("/")
    stem, separator, _ = name.partition(DERIVED_SEPARATOR)
    return f"{folder}/{stem}{separator}" if separator else None


def entry_key(original: str) -> str:
    """The key of the metadata entry ingest wrote for `original`."""
    return _stem(original) + ENTRY_SUFFIX


def document_key(key: SeriesKey) -> str:
    """The key of a series' metadata document."""
    return series_prefix(key.tenant_id, key.study_instance_uid, key.series_instance_uid) + SERIES_DOCUMENT
