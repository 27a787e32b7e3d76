"""Parsing a received object, once: complete Part 10 files are read and anything else is InvalidInput; the
identity, the catalogue's attributes and the metadata entry (DICOM JSON, frame index, size, sha256) come out."""

from __future__ import annotations

import hashlib
import io
import tracemalloc
import warnings
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from bench.synthetic import ct_series, write_part10
from dicomcloud.dicom.attributes import extracted
from dicomcloud.dicom.parse import Identity, InstanceHeader, ParsedInstance, parse_instance, read_identity
from dicomcloud.dicom.seriesdoc import BASE_PLACEHOLDER
from dicomcloud.dicom.uids import TransferSyntax
from dicomcloud.errors import InvalidInput, InvalidUID

DATA = Path(pydicom.data.__file__).parent
FOLDERS = ("test_files", "charset_files")

# Every file of pydicom's data folders that is refused, with the reason it is refused for.
REJECTED = {
    "charset_files/FileInfo.txt": "not a DICOM Part 10 file",
    "charset_files/chrSQEncoding.dcm": "missing SOPClassUID",
    "charset_files/chrSQEncoding1.dcm": "missing SOPClassUID",
    "test_files/ExplVR_BigEndNoMeta.dcm": "not a DICOM Part 10 file",
    "test_files/ExplVR_LitEndNoMeta.dcm": "not a DICOM Part 10 file",
    "test_files/JPEGLSNearLossless_08.dcm": "missing StudyInstanceUID",
    "test_files/JPEGLSNearLossless_16.dcm": "missing StudyInstanceUID",
    "test_files/MR_truncated.dcm": "truncated file: element (7FE0,0010)",
    "test_files/README.txt": "not a DICOM Part 10 file",
    "test_files/SC_rgb_jls_lossy_line.dcm": "missing StudyInstanceUID",
    "test_files/SC_rgb_jls_lossy_sample.dcm": "missing StudyInstanceUID",
    "test_files/UN_sequence.dcm": "missing SOPClassUID",
    "test_files/crayons.icc": "not a DICOM Part 10 file",
    "test_files/dicomdirtests/DICOMDIR": "missing SOPClassUID",
    "test_files/dicomdirtests/DICOMDIR-bigEnd": "missing SOPClassUID",
    "test_files/dicomdirtests/DICOMDIR-empty.dcm": "missing SOPClassUID",
    "test_files/dicomdirtests/DICOMDIR-implicit": "missing SOPClassUID",
    "test_files/dicomdirtests/DICOMDIR-nooffset": "truncated file: item of (0004,1220)",
    "test_files/dicomdirtests/DICOMDIR-nopatient": "missing SOPClassUID",
    "test_files/dicomdirtests/DICOMDIR-reordered": "missing SOPClassUID",
    "test_files/dicomdirtests/README.txt": "not a DICOM Part 10 file",
    "test_files/dicomdirtests/TINY_ALPHA/DICOMDIR": "missing SOPClassUID",
    "test_files/dicomdirtests/TINY_ALPHA/README": "not a DICOM Part 10 file",
    "test_files/empty_charset_LEI.dcm": "missing SOPClassUID",
    "test_files/meta_missing_tsyntax.dcm": "no TransferSyntaxUID",
    "test_files/nested_priv_SQ.dcm": "missing SOPClassUID",
    "test_files/no_meta.dcm": "not a DICOM Part 10 file",
    "test_files/no_meta_group_length.dcm": "missing SOPClassUID",
    "test_files/priv_SQ.dcm": "missing SOPClassUID",
    "test_files/rtplan.dump": "not a DICOM Part 10 file",
    "test_files/rtplan_truncated.dcm": "truncated file: element (300A,00B0)",
    "test_files/rtstruct.dcm": "not a DICOM Part 10 file",
    "test_files/rtstruct.dump": "not a DICOM Part 10 file",
    "test_files/test1.json": "not a DICOM Part 10 file",
    "test_files/test_PN.json": "not a DICOM Part 10 file",
    "test_files/zipMR.gz": "not a DICOM Part 10 file",
}


