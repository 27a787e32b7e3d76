"""DICOM JSON (PS3.18 Annex F), checked rule by rule and against pydicom's to_json_dict."""

from __future__ import annotations

import base64
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from bench.synthetic import ct_series, write_part10
from dicomcloud.dicom.dicomjson import (
    bulk_value,
    dataset_to_json,
    dumps,
    json_to_dataset,
    keyword_values_to_json,
    parse_tag_path,
    tag_path,
)
from dicomcloud.dicom.parse import DEFER_SIZE, parse_instance
from dicomcloud.errors import InvalidInput, InvalidUID, NotFound

DATA = Path(pydicom.data.__file__).parent
# pydicom warns while decoding the deliberately odd values below.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")


def read_dataset(path: Path) -> Dataset:
    """The dataset of a file as `parse_instance` reads it: values over DEFER_SIZE are read on access."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, defer_size=DEFER_SIZE, force=True)


def is_complete(path: Path) -> bool:
    """Whether `parse_instance` finds the file a complete Part 10 object, with its identity or without."""
    try:
        with path.open("rb") as stream:
            parse_instance(stream)
    except InvalidUID:
        return True
    except InvalidInput as exc:
        return exc.message.startswith("missing ")
    return True


def complete_files() -> list[str]:
    return [
        str(path.relative_to(DATA))
        for folder in ("test_files", "charset_files")
        for path in sorted((DATA / folder).glob("*.dcm"))
        if is_complete(path)
    ]


def written(ds: Dataset, tmp_path: Path, syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """`ds` as it reads back from a Part 10 file: raw elements, deferred values, charsets applied."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.5"
    path = tmp_path / "written.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path, enforce_file_format=True)
    return read_dataset(path)


def comparable_to_pydicom(obj: dict[str, Any]) -> dict[str, Any]:
    """pydicom's output with the differences this module documents taken out."""
    out = {}
    for key, attribute in obj.items():
        tag = int(key, 16)
        if not tag & 0xFFFF or tag == 0xFFFCFFFC:
            continue
        attribute = dict(attribute)
        values = attribute.get("Value")
        if attribute["vr"] == "SQ":
            attribute["Value"] = [comparable_to_pydicom(item) for item in values or []]
        elif attribute["vr"] == "PN" and values:
            attribute["Value"] = [{k: v for k, v in value.items() if v} or None for value in values]
        elif values is not None:
            attribute["Value"] = [None if value == "" else value for value in values]
        if attribute.get("Value") == []:
            del attribute["Value"]
        out[key] = attribute
    return out


def same(ours: Any, theirs: Any, vr: str = "") -> bool:
    if isinstance(theirs, float) and isinstance(ours, int | float):
        if vr == "FL":
            return bool(np.float32(ours) == np.float32(theirs))
        return math.isclose(ours, theirs, rel_tol=1e-12) or (math.isnan(ours) and math.isnan(theirs))
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return ours.keys() == theirs.keys() and all(same(ours[k], theirs[k], ours.get("vr", vr)) for k in ours)
    if isinstance(ours, list) and isinstance(theirs, list):
        return len(ours) == len(theirs) and all(same(a, b, vr) for a, b in zip(ours, theirs, strict=True))
    return bool(ours == theirs)


@pytest.mark.parametrize("name", complete_files())
def test_agrees_with_pydicom_to_json_dict(name: str) -> None:
    path = DATA / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = pydicom.dcmread(path)
        try:
            theirs = comparable_to_pydicom(reference.to_json_dict())
        except ValueError:
            pytest.skip("pydicom cannot encode this file")
    ours = dataset_to_json(read_dataset(path))
    if not reference.original_encoding[1]:
        for obj in (ours, theirs):
            obj.pop("7FE00010", None)
    differing = [key for key in sorted(set(ours) | set(theirs)) if not same(ours.get(key), theirs.get(key))]
    assert differing == []
    json.loads(dumps(ours))


def test_keys_are_sorted_uppercase_tags_without_group_length_or_file_meta(tmp_path: Path) -> None:
    ds = Dataset()
    ds.add_new(0x00100000, "UL", 10)
    ds.PatientName = "A^B"
    ds.add_new(0x0009000A, "LO", "private")
    ds.StudyDate = "20200101"
    obj = dataset_to_json(written(ds, tmp_path))
    assert list(obj) == sorted(obj)
    assert "00100000" not in obj
    assert not any(key.startswith("0002") for key in obj)
    assert all(key == key.upper() and len(key) == 8 for key in obj)
    assert obj["0009000A"] == {"vr": "LO", "Value": ["private"]}


