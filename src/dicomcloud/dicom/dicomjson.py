"""DICOM JSON (PS3.18 Annex F): datasets and index rows to JSON, and back.

Choices where Annex F leaves room:
- A binary value is a BulkDataURI when its length in bytes exceeds `threshold` and a URI
  builder is given; encapsulated Pixel Data always is. Deferred values are never loaded for that.
- The bulk data tag path names an attribute by the tags on the way down and the 0-based index
  of the item in each sequence's "Value" array: "7FE00010" at top level,
  "00540016/0/00181072" inside the first item of (0054,0016). `tag_path` builds it,
  `parse_tag_path` reads it, `bulk_value` resolves it in a dataset.
- IS/DS values are JSON numbers; a value that is not a valid number keeps its text as a JSON
  string, which F.2.3 allows "to preserve the original format". SV/UV beyond 2**53 are strings too.
- FL/FD NaN and infinities, which JSON numbers cannot hold, are the strings "NaN", "Infinity"
  and "-Infinity" (the convention of fo-dicom and Azure's DICOM service).
- An empty value among several is null (F.2.5); an empty attribute has just "vr".
- InlineBinary is little endian: OW/OF/OL/OD/OV values of a big endian dataset are swapped.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, BinaryIO, Final

import numpy as np
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import AMBIGUOUS_VR

from dicomcloud.errors import InvalidInput, NotFound

BulkDataURIFor = Callable[[str], str]
TagPath = list[tuple[int, int | None]]

_CHARSET: Final = 0x00080005
_PIXEL_DATA: Final = 0x7FE00010
_TRAILING_PADDING: Final = 0xFFFCFFFC
_UNDEFINED: Final = 0xFFFFFFFF
_BINARY_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# Elements up to this many value bytes have their DICOM JSON remembered (see `_attribute_of`), this many of them.
_MEMO_LENGTH: Final = 256
_MEMO_SIZE: Final = 16_384
# Byte-swap unit of binary VRs whose words a big endian dataset stores big endian.
_WORD_SIZE: Final = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_INT_VRS: Final = frozenset({"US", "SS", "UL", "SL"})
_BIG_INT_VRS: Final = frozenset({"SV", "UV"})
_FLOAT_VRS: Final = frozenset({"FL", "FD"})
_DECIMAL_VRS: Final = frozenset({"IS", "DS"})
_PN_GROUPS: Final = ("Alphabetic", "Ideographic", "Phonetic")
_JSON_SAFE_INT: Final = 2**53
_NON_FINITE: Final = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

_INTEGER_TEXT: Final = re.compile(r"[+-]?[0-9]+")
_DECIMAL_TEXT: Final = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_TAG_TEXT: Final = re.compile(r"[0-9A-Fa-f]{8}")
_INDEX_TEXT: Final = re.compile(r"0|[1-9][0-9]{0,8}")


def tag_path(steps: Iterable[tuple[int, int | None]]) -> str:
    """The path "00540016/0/00181072" from [(0x00540016, 0), (0x00181072, None)]."""
    parts: list[str] = []
    for tag, index in steps:
        parts.append(f"{tag:08X}")
        if index is not None:
            parts.append(str(index))
    return "/".join(parts)


def parse_tag_path(path: str) -> TagPath:
    """The steps of a bulk data tag path; each but the last carries the item index it enters."""
    parts = path.split("/")
    if len(parts) % 2 == 0:
        raise InvalidInput(f"invalid bulk data path: {path[:80]!r}")
    steps: TagPath = []
    for position in range(0, len(parts), 2):
        tag_text = parts[position]
        index_text = parts[position + 1] if position + 1 < len(parts) else None
        if not _TAG_TEXT.fullmatch(tag_text) or (index_text is not None and not _INDEX_TEXT.fullmatch(index_text)):
            raise InvalidInput(f"invalid bulk data path: {path[:80]!r}")
        steps.append((int(tag_text, 16), None if index_text is None else int(index_text)))
    return steps


def _resolve_vr(vr: str, value: Any) -> str:
    """One VR out of pydicom's unresolved "US or SS or OW" kind: binary if the value is bytes."""
    if " or " not in vr:
        return vr
    options = vr.split(" or ")
    binary = isinstance(value, bytes | bytearray)
    return next((option for option in options if (option in _BINARY_VRS) == binary), options[0])