def data_files() -> list[str]:
    return sorted(
        str(path.relative_to(DATA))
        for folder in FOLDERS
        for path in (DATA / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )


def file_id(name: str) -> str:
    return ("rejected:" if name in REJECTED else "accepted:") + name


def parse(path: Path, bulkdata_threshold: int = 1024) -> ParsedInstance:
    """`parse_instance` of the file at `path`, opened as the archive opens a staged object."""
    with path.open("rb") as stream:
        return parse_instance(stream, bulkdata_threshold=bulkdata_threshold)


def synthetic_file(tmp_path: Path, **changes: object) -> Path:
    ds = next(ct_series(1, rows=16, columns=16))
    path = tmp_path / "ct.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword, value in changes.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        write_part10(ds, path)
    return path


def cut(source: Path, target: Path, length: int) -> Path:
    target.write_bytes(source.read_bytes()[:length])
    return target


@pytest.mark.parametrize("name", data_files(), ids=file_id)
def test_every_pydicom_file_is_read_or_refused_as_invalid_input(name: str) -> None:
    path = DATA / name
    if name in REJECTED:
        with pytest.raises(InvalidInput) as refused:
            parse(path)
        assert REJECTED[name] in refused.value.message
        return
    header = parse(path).header
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = pydicom.dcmread(path)
        patient_id = reference.get("PatientID")
    assert header == InstanceHeader(
        sop_class_uid=reference.SOPClassUID,
        sop_instance_uid=reference.SOPInstanceUID,
        study_instance_uid=reference.StudyInstanceUID,
        series_instance_uid=reference.SeriesInstanceUID,
        transfer_syntax=TransferSyntax(reference.file_meta.TransferSyntaxUID),
        patient_id="\\".join(patient_id) if isinstance(patient_id, MultiValue) else str(patient_id or ""),
    )


@pytest.mark.parametrize(
    ("charset", "patient_id"), [("ISO_IR 100", "Müller-1"), ("ISO_IR 192", "患者-7"), (["", "ISO 2022 IR 87"], "山田")]
)
def test_header_patient_id_is_decoded_with_the_specific_character_set(
    tmp_path: Path, charset: str | list[str], patient_id: str
) -> None:
    path = synthetic_file(tmp_path, SpecificCharacterSet=charset, PatientID=patient_id)
    assert parse(path).header.patient_id == patient_id


def test_a_header_value_longer_than_any_valid_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"\(0010,0020\) is 5000 bytes long"):
        parse(synthetic_file(tmp_path, PatientID="P" * 5000))


def test_header_carries_identity_and_transfer_syntax(tmp_path: Path) -> None:
    ds = next(ct_series(1, rows=16, columns=16, patient_id="P-1"))
    write_part10(ds, tmp_path / "ct.dcm")
    header = parse(tmp_path / "ct.dcm").header
    assert header == InstanceHeader(
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        study_instance_uid=ds.StudyInstanceUID,
        series_instance_uid=ds.SeriesInstanceUID,
        transfer_syntax=TransferSyntax(ds.file_meta.TransferSyntaxUID),
        patient_id="P-1",
    )
    assert isinstance(header.transfer_syntax, TransferSyntax)


def test_file_cut_inside_pixel_data_is_refused(tmp_path: Path) -> None:
    whole = synthetic_file(tmp_path)
    with pytest.raises(InvalidInput, match=r"truncated file: element \(7FE0,0010\)"):
        parse(cut(whole, tmp_path / "cut.dcm", whole.stat().st_size - 100))


def test_file_cut_anywhere_but_between_top_level_elements_is_refused(tmp_path: Path) -> None:
    whole = synthetic_file(tmp_path)
    ds = pydicom.dcmread(whole, defer_size=0)
    start = 132 + 12 + ds.file_meta.FileMetaInformationGroupLength
    boundaries = {start, whole.stat().st_size}
    for tag in list(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement):
            header = 12 if raw.VR in {"OB", "OW", "SQ", "UN", "UT", "UC", "UR"} else 8
            boundaries |= {raw.value_tell - header, raw.value_tell + raw.length}
    accepted = set()
    for length in range(start + 1, whole.stat().st_size):
        try:
            parse(cut(whole, tmp_path / "cut.dcm", length))
        except InvalidInput:
            continue
        accepted.add(length)
    assert accepted
    assert accepted <= boundaries