def test_empty_attribute_has_only_vr(tmp_path: Path) -> None:
    ds = Dataset()
    ds.PatientName = ""
    ds.ReferringPhysicianName = None
    ds.StudyDate = ""
    ds.SeriesNumber = None
    ds.ReferencedImageSequence = Sequence()
    ds.add_new(0x00091010, "OB", b"")
    obj = dataset_to_json(written(ds, tmp_path))
    for key in ("00100010", "00080090", "00080020", "00200011", "00081140", "00091010"):
        assert list(obj[key]) == ["vr"]


def test_empty_value_among_several_is_null(tmp_path: Path) -> None:
    ds = Dataset()
    ds.ImageType = ["DERIVED", "", "MPR"]
    obj = dataset_to_json(written(ds, tmp_path))
    assert obj["00080008"]["Value"] == ["DERIVED", None, "MPR"]


def test_numbers_are_json_numbers(tmp_path: Path) -> None:
    ds = Dataset()
    ds.InstanceNumber = "12"
    ds.SliceThickness = "1.5e-3"
    ds.PixelSpacing = ["5", "0.25"]
    ds.Rows = 512
    ds.add_new(0x00189219, "SS", -3)
    ds.add_new(0x00181311, "UL", 4000000000)
    ds.add_new(0x00189306, "FD", 0.1)
    ds.add_new(0x00189328, "FL", 0.1)
    ds.add_new(0x00189307, "SL", [-1, 2])
    obj = dataset_to_json(written(ds, tmp_path))
    assert obj["00200013"]["Value"] == [12]
    assert obj["00180050"]["Value"] == [0.0015]
    assert obj["00280030"]["Value"] == [5, 0.25]
    assert obj["00280010"]["Value"] == [512]
    assert obj["00189219"]["Value"] == [-3]
    assert obj["00181311"]["Value"] == [4000000000]
    assert obj["00189306"]["Value"] == [0.1]
    assert obj["00189328"]["Value"] == [0.1]
    assert obj["00189307"]["Value"] == [-1, 2]
    assert b'"Value":[0.0015]' in dumps(obj)


def test_decimal_text_that_is_no_number_is_kept_as_text(tmp_path: Path) -> None:
    ds = Dataset()
    ds.add_new(0x00280030, "DS", ["1.0", "nan"])
    assert dataset_to_json(written(ds, tmp_path))["00280030"]["Value"] == [1.0, "nan"]
    bad = dataset_to_json(read_dataset(DATA / "test_files" / "badVR.dcm"))
    assert bad["00280008"] == {"vr": "IS", "Value": ["1A"]}


def test_non_finite_floats_are_strings_and_read_back(tmp_path: Path) -> None:
    ds = Dataset()
    ds.add_new(0x00189306, "FD", [math.nan, math.inf, -math.inf, 2.0])
    obj = dataset_to_json(written(ds, tmp_path))
    assert obj["00189306"]["Value"] == ["NaN", "Infinity", "-Infinity", 2.0]
    back = json_to_dataset(json.loads(dumps(obj)))[0x00189306].value
    assert math.isnan(back[0]) and list(back)[1:] == [math.inf, -math.inf, 2.0]


def test_very_large_64_bit_integers_are_strings(tmp_path: Path) -> None:
    ds = Dataset()
    ds.add_new(0x00720082, "SV", [2**60, -5])
    ds.add_new(0x0072007F, "UV", [2**63 + 1])
    obj = dataset_to_json(written(ds, tmp_path))
    assert obj["00720082"]["Value"] == [str(2**60), -5]
    assert obj["0072007F"]["Value"] == [str(2**63 + 1)]


@pytest.mark.parametrize(("representation", "vr", "value"), [(0, "US", 65535), (1, "SS", -1)])
def test_us_or_ss_follows_pixel_representation(tmp_path: Path, representation: int, vr: str, value: int) -> None:
    ds = Dataset()
    ds.PixelRepresentation = representation
    ds.BitsAllocated = 16
    ds.add_new(0x00280106, "US", 0xFFFF)
    obj = dataset_to_json(written(ds, tmp_path, ImplicitVRLittleEndian))
    assert obj["00280106"] == {"vr": vr, "Value": [value]}


def test_person_name_is_an_object_of_its_present_groups(tmp_path: Path) -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    ds.ReferringPhysicianName = "=山田"
    ds.OtherPatientNames = ["Doe^John", "", "Roe^Jane"]
    obj = dataset_to_json(written(ds, tmp_path))
    assert obj["00100010"]["Value"] == [
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    ]
    assert obj["00080090"]["Value"] == [{"Ideographic": "山田"}]
    assert obj["00101001"]["Value"] == [{"Alphabetic": "Doe^John"}, None, {"Alphabetic": "Roe^Jane"}]


