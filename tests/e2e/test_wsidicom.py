"""wsidicom opens a whole-slide image over DICOMweb from `dicomcloud up`: a two-level VL Whole Slide
Microscopy pyramid (TILED_FULL, JPEG Baseline tiles, as scanners write them), stored with STOW-RS, read back
tile by tile (frame numbers) and as regions across tiles, and compared with the tiles that were sent.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, JPEGBaseline8Bit, VLWholeSlideMicroscopyImageStorage
from wsidicom import WsiDicom, WsiDicomWebClient

from bench.synthetic import new_uid

from .conftest import Archive
from .dicom_clients import stow

pytestmark = pytest.mark.e2e

TILE = 64
BASE_SIZE = (150, 200)  # rows, columns: 3 x 4 tiles, the last row and column partly outside the image
PIXEL_SPACING_MM = 0.00025
IMAGE_TYPE = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]


@dataclass
class Level:
    """One pyramid level as sent: its JPEG tiles in frame order and the image they decode to."""

    dataset: Dataset
    tiles: list[bytes]  # as stored, each fragment padded to an even length
    decoded: NDArray[np.uint8]  # rows x columns x 3, the tiles decoded and put side by side, padding included


def slide_image(rows: int, columns: int) -> NDArray[np.uint8]:
    """Gradients and a checkerboard: every tile differs, and a misplaced one shows."""
    y, x = np.mgrid[0:rows, 0:columns]
    channels = [x * 255 // (columns - 1), y * 255 // (rows - 1), ((x // 8 + y // 8) % 2) * 200 + 20]
    return np.stack(channels, axis=-1).astype(np.uint8)


def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def slide_level(image: NDArray[np.uint8], downsample: int, study: str, series: str, frame_of_reference: str) -> Level:
    """A VL Whole Slide Microscopy image of `image` at 1/`downsample` of the base resolution, TILED_FULL: tiles row
    by row, the edges padded with black."""
    rows, columns, _ = image.shape
    spacing_mm = PIXEL_SPACING_MM * downsample
    tiles_down, tiles_across = -(-rows // TILE), -(-columns // TILE)
    padded = np.zeros((tiles_down * TILE, tiles_across * TILE, 3), np.uint8)
    padded[:rows, :columns] = image
    tiles, decoded = [], np.zeros_like(padded)
    for row in range(tiles_down):
        for column in range(tiles_across):
            area = np.s_[row * TILE : (row + 1) * TILE, column * TILE : (column + 1) * TILE]
            jpeg = io.BytesIO()
            Image.fromarray(padded[area]).save(jpeg, format="JPEG", quality=90, subsampling="4:2:2")
            tiles.append(jpeg.getvalue())
            decoded[area] = np.asarray(Image.open(io.BytesIO(tiles[-1])).convert("RGB"))

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = VLWholeSlideMicroscopyImageStorage, new_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
    ds.Modality, ds.PatientName, ds.PatientID = "SM", "Slide^Whole", "WSIDICOM-16"
    ds.StudyDate = ds.ContentDate = "20240102"
    ds.StudyTime = ds.ContentTime = "101500"
    ds.AccessionNumber = ds.ReferringPhysicianName = ds.PatientBirthDate = ds.PatientSex = ""
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, downsample
    ds.Manufacturer, ds.ManufacturerModelName = "dicomcloud", "synthetic slide"
    ds.DeviceSerialNumber = ds.SoftwareVersions = "1"
    ds.ImageType = IMAGE_TYPE
    ds.ContainerIdentifier = "SLIDE-16"
    ds.IssuerOfTheContainerIdentifierSequence = []
    ds.ContainerTypeCodeSequence = [code("433466003", "SCT", "Microscope slide")]
    specimen = Dataset()
    specimen.SpecimenIdentifier, specimen.SpecimenUID = "SPECIMEN-16", new_uid()
    specimen.IssuerOfTheSpecimenIdentifierSequence = []
    specimen.SpecimenPreparationSequence = []
    ds.SpecimenDescriptionSequence = [specimen]
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = rows, columns
    ds.TotalPixelMatrixFocalPlanes = ds.NumberOfOpticalPaths = 1
    ds.ImagedVolumeWidth, ds.ImagedVolumeHeight, ds.ImagedVolumeDepth = columns * spacing_mm, rows * spacing_mm, 0.001
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem, origin.YOffsetInSlideCoordinateSystem = 20.0, 40.0
    ds.TotalPixelMatrixOriginSequence = [origin]
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    measures = Dataset()
    measures.PixelSpacing, measures.SliceThickness = [spacing_mm, spacing_mm], 0.001
    frame_type = Dataset()
    frame_type.FrameType = IMAGE_TYPE
    shared = Dataset()
    shared.PixelMeasuresSequence, shared.WholeSlideMicroscopyImageFrameTypeSequence = [measures], [frame_type]
    ds.SharedFunctionalGroupsSequence = [shared]
    optical_path = Dataset()
    optical_path.OpticalPathIdentifier = "1"
    optical_path.IlluminationTypeCodeSequence = [code("111744", "DCM", "Brightfield illumination")]
    optical_path.IlluminationColorCodeSequence = [code("414298005", "SCT", "Full Spectrum")]
    ds.OpticalPathSequence = [optical_path]
    ds.VolumetricProperties, ds.FocusMethod = "VOLUME", "AUTO"
    ds.SpecimenLabelInImage = ds.BurnedInAnnotation = ds.ExtendedDepthOfField = "NO"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.Rows = ds.Columns = TILE
    ds.NumberOfFrames = len(tiles)
    ds.LossyImageCompression, ds.LossyImageCompressionMethod = "01", "ISO_10918_1"
    ds.PixelData = encapsulate(tiles, has_bot=True)
    stored = list(generate_frames(ds.PixelData, number_of_frames=len(tiles)))
    ds["PixelData"].VR = "OB"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return Level(ds, stored, decoded)


@pytest.fixture(scope="module")
def levels(archive: Archive) -> list[Level]:
    """The base level and one at half its resolution, in one series, stored in one STOW-RS request."""
    study, series, frame_of_reference = new_uid(), new_uid(), new_uid()
    base = slide_image(*BASE_SIZE)
    half = base.reshape(BASE_SIZE[0] // 2, 2, BASE_SIZE[1] // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    pyramid = [
        slide_level(base, 1, study, series, frame_of_reference),
        slide_level(half, 2, study, series, frame_of_reference),
    ]
    parts = []
    for level in pyramid:
        part10 = io.BytesIO()
        level.dataset.save_as(part10, enforce_file_format=True)
        parts.append(part10.getvalue())
    response = stow(archive.dicomweb_url(), parts)
    assert response.status_code == 200, response.text
    return pyramid


@pytest.fixture(scope="module")
def slide(archive: Archive, levels: list[Level]) -> Iterator[WsiDicom]:
    base = levels[0].dataset
    client = WsiDicomWebClient.create_client(archive.dicomweb_url())
    with WsiDicom.open_web(client, base.StudyInstanceUID, base.SeriesInstanceUID) as opened:
        yield opened


def test_wsidicom_sees_the_pyramid(slide: WsiDicom, levels: list[Level]) -> None:
    assert len(slide.levels) == len(levels)
    assert (slide.size.height, slide.size.width) == BASE_SIZE
    assert (slide.tile_size.width, slide.tile_size.height) == (TILE, TILE)


@pytest.mark.parametrize("level", [0, 1])
def test_each_tile_is_the_frame_that_was_sent(slide: WsiDicom, levels: list[Level], level: int) -> None:
    sent = levels[level]
    tiles_across = int(sent.dataset.TotalPixelMatrixColumns + TILE - 1) // TILE
    for frame, tile in enumerate(sent.tiles):
        position = (frame % tiles_across, frame // tiles_across)
        assert slide.read_encoded_tile(level, position, crop_to_image_boundary=False) == tile, frame + 1


@pytest.mark.parametrize(("level", "location", "size"), [(0, (10, 20), (150, 100)), (1, (30, 5), (60, 60))])
def test_a_region_across_tiles_is_the_image_that_was_sent(
    slide: WsiDicom, levels: list[Level], level: int, location: tuple[int, int], size: tuple[int, int]
) -> None:
    (x, y), (width, height) = location, size
    region = np.asarray(slide.read_region(location, level, size).convert("RGB"))
    assert (region == levels[level].decoded[y : y + height, x : x + width]).all()