@pytest.mark.parametrize(
    ("name", "length_from_end", "reason"),
    [
        ("rtplan.dcm", 500, "truncated file"),
        ("JPEG2000.dcm", 8, "truncated file: item of (7FE0,0010)"),
        ("JPEG2000.dcm", 100, "truncated file: item of (7FE0,0010)"),
        ("image_dfl.dcm", 1000, "deflated dataset ends before its end of stream"),
        ("MR_small_implicit.dcm", 3, "truncated file: element (7FE0,0010)"),
    ],
    ids=["implicit-sequence", "before-sequence-delimiter", "inside-fragment", "deflated", "implicit-pixel-data"],
)
def test_truncated_structures_are_refused_with_a_precise_message(
    tmp_path: Path, name: str, length_from_end: int, reason: str
) -> None:
    source = DATA / "test_files" / name
    with pytest.raises(InvalidInput) as refused:
        parse(cut(source, tmp_path / name, source.stat().st_size - length_from_end))
    assert reason in refused.value.message


def test_deflated_transfer_syntax_is_read(tmp_path: Path) -> None:
    ds = next(ct_series(1, rows=32, columns=32, transfer_syntax=DeflatedExplicitVRLittleEndian))
    write_part10(ds, tmp_path / "deflated.dcm")
    assert parse(tmp_path / "deflated.dcm").header.transfer_syntax == DeflatedExplicitVRLittleEndian
    assert parse(DATA / "test_files" / "image_dfl.dcm").header.transfer_syntax == DeflatedExplicitVRLittleEndian


def test_file_starting_with_file_meta_but_no_preamble_is_read(tmp_path: Path) -> None:
    whole = synthetic_file(tmp_path)
    bare = tmp_path / "no-preamble.dcm"
    bare.write_bytes(whole.read_bytes()[132:])
    parsed, reference = parse(bare), parse(whole)
    assert parsed.header == reference.header
    assert parsed.attributes == reference.attributes
    assert parsed.entry.metadata == reference.entry.metadata
    assert (parsed.entry.has_preamble, reference.entry.has_preamble) == (False, True)


def test_non_dicom_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello" * 100)
    with pytest.raises(InvalidInput, match="not a DICOM Part 10 file"):
        parse(path)


@pytest.mark.parametrize("keyword", ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_missing_identifying_uid_is_refused(tmp_path: Path, keyword: str) -> None:
    path = synthetic_file(tmp_path, **{keyword: None})
    with pytest.raises(InvalidInput, match=f"missing {keyword}"):
        parse(path)


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("StudyInstanceUID", "1.2.3/../../etc"), ("SeriesInstanceUID", "../x"), ("SOPInstanceUID", "1.2.3.a")],
)
def test_uid_that_could_leave_its_folder_is_refused(tmp_path: Path, keyword: str, value: str) -> None:
    path = synthetic_file(tmp_path, **{keyword: value})
    with pytest.raises(InvalidUID):
        parse(path)


def test_a_non_conformant_uid_safe_as_a_key_is_accepted(tmp_path: Path) -> None:
    digest = "dccc9599087131742838cc1162a630fea87ba9bf61ac09bfda90d4adfa5ddaed"
    assert parse(synthetic_file(tmp_path, SOPInstanceUID=digest)).header.sop_instance_uid == digest


def nested(depth: int) -> Dataset:
    """A Content Sequence whose items nest `depth` levels deep."""
    inner = Dataset()
    inner.CodeValue = "LEAF"
    for _ in range(depth - 1):
        outer = Dataset()
        outer.ContentSequence = [inner]
        inner = outer
    return inner