def test_attribute_tags_are_eight_hex_digits(tmp_path: Path) -> None:
    ds = Dataset()
    ds.FrameIncrementPointer = [0x00181063, 0x0018106A]
    obj = dataset_to_json(written(ds, tmp_path))
    assert obj["00280009"] == {"vr": "AT", "Value": ["00181063", "0018106A"]}


def test_sequence_value_is_an_array_of_item_objects(tmp_path: Path) -> None:
    inner = Dataset()
    inner.CodeValue = "T-D4000"
    empty = Dataset()
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.4.5"
    item.AnatomicRegionSequence = Sequence([inner])
    ds = Dataset()
    ds.ReferencedImageSequence = Sequence([item, empty])
    obj = dataset_to_json(written(ds, tmp_path))
    assert obj["00081140"] == {
        "vr": "SQ",
        "Value": [
            {
                "00081155": {"vr": "UI", "Value": ["1.2.3.4.5"]},
                "00082218": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["T-D4000"]}}]},
            },
            {},
        ],
    }


def test_text_is_one_value_and_code_strings_split(tmp_path: Path) -> None:
    ds = Dataset()
    ds.ImageComments = "a\\b"
    ds.ImageType = "ORIGINAL\\PRIMARY"
    ds.add_new(0x00081190, "UR", "http://x/a\\b")
    obj = dataset_to_json(written(ds, tmp_path))
    assert obj["00204000"]["Value"] == ["a\\b"]
    assert obj["00080008"]["Value"] == ["ORIGINAL", "PRIMARY"]
    assert obj["00081190"]["Value"] == ["http://x/a\\b"]


def icon_dataset(tmp_path: Path, size: int) -> Dataset:
    icon = Dataset()
    icon.Rows, icon.Columns, icon.BitsAllocated = 1, size, 8
    icon.PixelData = bytes(range(256)) * (size // 256) + bytes(size % 256)
    icon["PixelData"].VR = "OB"
    ds = Dataset()
    ds.IconImageSequence = Sequence([icon])
    ds.add_new(0x00091010, "OB", b"\x01\x02")
    return written(ds, tmp_path)


def test_binary_over_threshold_is_a_bulk_data_uri_named_by_its_tag_path(tmp_path: Path) -> None:
    ds = icon_dataset(tmp_path, 2048)
    obj = dataset_to_json(ds, lambda path: f"https://x/bulk/{path}", threshold=1024)
    icon = obj["00880200"]["Value"][0]
    assert icon["7FE00010"] == {"vr": "OB", "BulkDataURI": "https://x/bulk/00880200/0/7FE00010"}
    assert obj["00091010"] == {"vr": "OB", "InlineBinary": base64.b64encode(b"\x01\x02").decode()}


def test_binary_within_threshold_or_without_uri_builder_is_inline(tmp_path: Path) -> None:
    ds = icon_dataset(tmp_path, 1024)
    inline = base64.b64encode(bytes(range(256)) * 4).decode()
    assert dataset_to_json(ds, lambda path: path, threshold=1024)["00880200"]["Value"][0]["7FE00010"] == {
        "vr": "OB",
        "InlineBinary": inline,
    }
    assert dataset_to_json(ds)["00880200"]["Value"][0]["7FE00010"]["InlineBinary"] == inline


def test_encapsulated_pixel_data_is_always_a_bulk_data_uri() -> None:
    ds = read_dataset(DATA / "test_files" / "JPEG2000.dcm")
    obj = dataset_to_json(ds, lambda path: f"bulk/{path}", threshold=10**9)
    assert obj["7FE00010"] == {"vr": "OB", "BulkDataURI": "bulk/7FE00010"}


def test_deferred_value_is_not_read_for_a_bulk_data_uri(tmp_path: Path) -> None:
    write_part10(next(ct_series(1, rows=256, columns=256)), tmp_path / "ct.dcm")
    ds = read_dataset(tmp_path / "ct.dcm")
    obj = dataset_to_json(ds, lambda path: f"bulk/{path}")
    assert obj["7FE00010"] == {"vr": "OW", "BulkDataURI": "bulk/7FE00010"}
    assert ds.get_item(0x7FE00010, keep_deferred=True).value is None


def test_unknown_private_element_in_implicit_vr_is_un_binary(tmp_path: Path) -> None:
    ds = Dataset()
    ds.add_new(0x00991001, "UN", b"\x00\x01\x02\x03")
    obj = dataset_to_json(written(ds, tmp_path, ImplicitVRLittleEndian))
    assert obj["00991001"] == {"vr": "UN", "InlineBinary": "AAECAw=="}


def test_inline_binary_of_a_big_endian_file_is_little_endian() -> None:
    little = dataset_to_json(read_dataset(DATA / "test_files" / "MR_small.dcm"))
    big = dataset_to_json(read_dataset(DATA / "test_files" / "MR_small_bigendian.dcm"))
    assert big["7FE00010"] == little["7FE00010"]


@pytest.mark.parametrize(
    ("name", "charset", "groups"),
    [
        ("chrX2.dcm", ["GB18030"], {"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小东"}),
        (
            "chrH31.dcm",
            [None, "ISO 2022 IR 87"],
            {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"},
        ),
    ],
    ids=["GB18030", "ISO_2022_IR_87"],
)
def test_names_in_other_character_sets_round_trip(name: str, charset: list[str | None], groups: dict[str, str]) -> None:
    ds = read_dataset(DATA / "charset_files" / name)
    obj = json.loads(dumps(dataset_to_json(ds)).decode("utf-8"))
    assert obj["00100010"]["Value"] == [groups]
    assert obj["00080005"]["Value"] == charset
    assert str(json_to_dataset(obj).PatientName) == "=".join(groups.values())


def test_json_round_trips_through_pydicom(tmp_path: Path) -> None:
    ds = next(ct_series(1, rows=8, columns=8, patient_name="王^小东"))
    write_part10(ds, tmp_path / "ct.dcm")
    obj = dataset_to_json(read_dataset(tmp_path / "ct.dcm"))
    back = json_to_dataset(obj)
    assert back.PatientName == "王^小东"
    assert back.PixelData == ds.PixelData
    assert back.ImagePositionPatient == ds.ImagePositionPatient
    assert dataset_to_json(back) == obj


def test_keyword_values_become_annex_f_attributes() -> None:
    obj = keyword_values_to_json(
        {
            "PatientName": "Doe^John",
            "NumberOfStudyRelatedSeries": 3,
            "ModalitiesInStudy": ["CT", "MR"],
            "StudyDate": "20200101",
            "SeriesNumber": 4,
            "StudyDescription": None,
            "AccessionNumber": "",
        }
    )
    assert obj == {
        "00080020": {"vr": "DA", "Value": ["20200101"]},
        "00080050": {"vr": "SH"},
        "00080061": {"vr": "CS", "Value": ["CT", "MR"]},
        "00081030": {"vr": "LO"},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]},
        "00200011": {"vr": "IS", "Value": [4]},
        "00201206": {"vr": "IS", "Value": [3]},
    }