def _decimal(vr: str, value: Any) -> Any:
    """IS/DS as a JSON number, from its text when it has one; text that is no number stays text."""
    if value is None or value == "":
        return None
    text = getattr(value, "original_string", None)
    number: int | float
    if text is None and isinstance(value, int | float):
        number = int(value) if isinstance(value, int) else float(value)
    else:
        text = str(value if text is None else text).strip()
        if _INTEGER_TEXT.fullmatch(text):
            return int(text)
        if not _DECIMAL_TEXT.fullmatch(text):
            return text
        number = float(text)
    if isinstance(number, float):
        if not math.isfinite(number):
            return str(number) if text is None else text
        if vr == "IS" and number.is_integer():
            return int(number)
    return number


def _float(vr: str, value: Any) -> Any:
    if value is None or value == "":
        return None
    number = float(value)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    # The shortest text that reads back as the same 32-bit float, not its float64 expansion.
    return float(str(np.float32(number))) if vr == "FL" else number


def _big_int(value: Any) -> Any:
    if value is None or value == "":
        return None
    number = int(value)
    return number if -_JSON_SAFE_INT <= number <= _JSON_SAFE_INT else str(number)


def _person_name(value: Any) -> dict[str, str] | None:
    groups = str(value).split("=")
    name = {key: group for key, group in zip(_PN_GROUPS, groups, strict=False) if group}
    return name or None


def _tag_value(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return f"{int(value):08X}"


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _int(value: Any) -> int | None:
    return None if value is None or value == "" else int(value)


# Value converters of the VRs that need one; any other VR's values are text.
_CONVERTERS: Final[dict[str, Callable[[Any], Any]]] = {
    **{vr: functools.partial(_decimal, vr) for vr in _DECIMAL_VRS},
    **{vr: functools.partial(_float, vr) for vr in _FLOAT_VRS},
    **dict.fromkeys(_INT_VRS, _int),
    **dict.fromkeys(_BIG_INT_VRS, _big_int),
    "PN": _person_name,
    "AT": _tag_value,
}


_SCALARS: Final = (str, int, float)
# VRs whose values are JSON strings as they are.
_TEXT_VRS: Final = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})


def _values(vr: str, value: Any) -> list[Any]:
    """The "Value" array of a non-binary, non-sequence attribute; [] when empty."""
    if value is None or value == "":
        return []
    convert: Callable[[Any], Any] = _CONVERTERS.get(vr, _text)
    if type(value) in _SCALARS:  # the common case (index rows) first, without the ABC checks below
        return [convert(value)]
    items = list(value) if isinstance(value, list | tuple | MultiValue) else [value]
    return [convert(item) for item in items]


def _attribute(vr: str, values: list[Any]) -> dict[str, Any]:
    return {"vr": vr, "Value": values} if values else {"vr": vr}


def _little_endian_bytes(vr: str, value: bytes, little: bool) -> bytes:
    size = _WORD_SIZE.get(vr)
    if little or size is None or len(value) % size:
        return value
    return np.frombuffer(value, dtype=f">u{size}").astype(f"<u{size}").tobytes()


class _Encoder:
    def __init__(self, bulkdata_uri: BulkDataURIFor | None, threshold: int) -> None:
        self.bulkdata_uri = bulkdata_uri
        self.threshold = threshold

    def dataset(self, ds: Dataset, path: tuple[tuple[int, int | None], ...]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for tag in sorted(ds.keys()):
            if not tag & 0xFFFF or tag >> 16 == 0x0002 or tag == _TRAILING_PADDING:
                continue
            out[f"{tag:08X}"] = self.element(ds, int(tag), path)
        return out

    def element(self, ds: Dataset, tag: int, path: tuple[tuple[int, int | None], ...]) -> dict[str, Any]:
        raw = ds.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement) and _context_free(raw):
            charset = ds.original_character_set
            encodings = (charset,) if isinstance(charset, str) else tuple(charset)
            return _attribute_of(int(raw.tag), raw.VR, raw.value, raw.is_little_endian, encodings)
        little = raw.is_little_endian if isinstance(raw, RawDataElement) else True
        if (
            self.bulkdata_uri is not None
            and isinstance(raw, RawDataElement)
            and raw.value is None
            and raw.length > self.threshold
        ):
            vr = _deferred_vr(ds, raw)
            if vr in _BINARY_VRS:
                return {"vr": vr, "BulkDataURI": self.bulkdata_uri(tag_path((*path, (tag, None))))}
        elem = _convert(ds, tag, raw)
        vr = _resolve_vr(elem.VR, elem.value)
        if vr == "SQ":
            items = [self.dataset(item, (*path, (tag, index))) for index, item in enumerate(elem.value)]
            return _attribute(vr, items)
        if vr in _BINARY_VRS:
            return self.binary(vr, elem, tag, path, little)
        return _attribute(vr, _values(vr, elem.value))

    def binary(
        self, vr: str, elem: DataElement, tag: int, path: tuple[tuple[int, int | None], ...], little: bool
    ) -> dict[str, Any]:
        value = elem.value
        if not value:
            return {"vr": vr}
        encapsulated = tag == _PIXEL_DATA and elem.is_undefined_length
        if self.bulkdata_uri is not None and (encapsulated or len(value) > self.threshold):
            return {"vr": vr, "BulkDataURI": self.bulkdata_uri(tag_path((*path, (tag, None))))}
        return {"vr": vr, "InlineBinary": base64.b64encode(_little_endian_bytes(vr, value, little)).decode()}