def test_sequences_nested_a_hundred_deep_are_read(tmp_path: Path) -> None:
    path = synthetic_file(tmp_path, ContentSequence=[nested(100)])
    attribute = parse(path).entry.metadata["0040A730"]
    for _ in range(100):
        attribute = attribute["Value"][0].get("0040A730", attribute["Value"][0].get("00080100"))
    assert attribute == {"vr": "SH", "Value": ["LEAF"]}


def test_sequences_nested_past_the_limit_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="nested too deeply"):
        parse(synthetic_file(tmp_path, ContentSequence=[nested(200)]))


@pytest.mark.parametrize(
    ("name", "sop_class_uid", "sop_instance_uid"),
    [
        ("test_files/rtstruct.dcm", "1.2.840.10008.5.1.4.1.1.481.3", "1.2.826.0.1.3680043.8.498.2010020400001"),
        ("test_files/JPEGLSNearLossless_08.dcm", "1.2.840.10008.5.1.4.1.1.7",
         "1.2.826.0.1.3680043.8.498.86164008115771185238417434208295286685"),
        ("test_files/MR_truncated.dcm", "1.2.840.10008.5.1.4.1.1.4", "1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457"),
        ("test_files/dicomdirtests/DICOMDIR", "1.2.840.10008.1.3.10",
         "1.2.276.0.7230010.3.1.4.0.31906.1359940846.78187"),
        ("test_files/crayons.icc", None, None),
    ],
)
def test_a_refused_object_is_named_as_far_as_it_can_be_read(
    name: str, sop_class_uid: str | None, sop_instance_uid: str | None
) -> None:
    with (DATA / name).open("rb") as stream:
        assert read_identity(stream) == Identity(sop_class_uid, sop_instance_uid)


def test_pixel_data_is_not_loaded(tmp_path: Path) -> None:
    ds = next(ct_series(1, rows=1024, columns=1024))
    write_part10(ds, tmp_path / "big.dcm")
    with (tmp_path / "big.dcm").open("rb") as stream:
        tracemalloc.start()
        try:
            parsed = parse_instance(stream)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert len(ds.PixelData) == 2 * 1024 * 1024
    assert peak < 512 * 1024
    assert set(parsed.entry.metadata["7FE00010"]) == {"vr", "BulkDataURI"}
    assert parsed.attributes["PatientID"] == "SYN-CT"


