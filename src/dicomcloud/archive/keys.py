"""Where the archive keeps its objects: one storage key layout for every adapter (a path under the
filesystem root, an object key under the bucket).

The default layout (`uids`, the user's): everything of a series lives under `<TenantID>/<StudyUID>/<SeriesUID>/`:
- `<SOPUID>.dcm`                      the original, as received (never modified);
- `<SOPUID>_<TransferSyntaxUID>.dcm`  a derived copy in another transfer syntax (`_` never occurs in a UID);
- `<SOPUID>.json`                     the instance's metadata entry: its DICOM JSON and frame index, as
                                      ingest learnt them (dicom/seriesdoc.py `InstanceEntry`);
- `series.json`                       the series metadata document, all entries in one object.

The `hashed` layout, for object stores that partition by key prefix: fixed-length SeaHash names (16 hex digits
of each UID's 64-bit SeaHash) grouped by study date, `<TenantID>/<YYYY>/<MM>/<DD>/<h(Study)>/<h(Series)>/
<h(SOP)>.dcm` (`undated` for a study without a valid StudyDate), copies and entries beside it as above, and the
series document at `<TenantID>/series/<h(Study)>/<h(Series)>.json`. Keys stay short and even whatever the UIDs'
lengths and roots; a collision needs two UIDs of one series (or one date) sharing a 64-bit hash.

The index names each instance's key, so reads never recompute one; the layout decides only where new objects
go. It is one per archive, recorded in storage at first use (`LAYOUT_MARKER`, `settled_layout`): a later change
of the setting is refused at start rather than scattering one archive over two layouts.
Every id is validated before it becomes part of a key, so no key can leave its series' folder.
"""

from __future__ import annotations

import enum
import json
import re

import seahash

from dicomcloud.dicom.uids import validate_tenant, validate_uid
from dicomcloud.errors import InvalidInput, StorageFailure
from dicomcloud.ports.index import SeriesKey
from dicomcloud.ports.storage import ObjectMissing, Storage

ORIGINAL_SUFFIX = ".dcm"
ENTRY_SUFFIX = ".json"
DERIVED_SEPARATOR = "_"
SERIES_DOCUMENT = "series.json"
# Beside a series document (either layout): its metadata response, ready to send.
METADATA_SUFFIX = ".metadata.json"


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


# -- the layout setting ----------------------------------------------------------------------------

# Where the layout of an archive is recorded: a key no tenant id can begin (tenant ids have no dot).
LAYOUT_MARKER = "dicomcloud-layout.json"
UNDATED = "undated"
_STUDY_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")


class KeyLayout(enum.Enum):
    """Where new originals and series documents go (`storage.key_layout`)."""

    UIDS = "uids"
    HASHED = "hashed"

    def original_key(self, tenant_id: str, study_uid: str, series_uid: str, sop_uid: str, study_date: str) -> str:
        """The key of an instance as received; `study_date` (DICOM DA) groups the hashed layout's keys."""
        if self is KeyLayout.UIDS:
            return original_key(tenant_id, study_uid, series_uid, sop_uid)
        tenant = validate_tenant(tenant_id)
        sop = uid_hash(validate_uid(sop_uid, "SOPInstanceUID"))
        return f"{tenant}/{date_folders(study_date)}/{self._series_part(study_uid, series_uid)}/{sop}{ORIGINAL_SUFFIX}"

    def document_key(self, key: SeriesKey) -> str:
        """The key of a series' metadata document."""
        if self is KeyLayout.UIDS:
            return document_key(key)
        tenant = validate_tenant(key.tenant_id)
        return f"{tenant}/series/{self._series_part(key.study_instance_uid, key.series_instance_uid)}.json"

    def metadata_key(self, key: SeriesKey) -> str:
        """The key of a series' metadata response as stored beside its document (SeriesDocument.stored_metadata):
        a first request after a start sends it without parsing the document. No SOP Instance UID can name it."""
        return self.document_key(key).removesuffix(".json") + METADATA_SUFFIX

    @staticmethod
    def _series_part(study_uid: str, series_uid: str) -> str:
        study = validate_uid(study_uid, "StudyInstanceUID")
        series = validate_uid(series_uid, "SeriesInstanceUID")
        return f"{uid_hash(study)}/{uid_hash(series)}"


def uid_hash(uid: str) -> str:
    """A UID's 64-bit SeaHash as 16 hex digits."""
    return f"{seahash.hash(uid.encode('ascii')):016x}"


def date_folders(study_date: str) -> str:
    """`YYYY/MM/DD` of a DICOM date, `undated` for anything else (empty, a range, a malformed value)."""
    found = _STUDY_DATE.fullmatch(study_date.strip()) if isinstance(study_date, str) else None
    if found is None or not ("01" <= found.group(2) <= "12" and "01" <= found.group(3) <= "31"):
        return UNDATED
    return "/".join(found.groups())


def settled_layout(storage: Storage, wanted: str) -> KeyLayout:
    """The archive's layout: the one recorded in its storage, which must be the setting's; recorded now when
    none is (a new archive, or one from before the setting existed, whose objects are all in the default layout:
    it may only keep that one). Raises StorageFailure, with what to do, when the setting disagrees."""
    try:
        layout = KeyLayout(wanted)
    except ValueError:
        raise InvalidInput(f"unknown storage.key_layout {wanted!r}: one of {[k.value for k in KeyLayout]}") from None
    try:
        recorded = json.loads(storage.read(LAYOUT_MARKER))["key_layout"]
    except ObjectMissing:
        recorded = None
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageFailure(f"the storage's {LAYOUT_MARKER} is damaged ({exc}); restore it") from None
    if recorded is None:
        if layout is not KeyLayout.UIDS and any(key != LAYOUT_MARKER for key in storage.list("")):
            recorded = KeyLayout.UIDS.value  # objects from before the layout was recorded
        else:
            storage.write(LAYOUT_MARKER, json.dumps({"key_layout": layout.value}).encode())
            return layout
    if recorded != layout.value:
        raise StorageFailure(
            f"this archive's storage keeps its objects in the {recorded!r} key layout (recorded in "
            f"{LAYOUT_MARKER}), but storage.key_layout is {layout.value!r}: set storage.key_layout = "
            f"{recorded!r} (env: DICOMCLOUD_STORAGE__KEY_LAYOUT={recorded}); one archive has one layout"
        )
    return layout
