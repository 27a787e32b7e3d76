"""Header parsing: complete Part 10 files are read, anything else is InvalidInput, values decoded."""

from __future__ import annotations

import tracemalloc
import warnings
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from bench.synthetic import ct_series, write_part10
from pydicom.dataelem import RawDataElement
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomcloud.dicom.parse import InstanceHeader, extract_meta, read_dataset, read_header
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
            read_header(path)
        assert REJECTED[name] in refused.value.message
        return
    header = read_header(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = pydicom.dcmread(path)
        patient_id = reference.get("PatientID")
    assert header == InstanceHeader(
        sop_class_uid=reference.SOPClassUID,
        sop_instance_uid=reference.SOPInstanceUID,
        study_instance_uid=reference.StudyInstanceUID,
        series_instance_uid=reference.SeriesInstanceUID,
        transfer_syntax=reference.file_meta.TransferSyntaxUID,
        patient_id="\\".join(patient_id) if isinstance(patient_id, MultiValue) else str(patient_id or ""),
    )


@pytest.mark.parametrize(
    ("charset", "patient_id"), [("ISO_IR 100", "Müller-1"), ("ISO_IR 192", "患者-7"), (["", "ISO 2022 IR 87"], "山田")]
)
def test_header_patient_id_is_decoded_with_the_specific_character_set(
    tmp_path: Path, charset: str | list[str], patient_id: str
) -> None:
    path = synthetic_file(tmp_path, SpecificCharacterSet=charset, PatientID=patient_id)
    assert read_header(path).patient_id == patient_id


def test_a_header_value_longer_than_any_valid_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"\(0010,0020\) is 5000 bytes long"):
        read_header(synthetic_file(tmp_path, PatientID="P" * 5000))


def test_header_carries_identity_and_transfer_syntax(tmp_path: Path) -> None:
    ds = next(ct_series(1, rows=16, columns=16, patient_id="P-1"))
    write_part10(ds, tmp_path / "ct.dcm")
    assert read_header(tmp_path / "ct.dcm") == InstanceHeader(
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        study_instance_uid=ds.StudyInstanceUID,
        series_instance_uid=ds.SeriesInstanceUID,
        transfer_syntax=ds.file_meta.TransferSyntaxUID,
        patient_id="P-1",
    )


def test_file_cut_inside_pixel_data_is_refused(tmp_path: Path) -> None:
    whole = synthetic_file(tmp_path)
    with pytest.raises(InvalidInput, match=r"truncated file: element \(7FE0,0010\)"):
        read_header(cut(whole, tmp_path / "cut.dcm", whole.stat().st_size - 100))


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
            read_header(cut(whole, tmp_path / "cut.dcm", length))
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
        read_header(cut(source, tmp_path / name, source.stat().st_size - length_from_end))
    assert reason in refused.value.message


def test_deflated_transfer_syntax_is_read(tmp_path: Path) -> None:
    ds = next(ct_series(1, rows=32, columns=32, transfer_syntax=DeflatedExplicitVRLittleEndian))
    write_part10(ds, tmp_path / "deflated.dcm")
    header = read_header(tmp_path / "deflated.dcm")
    assert header.transfer_syntax == DeflatedExplicitVRLittleEndian
    assert read_header(DATA / "test_files" / "image_dfl.dcm").transfer_syntax == (DeflatedExplicitVRLittleEndian)


def test_file_starting_with_file_meta_but_no_preamble_is_read(tmp_path: Path) -> None:
    whole = synthetic_file(tmp_path)
    bare = tmp_path / "no-preamble.dcm"
    bare.write_bytes(whole.read_bytes()[132:])
    assert read_header(bare) == read_header(whole)


def test_non_dicom_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello" * 100)
    with pytest.raises(InvalidInput, match="not a DICOM Part 10 file"):
        read_header(path)