def test_attributes_hold_the_catalogue_values_by_keyword(tmp_path: Path) -> None:
    ds = next(ct_series(1, rows=16, columns=16, patient_name="Doe^Jane", patient_id="P-7"))
    ds.SeriesNumber = 4
    ds.InstanceNumber = 12
    ds.StationName = "CT01"
    write_part10(ds, tmp_path / "ct.dcm")
    values = parse(tmp_path / "ct.dcm").attributes
    assert set(values) == {attribute.keyword for attribute in extracted()}
    assert (values["PatientID"], values["PatientName"]) == ("P-7", "Doe^Jane")
    assert (values["StudyInstanceUID"], values["SeriesInstanceUID"]) == (ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert (values["SOPInstanceUID"], values["SOPClassUID"]) == (ds.SOPInstanceUID, ds.SOPClassUID)
    assert (values["Modality"], values["SeriesNumber"], values["StationName"], values["StudyDate"]) == (
        "CT",
        4,
        "CT01",
        "20240102",
    )
    assert (values["InstanceNumber"], values["Rows"], values["Columns"]) == (12, 16, 16)
    assert (values["BitsAllocated"], values["NumberOfFrames"]) == (16, None)
    assert values["ImageType"] == "ORIGINAL\\PRIMARY\\AXIAL"
    assert values["AcquisitionDateTime"] == "20240102101500"
    assert values["TransferSyntaxUID"] == ds.file_meta.TransferSyntaxUID


def test_acquisition_date_time_falls_back_to_date_and_time(tmp_path: Path) -> None:
    path = synthetic_file(tmp_path, AcquisitionDateTime=None, AcquisitionDate="20230405", AcquisitionTime="061530")
    assert parse(path).attributes["AcquisitionDateTime"] == "20230405061530"


def test_missing_text_is_empty_and_missing_number_is_none(tmp_path: Path) -> None:
    path = synthetic_file(tmp_path, SeriesNumber=None, InstanceNumber=None, PatientSex=None)
    parsed = parse(path)
    values = parsed.attributes
    assert (values["SeriesNumber"], values["InstanceNumber"], values["PatientSex"]) == (None, None, "")
    assert values["PerformedProcedureStepStartDate"] == ""
    assert parsed.entry.instance_number is None


@pytest.mark.parametrize(
    ("name", "patient_name"),
    [
        ("chrH31.dcm", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        ("chrX2.dcm", "Wang^XiaoDong=王^小东"),
        ("chrX1.dcm", "Wang^XiaoDong=王^小東"),
        ("chrI2.dcm", "Hong^Gildong=洪^吉洞=홍^길동"),
        ("chrFren.dcm", "Buc^Jérôme"),
        ("chrRuss.dcm", "Люкceмбypг"),
    ],
)
def test_patient_name_is_decoded_with_its_character_set(name: str, patient_name: str) -> None:
    assert parse(DATA / "charset_files" / name).attributes["PatientName"] == patient_name


def test_specific_character_set_applies_to_patient_id(tmp_path: Path) -> None:
    path = synthetic_file(tmp_path, SpecificCharacterSet="GB18030", PatientID="患者-1")
    parsed = parse(path)
    assert parsed.header.patient_id == parsed.attributes["PatientID"] == "患者-1"


def test_implicit_vr_file_is_read(tmp_path: Path) -> None:
    ds = next(ct_series(1, rows=16, columns=16, transfer_syntax=ImplicitVRLittleEndian))
    write_part10(ds, tmp_path / "implicit.dcm")
    assert parse(tmp_path / "implicit.dcm").header.sop_instance_uid == ds.SOPInstanceUID


# -- the metadata entry ---------------------------------------------------------------------------


def test_entry_keeps_the_file_facts_and_the_frame_index() -> None:
    path = DATA / "test_files" / "rtdose.dcm"
    entry = parse(path).entry
    data = path.read_bytes()
    assert (entry.file_size, entry.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert entry.sop_instance_uid == pydicom.dcmread(path).SOPInstanceUID
    assert entry.frame_index is not None and entry.frame_index.number_of_frames == 15


def test_entry_sha256_is_of_the_deflated_bytes_as_stored() -> None:
    path = DATA / "test_files" / "image_dfl.dcm"
    assert parse(path).entry.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_entry_metadata_is_dicom_json_with_bulk_data_uris_under_the_placeholder(tmp_path: Path) -> None:
    ds = next(ct_series(1, rows=16, columns=16, patient_id="P-3"))
    ds.InstanceNumber = 5
    write_part10(ds, tmp_path / "ct.dcm")
    entry = parse(tmp_path / "ct.dcm", bulkdata_threshold=100).entry
    assert entry.instance_number == 5
    assert entry.metadata["00100020"] == {"vr": "LO", "Value": ["P-3"]}
    assert entry.metadata["7FE00010"]["BulkDataURI"] == (
        f"{BASE_PLACEHOLDER}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/bulkdata/7FE00010"
    )


def test_values_within_the_bulkdata_threshold_are_inline(tmp_path: Path) -> None:
    ds = next(ct_series(1, rows=16, columns=16))  # 512 bytes of Pixel Data
    write_part10(ds, tmp_path / "ct.dcm")
    inline = parse(tmp_path / "ct.dcm", bulkdata_threshold=512).entry.metadata["7FE00010"]
    assert inline.keys() == {"vr", "InlineBinary"}
    assert "BulkDataURI" in parse(tmp_path / "ct.dcm", bulkdata_threshold=511).entry.metadata["7FE00010"]


def test_an_instance_without_pixel_data_has_no_frame_index() -> None:
    assert parse(DATA / "test_files" / "rtplan.dcm").entry.frame_index is None


def test_a_stream_without_a_file_is_parsed_like_the_file(tmp_path: Path) -> None:
    path = synthetic_file(tmp_path)
    parsed = parse_instance(io.BytesIO(path.read_bytes()))
    assert parsed == parse(path)
