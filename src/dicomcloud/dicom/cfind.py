"""C-FIND, C-GET and C-MOVE identifiers (PS3.4 C.4) in terms of the QIDO matching engine.

A C-FIND identifier becomes a `dicomcloud.dicom.query.Query`, so DIMSE and QIDO-RS match with the
same rules and the same index. Decisions (the conformance statement's query/retrieve section):

- Information models: Patient Root (PATIENT, STUDY, SERIES, IMAGE) and Study Root (STUDY, SERIES,
  IMAGE). Matching is relational: keys of any level above the query level are matching keys,
  whether or not the unique keys of those levels are given (a superset of hierarchical queries).
- Keys that cannot be matched at the query level (not indexed, a lower level, or sequences) are
  not applied, as in QIDO-RS; they are returned, with a value when the archive has one.
- PATIENT level: the index keeps patient attributes per study (Study Root shape), so patients are
  the distinct Patient IDs of the matching studies; their attributes are those of the newest
  study, and the NumberOfPatientRelated… counts add up over the patient's studies.
- A response carries exactly the identifier's keys, plus Specific Character Set (ISO_IR 192:
  values are stored decoded, so UTF-8 carries any of them), Query/Retrieve Level and Retrieve
  AE Title.
- C-GET and C-MOVE identifiers must hold the unique key(s) of their level (a single value or a
  UID list); other keys are matched too, relationally, which only narrows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicomcloud.dicom.query import LEVEL_DEPTH, MATCHING_KEYS, Level, Query, parse_condition
from dicomcloud.errors import IdentifierMismatch

InformationModel = Literal["patient", "study"]

# Query/Retrieve Level -> the index level searched for it.
QR_LEVELS: dict[str, Level] = {"PATIENT": "study", "STUDY": "study", "SERIES": "series", "IMAGE": "instance"}
MODEL_LEVELS: dict[InformationModel, tuple[str, ...]] = {
    "patient": ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    "study": ("STUDY", "SERIES", "IMAGE"),
}
PATIENT_KEYS = frozenset({"PatientName", "PatientID", "PatientBirthDate", "PatientSex"})
# The unique key a C-GET/C-MOVE identifier must carry at each level (PS3.4 C.4.2.2.1.2).
UNIQUE_KEYS: dict[str, tuple[str, ...]] = {
    "PATIENT": ("PatientID",),
    "STUDY": ("StudyInstanceUID",),
    "SERIES": ("StudyInstanceUID", "SeriesInstanceUID"),
    "IMAGE": ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
}
RESPONSE_CHARACTER_SET = "ISO_IR 192"
# Keys the response sets itself, whatever the identifier holds for them.
_OWN_KEYWORDS = frozenset({"SpecificCharacterSet", "QueryRetrieveLevel", "RetrieveAETitle"})


def query_retrieve_level(identifier: Dataset, model: InformationModel) -> str:
    """The identifier's Query/Retrieve Level, checked against the information model."""
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in MODEL_LEVELS[model]:
        raise IdentifierMismatch(
            f"Query/Retrieve Level {level or '(missing)'!r} is not one of {', '.join(MODEL_LEVELS[model])}"
            f" in the {model} root information model"
        )
    return level


def find_query(identifier: Dataset, model: InformationModel) -> Query:
    """The Query a C-FIND identifier asks for, at the index level of its Query/Retrieve Level."""
    qr_level = query_retrieve_level(identifier, model)
    level = QR_LEVELS[qr_level]
    conditions = []
    for keyword, raw in _matching_values(identifier):
        attr = MATCHING_KEYS.get(keyword)
        if attr is None or LEVEL_DEPTH[attr.query_level] > LEVEL_DEPTH[level]:
            continue
        if qr_level == "PATIENT" and keyword not in PATIENT_KEYS:
            continue
        condition = parse_condition(attr, raw)
        if condition is not None:
            conditions.append(condition)
    return Query(level=level, conditions=tuple(conditions))


def retrieve_query(identifier: Dataset, model: InformationModel) -> Query:
    """The instance-level Query selecting what a C-GET or C-MOVE identifier names."""
    qr_level = query_retrieve_level(identifier, model)
    query = find_query(identifier, model)
    given = {c.keyword for c in query.conditions}
    missing = [k for k in UNIQUE_KEYS[qr_level] if k not in given]
    if missing:
        raise IdentifierMismatch(f"a {qr_level} level retrieve needs {', '.join(missing)}")
    if any(c.kind == "wildcard" for c in query.conditions if c.keyword in UNIQUE_KEYS[qr_level]):
        raise IdentifierMismatch("unique keys of a retrieve cannot hold wildcards")
    return Query(level="instance", conditions=query.conditions)


def _matching_values(identifier: Dataset) -> Iterable[tuple[str, str]]:
    """(keyword, value as QIDO would carry it) for each non-sequence key of the identifier."""
    for element in identifier:
        if element.VR == "SQ" or not element.keyword or element.keyword in _OWN_KEYWORDS:
            continue
        yield element.keyword, _as_text(element)


def _as_text(element: DataElement) -> str:
    value = element.value
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(item) for item in value)
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace")
    return str(value)


def patient_rows(study_rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Patient-level matches from study-level ones (newest study first), one per patient.

    Studies without a Patient ID are one patient per Patient Name, so they do not merge.
    """
    patients: dict[tuple[str, str], dict[str, Any]] = {}
    for row in study_rows:
        patient_id = str(row.get("PatientID") or "")
        key = (patient_id, "" if patient_id else str(row.get("PatientName") or ""))
        patient = patients.get(key)
        if patient is None:
            patient = {k: row.get(k) for k in PATIENT_KEYS}
            patient.update(
                NumberOfPatientRelatedStudies=0, NumberOfPatientRelatedSeries=0, NumberOfPatientRelatedInstances=0
            )
            patients[key] = patient
        patient["NumberOfPatientRelatedStudies"] += 1
        patient["NumberOfPatientRelatedSeries"] += int(row.get("NumberOfStudyRelatedSeries") or 0)
        patient["NumberOfPatientRelatedInstances"] += int(row.get("NumberOfStudyRelatedInstances") or 0)
    return list(patients.values())


def find_response(identifier: Dataset, row: Mapping[str, Any], *, qr_level: str, retrieve_ae_title: str) -> Dataset:
    """A pending C-FIND response identifier: the identifier's keys with this match's values."""
    response = Dataset()
    response.SpecificCharacterSet = RESPONSE_CHARACTER_SET
    response.QueryRetrieveLevel = qr_level
    response.RetrieveAETitle = retrieve_ae_title
    for element in identifier:
        if element.keyword in _OWN_KEYWORDS or element.tag.element == 0:
            continue
        value = "ONLINE" if element.keyword == "InstanceAvailability" else row.get(element.keyword)
        response.add_new(element.tag, element.VR, _element_value(element.VR, value))
    return response


def _element_value(vr: str, value: Any) -> Any:
    """A search value in the form pydicom stores for the VR; None for empty."""
    if vr == "SQ":
        return []
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, MultiValue | list | tuple):
        return [_element_value(vr, item) for item in value]
    if vr in ("US", "UL", "SS", "SL", "IS"):
        return int(value)
    if vr in ("FL", "FD"):
        return float(value)
    return str(value)
