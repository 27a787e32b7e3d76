"""The one catalogue of the attributes the archive indexes: keyword, level, and where each one goes.

Everything else that names an indexed attribute is derived from this table, or checked against it
by a test (tests/unit/test_attributes.py):
- header extraction (`dicom/parse.py` `indexed_values`): the values an instance carries;
- query parsing (`dicom/query.py` `MATCHING_KEYS`): the matching keys, their VRs and levels;
- the SQL index (`adapters/index_sql.py` and the SQLite schema; the PostgreSQL migrations are checked);
- the warehouse rows (`ports/warehouse.py`; the shipped Doris DDL and Routine Load are checked);
- the bus events (`events.py`): a column's name on the wire is `json_name(column)`, the keyword itself.

Tag and VR come from pydicom's data dictionary, so a keyword is all an entry spells. Adding an
attribute is one line here, plus a PostgreSQL migration and the Doris DDL, which the test names.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from pydicom.datadict import dictionary_VR, tag_for_keyword

Level = Literal["patient", "study", "series", "instance"]
QueryLevel = Literal["study", "series", "instance"]

INTEGER_VRS = frozenset({"IS", "US", "UL", "SS", "SL"})
_WORD_BREAK = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake_case(keyword: str) -> str:
    """`SOPClassUID` -> `sop_class_uid`, `PatientID` -> `patient_id` (the inverse of `events.json_name`)."""
    return _WORD_BREAK.sub("_", keyword).lower()


@dataclass(frozen=True)
class Attribute:
    keyword: str
    level: Level
    # A QIDO-RS and C-FIND matching key.
    matching: bool = False
    # A column of the index table of its level (patient attributes: the study table and the patient table).
    index: bool = True
    # A column of its level's warehouse row (dicom_state_meta, or dicom_image_meta for instances).
    warehouse: bool = True
    # Computed by the index from other rows (counts, ModalitiesInStudy), never read from an instance.
    computed: bool = False
    # A UID naming its entity: part of every key, extracted with the instance's identity.
    identity: bool = False
    # The column, where it is not the keyword in snake_case.
    column_name: str = ""
    # Keywords whose values, joined, stand in when an instance lacks this attribute.
    fallback: tuple[str, ...] = ()

    # Derived once per attribute (ingest asks for them per instance).
    @cached_property
    def tag(self) -> int:
        tag = tag_for_keyword(self.keyword)
        if tag is None:
            raise KeyError(f"{self.keyword} is not in the DICOM dictionary")
        return int(tag)

    @cached_property
    def vr(self) -> str:
        return str(dictionary_VR(self.keyword))

    @cached_property
    def column(self) -> str:
        return self.column_name or snake_case(self.keyword)

    @property
    def query_level(self) -> QueryLevel:
        """The search level the attribute is matched at: patient attributes belong to studies (Study Root)."""
        return "study" if self.level == "patient" else self.level

    @cached_property
    def integer(self) -> bool:
        return self.vr in INTEGER_VRS

    @cached_property
    def match_column(self) -> str:
        """The column matching compares against: person names lower-cased, times as comparable keys."""
        if self.vr == "PN":
            return f"{self.column}_lc"
        if self.vr == "TM":
            return f"{self.column}_key"
        return self.column

    @cached_property
    def has_match_column(self) -> bool:
        return self.matching and self.match_column != self.column


CATALOGUE: tuple[Attribute, ...] = (
    Attribute("PatientID", "patient", matching=True),
    Attribute("PatientName", "patient", matching=True),
    Attribute("PatientBirthDate", "patient", matching=True),
    Attribute("PatientSex", "patient", matching=True),
    Attribute("StudyInstanceUID", "study", matching=True, identity=True),
    Attribute("StudyDate", "study", matching=True),
    Attribute("StudyTime", "study", matching=True),
    Attribute("AccessionNumber", "study", matching=True),
    Attribute("StudyID", "study", matching=True),
    Attribute("StudyDescription", "study", matching=True),
    Attribute("ReferringPhysicianName", "study", matching=True),
    Attribute("ModalitiesInStudy", "study", matching=True, computed=True, warehouse=False, column_name="modalities"),
    Attribute("NumberOfStudyRelatedSeries", "study", computed=True, warehouse=False, column_name="num_series"),
    Attribute("NumberOfStudyRelatedInstances", "study", computed=True, warehouse=False, column_name="num_instances"),
    Attribute("SeriesInstanceUID", "series", matching=True, identity=True),
    Attribute("Modality", "series", matching=True),
    Attribute("SeriesNumber", "series", matching=True),
    Attribute("SeriesDescription", "series", matching=True),
    Attribute("SeriesDate", "series"),
    Attribute("SeriesTime", "series"),
    Attribute("BodyPartExamined", "series", matching=True),
    Attribute("PerformedProcedureStepStartDate", "series", matching=True),
    Attribute("PerformedProcedureStepStartTime", "series", matching=True),
    Attribute("InstitutionName", "series", matching=True),
    Attribute("StationName", "series", matching=True),
    Attribute("NumberOfSeriesRelatedInstances", "series", computed=True, warehouse=False, column_name="num_instances"),
    Attribute("SOPInstanceUID", "instance", matching=True, identity=True),
    Attribute("SOPClassUID", "instance", matching=True),
    Attribute("InstanceNumber", "instance", matching=True),
    # From the File Meta Information; QIDO-RS returns it as AvailableTransferSyntaxUID (0008,3002).
    Attribute("TransferSyntaxUID", "instance", column_name="transfer_syntax"),
    Attribute("Rows", "instance"),
    Attribute("Columns", "instance"),
    Attribute("BitsAllocated", "instance"),
    Attribute("NumberOfFrames", "instance"),
    Attribute("PhotometricInterpretation", "instance", index=False),
    Attribute("ContentDate", "instance", index=False),
    Attribute("ContentTime", "instance", index=False),
    Attribute("AcquisitionDateTime", "instance", index=False, fallback=("AcquisitionDate", "AcquisitionTime")),
    Attribute("ImageType", "instance", index=False),
)

BY_KEYWORD: dict[str, Attribute] = {attribute.keyword: attribute for attribute in CATALOGUE}


def attributes(
    *levels: Level, index: bool | None = None, warehouse: bool | None = None, computed: bool | None = None
) -> Iterator[Attribute]:
    """The catalogue's attributes of these levels (all levels when none is named), filtered by the flags given."""
    for attribute in CATALOGUE:
        if levels and attribute.level not in levels:
            continue
        if index is not None and attribute.index != index:
            continue
        if warehouse is not None and attribute.warehouse != warehouse:
            continue
        if computed is not None and attribute.computed != computed:
            continue
        yield attribute


EXTRACTED: tuple[Attribute, ...] = tuple(a for a in CATALOGUE if not a.computed and (a.index or a.warehouse))


def extracted() -> Iterator[Attribute]:
    """What an instance's header gives: every attribute the index or the warehouse keeps and nothing computes."""
    return iter(EXTRACTED)