@pytest.mark.parametrize("keyword", ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_missing_identifying_uid_is_refused(tmp_path: Path, keyword: str) -> None:
    path = synthetic_file(tmp_path, **{keyword: None})
    with pytest.raises(InvalidInput, match=f"missing {keyword}"):
        read_header(path)


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("StudyInstanceUID", "1.2.3/../../etc"), ("SeriesInstanceUID", "../x"), ("SOPInstanceUID", "1.2.3.a")],
)
def test_uid_that_could_leave_its_folder_is_refused(tmp_path: Path, keyword: str, value: str) -> None:
    path = synthetic_file(tmp_path, **{keyword: value})
    with pytest.raises(InvalidUID):
        read_header(path)


def test_pixel_data_is_not_loaded(tmp_path: Path) -> None:
    ds = next(ct_series(1, rows=1024, columns=1024))
    write_part10(ds, tmp_path / "big.dcm")
    tracemalloc.start()
    try:
        read_header(tmp_path / "big.dcm")
        dataset = read_dataset(tmp_path / "big.dcm")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 512 * 1024
    assert dataset.get_item(0x7FE00010, keep_deferred=True).value is None
    assert dataset.PatientID == "SYN-CT"


def test_extract_meta_fills_state_and_image_records(tmp_path: Path) -> None:
    ds = next(ct_series(1, rows=16, columns=16, patient_name="Doe^Jane", patient_id="P-7"))
    ds.SeriesNumber = 4
    ds.InstanceNumber = 12
    ds.StationName = "CT01"
    write_part10(ds, tmp_path / "ct.dcm")
    state, image = extract_meta(tmp_path / "ct.dcm", "acme", "acme/a/b/c.dcm", 1234, "ab" * 32)
    assert (state.tenant_id, state.patient_id, state.patient_name) == ("acme", "P-7", "Doe^Jane")
    assert (state.study_instance_uid, state.series_instance_uid) == (ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert (state.modality, state.series_number, state.station_name, state.study_date) == ("CT", 4, "CT01", "20240102")
    assert state.updated_at == ""
    assert (image.sop_instance_uid, image.instance_number, image.rows, image.columns) == (ds.SOPInstanceUID, 12, 16, 16)
    assert (image.bits_allocated, image.number_of_frames) == (16, None)
    assert image.image_type == "ORIGINAL\\PRIMARY\\AXIAL"
    assert image.acquisition_date_time == "20240102101500"
    assert (image.file_path, image.file_size, image.sha256) == ("acme/a/b/c.dcm", 1234, "ab" * 32)
    assert image.transfer_syntax == ds.file_meta.TransferSyntaxUID


def test_acquisition_date_time_falls_back_to_date_and_time(tmp_path: Path) -> None:
    path = synthetic_file(tmp_path, AcquisitionDateTime=None, AcquisitionDate="20230405", AcquisitionTime="061530")
    assert extract_meta(path, "t", "f", 1, "s")[1].acquisition_date_time == "20230405061530"


def test_missing_text_is_empty_and_missing_number_is_none(tmp_path: Path) -> None:
    path = synthetic_file(tmp_path, SeriesNumber=None, InstanceNumber=None, PatientSex=None)
    state, image = extract_meta(path, "t", "f", 1, "s")
    assert (state.series_number, image.instance_number, state.patient_sex) == (None, None, "")
    assert state.performed_procedure_step_start_date == ""


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
    path = DATA / "charset_files" / name
    state, _ = extract_meta(path, "t", "f", 1, "s")
    assert state.patient_name == patient_name


def test_specific_character_set_applies_to_patient_id(tmp_path: Path) -> None:
    path = synthetic_file(tmp_path, SpecificCharacterSet="GB18030", PatientID="患者-1")
    assert read_header(path).patient_id == "患者-1"


def test_implicit_vr_file_is_read(tmp_path: Path) -> None:
    ds = next(ct_series(1, rows=16, columns=16, transfer_syntax=ImplicitVRLittleEndian))
    write_part10(ds, tmp_path / "implicit.dcm")
    assert read_header(tmp_path / "implicit.dcm").sop_instance_uid == ds.SOPInstanceUID