def _context_free(raw: RawDataElement) -> bool:
    """A small, read, public, non-binary element whose VR does not depend on other elements: its DICOM JSON
    follows from its bytes, endianness and character set alone."""
    if raw.value is None or raw.length > _MEMO_LENGTH or (raw.tag >> 16) & 1 or raw.tag == _CHARSET:
        return False
    vr = raw.VR
    if vr is None:
        try:
            vr = dictionary_VR(raw.tag)
        except KeyError:
            return False
    return vr not in _BINARY_VRS and vr != "SQ" and vr not in AMBIGUOUS_VR


@functools.lru_cache(maxsize=_MEMO_SIZE)
def _attribute_of(tag: int, vr: str | None, value: bytes, little: bool, encodings: tuple[str, ...]) -> dict[str, Any]:
    """The DICOM JSON attribute of a context-free element. The headers of a series' instances repeat
    (patient, study, series, equipment), so most of a series' attributes are decoded once and looked up
    after that. The attribute is shared: never mutated."""
    raw = RawDataElement(BaseTag(tag), vr, len(value), value, 0, vr is None, little)
    elem = convert_raw_data_element(raw, encoding=list(encodings))
    resolved = _resolve_vr(elem.VR, elem.value)
    return _attribute(resolved, _values(resolved, elem.value))


def _convert(ds: Dataset, tag: int, raw: DataElement | RawDataElement) -> DataElement:
    """The element with its value decoded, without Dataset.__getitem__'s cost where that is safe.

    `ds[tag]` also fixes ambiguous VRs and passes Pixel Representation down into sequences,
    so those elements take that path; the rest are decoded directly and not cached.
    """
    charset = ds.original_character_set
    if isinstance(raw, RawDataElement) and raw.value is not None and charset and tag != _CHARSET:
        elem = convert_raw_data_element(raw, encoding=charset, ds=ds)
        if elem.VR != "SQ" and elem.VR not in AMBIGUOUS_VR:
            return elem
    return ds[tag]


def _deferred_vr(ds: Dataset, raw: RawDataElement) -> str:
    """The VR of a value still on disk, found without reading it."""
    vr = raw.VR
    if vr is None:
        try:
            vr = dictionary_VR(raw.tag)
        except KeyError:
            return "UN"
    if vr == "OB or OW":
        bits = ds.get("BitsAllocated")
        return "OW" if raw.is_implicit_VR or (bits is not None and bits > 8) else "OB"
    return str(vr)


def dataset_to_json(ds: Dataset, bulkdata_uri: BulkDataURIFor | None = None, threshold: int = 1024) -> dict[str, Any]:
    """The DICOM JSON Model object of `ds` (file meta and group lengths left out)."""
    return _Encoder(bulkdata_uri, threshold).dataset(ds, ())


@functools.lru_cache(maxsize=4096)
def _keyword_entry(keyword: str) -> tuple[str, str]:
    """The tag ("00100010") and dictionary VR of a keyword, looked up once per process."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise InvalidInput(f"unknown DICOM keyword: {keyword[:80]!r}")
    return f"{tag:08X}", dictionary_VR(tag)


def _keyword_attribute(vr: str, value: Any) -> dict[str, Any]:
    """One attribute from a Python value; `vr` may still be pydicom's "US or SS" kind."""
    if value is None or value == "":
        return {"vr": vr if " or " not in vr else _resolve_vr(vr, value)}
    if type(value) is str and vr in _TEXT_VRS:
        return {"vr": vr, "Value": [value]}  # the most common case, without the general path
    vr = _resolve_vr(vr, value)
    if vr == "SQ":
        return _attribute(vr, [keyword_values_to_json(item) for item in value])
    if vr in _BINARY_VRS:
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode()}
    return _attribute(vr, _values(vr, value))