def test_unknown_keyword_is_refused() -> None:
    with pytest.raises(InvalidInput, match="NoSuchKeyword"):
        keyword_values_to_json({"NoSuchKeyword": 1})


def test_dumps_is_compact_utf8() -> None:
    assert dumps({"00100010": {"vr": "PN", "Value": [{"Alphabetic": "王"}]}}) == (
        '{"00100010":{"vr":"PN","Value":[{"Alphabetic":"王"}]}}'.encode()
    )


def test_tag_path_round_trips() -> None:
    steps = [(0x00540016, 0), (0x00520011, 12), (0x00181072, None)]
    assert tag_path(steps) == "00540016/0/00520011/12/00181072"
    assert parse_tag_path("00540016/0/00520011/12/00181072") == steps
    assert parse_tag_path("7fe00010") == [(0x7FE00010, None)]


@pytest.mark.parametrize("path", ["", "7FE0001", "00540016/x/00181072", "00540016/0", "../etc", "00540016/-1/0018107"])
def test_malformed_tag_path_is_refused(path: str) -> None:
    with pytest.raises(InvalidInput):
        parse_tag_path(path)


def test_bulk_value_is_what_inline_binary_would_carry(tmp_path: Path) -> None:
    ds = icon_dataset(tmp_path, 2048)
    uri = dataset_to_json(ds, lambda path: path)["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"]
    inline = dataset_to_json(ds)["00880200"]["Value"][0]["7FE00010"]["InlineBinary"]
    assert bulk_value(ds, uri) == ("OB", base64.b64decode(inline))
    big = read_dataset(DATA / "test_files" / "MR_small_bigendian.dcm")
    little = read_dataset(DATA / "test_files" / "MR_small.dcm")
    assert bulk_value(big, "7FE00010") == bulk_value(little, "7FE00010")


@pytest.mark.parametrize("path", ["00880200/1/7FE00010", "00100010", "00880200/0/00280010", "7FE00010/0/00100010"])
def test_bulk_value_of_a_missing_or_non_binary_attribute_is_not_found(tmp_path: Path, path: str) -> None:
    with pytest.raises(NotFound):
        bulk_value(icon_dataset(tmp_path, 16), path)