class KeywordEncoder:
    """`keyword_values_to_json` for many rows with the same keywords (QIDO results): the
    dictionary look-ups and the tag order are worked out once, not per row."""

    def __init__(self, keywords: Iterable[str]) -> None:
        entries = [(keyword, *_keyword_entry(keyword)) for keyword in dict.fromkeys(keywords)]
        # Eight upper-case hex digits sort as the tags' numbers do.
        self._entries = sorted(entries, key=lambda entry: entry[1])

    def __call__(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The row's DICOM JSON; keywords the row lacks are left out."""
        return {tag: _keyword_attribute(vr, values[keyword]) for keyword, tag, vr in self._entries if keyword in values}


def keyword_values_to_json(values: Mapping[str, Any]) -> dict[str, Any]:
    """Index rows to DICOM JSON: {"PatientName": "Doe^John", ...}, VRs from the data dictionary."""
    return KeywordEncoder(values)(values)


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON; a NaN that slipped through is an error, not invalid JSON."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _restore_non_finite(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy with "NaN"/"Infinity"/"-Infinity" in FL/FD values turned back into floats."""
    out = dict(obj)
    for key, attribute in obj.items():
        if not isinstance(attribute, Mapping):
            continue
        values = attribute.get("Value")
        if not isinstance(values, list):
            continue
        if attribute.get("vr") in _FLOAT_VRS:
            out[key] = {**attribute, "Value": [_NON_FINITE.get(v, v) if isinstance(v, str) else v for v in values]}
        elif attribute.get("vr") == "SQ":
            out[key] = {**attribute, "Value": [_restore_non_finite(v) if isinstance(v, Mapping) else v for v in values]}
    return out


def json_to_dataset(obj: Mapping[str, Any], bulkdata_loader: Callable[[str], bytes] | None = None) -> Dataset:
    """The inverse of `dataset_to_json`; `bulkdata_loader` fetches the bytes behind a BulkDataURI."""
    try:
        return Dataset.from_json(_restore_non_finite(obj), bulk_data_uri_handler=bulkdata_loader)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InvalidInput(f"invalid DICOM JSON: {exc}") from exc


def json_identity(obj: Any) -> tuple[str | None, str | None]:
    """The SOP Class and Instance UIDs a DICOM JSON object names, as far as it names them (a refusal reports them)."""

    def first(tag: str) -> str | None:
        attribute = obj.get(tag) if isinstance(obj, Mapping) else None
        values = attribute.get("Value") if isinstance(attribute, Mapping) else None
        value = values[0] if isinstance(values, list) and values else None
        return value if isinstance(value, str) and 0 < len(value) <= 64 and value.isprintable() else None

    return first("00080016"), first("00080018")


def write_part10_from_json(obj: Mapping[str, Any], bulkdata_loader: Callable[[str], bytes], out: BinaryIO) -> None:
    """The instance a STOW-RS metadata object describes as an Explicit VR Little Endian Part 10 file in `out`: every
    value, InlineBinary or behind a BulkDataURI (`bulkdata_loader` fetches it), written with the bytes sent (DICOM
    JSON binary values are little endian, as the file is). InvalidInput when the object cannot be an instance."""
    if not isinstance(obj, Mapping):
        raise InvalidInput("a DICOM JSON instance must be an object")
    ds = json_to_dataset(obj, bulkdata_loader)
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        if not ds.get(keyword):
            raise InvalidInput(f"missing {keyword}")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    try:
        dcmwrite(out, ds, enforce_file_format=True)
    except (ValueError, TypeError, AttributeError, OverflowError, struct.error) as exc:
        raise InvalidInput(f"the DICOM JSON cannot be written as DICOM: {exc}") from exc
    out.flush()


def bulk_value(ds: Dataset, path: str | Sequence[tuple[int, int | None]]) -> tuple[str, bytes]:
    """The VR and value bytes a BulkDataURI path points at, exactly as InlineBinary would carry them."""
    steps = parse_tag_path(path) if isinstance(path, str) else list(path)
    current = ds
    for position, (tag, index) in enumerate(steps):
        if tag not in current:
            raise NotFound(f"no attribute {tag:08X} in {tag_path(steps[:position]) or 'the dataset'}")
        raw = current.get_item(tag, keep_deferred=True)
        little = raw.is_little_endian if isinstance(raw, RawDataElement) else True
        elem = current[tag]
        if index is None:
            vr = _resolve_vr(elem.VR, elem.value)
            if vr not in _BINARY_VRS or not isinstance(elem.value, bytes):
                raise NotFound(f"attribute {tag:08X} is not bulk data")
            return vr, _little_endian_bytes(vr, elem.value, little)
        if elem.VR != "SQ" or index >= len(elem.value):
            raise NotFound(f"no item {index} in {tag:08X}")
        current = elem.value[index]
    raise NotFound("empty bulk data path")
