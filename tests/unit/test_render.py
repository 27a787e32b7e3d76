"""Rendering (dicom/render.py): JPEG/PNG frames with the PS3.4 grayscale pipeline, colour, viewport."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from PIL import Image
from pydicom.data import get_testdata_file
from test_codecs import DECODABLE

from dicomcloud.config import LimitsSettings
from dicomcloud.dicom.render import (
    GIF,
    JPEG,
    PNG,
    RenderOptions,
    Viewport,
    Window,
    number_of_frames,
    parse_quality,
    parse_viewport,
    parse_window,
    render_frame,
)
from dicomcloud.errors import InvalidInput, NotFound

MAX_SIDE = LimitsSettings().max_viewport


def data_file(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, name
    return Path(path)


def render(path: Path, frame: int, options: RenderOptions) -> bytes:
    with path.open("rb") as stream:
        return render_frame(stream, frame, options)


def frames_in(path: Path) -> int:
    with path.open("rb") as stream:
        return number_of_frames(stream)


def decode(data: bytes, fmt: str) -> Image.Image:
    image = Image.open(BytesIO(data))
    assert image.format == fmt
    image.load()
    return image


def pixels(data: bytes, fmt: str = "PNG") -> NDArray[np.int64]:
    return np.asarray(decode(data, fmt), dtype=np.int64)


def render_png(
    path: Path, frame: int = 1, window: Window | None = None, viewport: Viewport | None = None
) -> NDArray[np.int64]:
    return pixels(render(path, frame, RenderOptions(media_type=PNG, window=window, viewport=viewport)))


def assert_sensibly_windowed(gray: NDArray[np.int64]) -> None:
    """Neither blank nor mostly clipped: the body spans many grey levels."""
    assert gray.ndim == 2
    assert len(np.unique(gray)) > 64
    assert np.mean((gray == 0) | (gray == 255)) < 0.5
    assert gray.std() > 20


def test_ct_renders_as_a_valid_jpeg_with_the_objects_window() -> None:
    image = decode(render(data_file("CT_small.dcm"), 1, RenderOptions()), "JPEG")
    assert (image.mode, image.size) == ("L", (128, 128))
    assert_sensibly_windowed(np.asarray(image, dtype=np.int64))


def test_ct_window_is_applied_to_modality_values() -> None:
    """CT_small's stored values plus its Rescale Intercept are HU; a window around them is linear."""
    path = data_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    center, width = float(np.median(hu)), 400.0
    gray = render_png(path, window=Window(center, width))
    expected = np.clip(((hu - (center - 0.5)) / (width - 1) + 0.5), 0, 1) * 255
    assert np.abs(gray - np.round(expected)).max() <= 1


def test_mr_renders_as_a_valid_png_sensibly_windowed() -> None:
    gray = render_png(data_file("MR_small.dcm"))
    assert gray.shape == (64, 64)
    assert_sensibly_windowed(gray)


def test_without_a_window_the_modality_range_is_used(tmp_path: Path) -> None:
    ds = pydicom.dcmread(data_file("MR_small.dcm"))
    for keyword in ("WindowCenter", "WindowWidth"):
        ds.pop(keyword, None)
    path = tmp_path / "nowindow.dcm"
    ds.save_as(path)
    gray = render_png(path)
    assert (gray.min(), gray.max()) == (0, 255)


def test_a_voi_lut_sequence_is_applied_when_no_window_is_asked(tmp_path: Path) -> None:
    ds = pydicom.dcmread(data_file("MR_small.dcm"))
    stored = ds.pixel_array
    entries = int(stored.max()) + 1
    lut = (65535 - np.arange(entries) * 65535 // (entries - 1)).astype(np.uint16)  # an inverting ramp
    item = pydicom.Dataset()
    item.LUTDescriptor = [entries, 0, 16]
    item.add_new("LUTData", "US", lut.tolist())
    ds.VOILUTSequence = [item]
    path = tmp_path / "voilut.dcm"
    ds.save_as(path)
    assert np.abs(render_png(path) - np.round(lut[stored] / 65535 * 255)).max() == 0


def test_monochrome1_is_rendered_inverted_relative_to_its_monochrome2_twin(tmp_path: Path) -> None:
    source = data_file("MR_small.dcm")
    ds = pydicom.dcmread(source)
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = tmp_path / "mono1.dcm"
    ds.save_as(inverted)
    assert np.array_equal(render_png(inverted), 255 - render_png(source))


def test_a_deflated_file_renders_like_its_explicit_little_endian_twin(tmp_path: Path) -> None:
    source = data_file("image_dfl.dcm")
    ds = pydicom.dcmread(source)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    twin = tmp_path / "inflated.dcm"
    ds.save_as(twin, enforce_file_format=True)
    assert np.array_equal(render_png(source), render_png(twin))


def test_rgb_renders_as_rgb() -> None:
    rgb = render_png(data_file("examples_rgb_color.dcm"))
    ds = pydicom.dcmread(data_file("examples_rgb_color.dcm"))
    assert rgb.shape == (ds.Rows, ds.Columns, 3)
    assert np.array_equal(rgb, ds.pixel_array)


def test_ybr_is_converted_to_the_same_colours_as_its_rgb_twin() -> None:
    ybr = render_png(data_file("SC_ybr_full_422_uncompressed.dcm"))
    rgb = render_png(data_file("SC_rgb_rle.dcm"))
    assert ybr.shape == rgb.shape == (100, 100, 3)
    assert np.abs(ybr - rgb).max() <= 8  # 4:2:2 chroma subsampling at colour edges


def test_ybr_jpeg_multiframe_renders_each_frame_in_colour() -> None:
    path = data_file("examples_ybr_color.dcm")
    assert frames_in(path) == 30
    first, last = render_png(path, 1), render_png(path, 30)
    assert first.shape[-1] == 3
    assert not np.array_equal(first, last)
    assert (np.abs(first[..., 0] - first[..., 1]) > 20).any()  # not grey


def test_palette_colour_is_looked_up() -> None:
    path = data_file("examples_palette.dcm")
    ds = pydicom.dcmread(path)
    rgb = render_png(path)
    assert rgb.shape == (ds.Rows, ds.Columns, 3)
    red = np.frombuffer(ds.RedPaletteColorLookupTableData, dtype="<u2")
    first, index = int(ds.RedPaletteColorLookupTableDescriptor[1]), int(ds.pixel_array[0, 0])
    assert abs(rgb[0, 0, 0] - round(red[max(index - first, 0)] / 65535 * 255)) <= 1
    assert (rgb[..., 0] != rgb[..., 2]).any()


def test_window_parameter_changes_the_output() -> None:
    path = data_file("CT_small.dcm")
    default, narrow = render_png(path), render_png(path, window=Window(40, 80))
    assert not np.array_equal(default, narrow)
    assert np.mean((narrow == 0) | (narrow == 255)) > np.mean((default == 0) | (default == 255))


def test_sigmoid_and_linear_exact_windows_differ_from_linear() -> None:
    path = data_file("CT_small.dcm")
    linear = render_png(path, window=parse_window("40,400"))
    sigmoid = render_png(path, window=parse_window("40,400,sigmoid"))
    exact = render_png(path, window=parse_window("40,400,linear-exact"))
    assert not np.array_equal(linear, sigmoid)
    assert np.abs(linear - exact).max() <= 1


def test_viewport_fits_the_image_keeping_its_aspect_ratio() -> None:
    path = data_file("CT_small.dcm")  # 128 x 128
    assert render_png(path, viewport=parse_viewport("64,32", MAX_SIDE)).shape == (32, 32)
    assert render_png(path, viewport=parse_viewport("300,400", MAX_SIDE)).shape == (300, 300)


def test_viewport_source_region_crops_and_negative_size_flips() -> None:
    path = data_file("CT_small.dcm")
    whole = render_png(path)
    left = render_png(path, viewport=Viewport(64, 128, (0, 0, 64, 128)))
    assert np.array_equal(left, whole[:, :64])
    flipped = render_png(path, viewport=parse_viewport("128,128,128,0,-128,", MAX_SIDE))
    assert np.array_equal(flipped, whole[:, ::-1])


def test_lower_quality_makes_a_smaller_jpeg() -> None:
    path = data_file("MR_small.dcm")
    best = render(path, 1, RenderOptions(media_type=JPEG, quality=100))
    worst = render(path, 1, RenderOptions(media_type=JPEG, quality=5))
    decode(worst, "JPEG")
    assert len(worst) < len(best)


def test_a_frame_beyond_the_last_is_not_found() -> None:
    assert frames_in(data_file("CT_small.dcm")) == 1
    with pytest.raises(NotFound, match="out of range"):
        render(data_file("CT_small.dcm"), 2, RenderOptions())


def test_an_instance_that_is_not_an_image_has_no_frame_to_render() -> None:
    assert frames_in(data_file("rtplan.dcm")) == 0
    with pytest.raises(NotFound, match="not an image"):
        render(data_file("rtplan.dcm"), 1, RenderOptions())


def ramp_file(tmp_path: Path, **attributes: object) -> Path:
    """A 16 x 16 MONOCHROME2 image whose stored values are 0..255, row by row, with `attributes` added."""
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", pydicom.uid.generate_uid()
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    frames = int(str(attributes.get("NumberOfFrames", 1)))
    ds.PixelData = np.tile(np.arange(256, dtype="<u2"), frames).tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    path = tmp_path / f"ramp-{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def item(**attributes: object) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        # C.11.2.1.2.1 LINEAR: ((x - (c - 0.5)) / (w - 1) + 0.5), clipped; width 1 thresholds at c - 0.5.
        ("100.5,1,linear", np.where(np.arange(256) > 100, 255, 0)),
        ("128,101,linear", np.clip(np.round(((np.arange(256) - 127.5) / 100 + 0.5) * 255), 0, 255)),
        # C.11.2.1.3.2 LINEAR_EXACT: ((x - c) / w + 0.5), clipped.
        ("128,100,linear-exact", np.clip(np.round(((np.arange(256) - 128) / 100 + 0.5) * 255), 0, 255)),
        # C.11.2.1.3.1 SIGMOID: 1 / (1 + exp(-4 (x - c) / w)).
        ("128,50,sigmoid", np.round(255 / (1 + np.exp(-4 * (np.arange(256) - 128) / 50)))),
    ],
)
def test_windows_follow_ps3_3_exactly(tmp_path: Path, window: str, expected: NDArray[np.float64]) -> None:
    gray = render_png(ramp_file(tmp_path), window=parse_window(window))
    assert np.array_equal(gray.ravel(), expected.astype(np.int64))


def test_each_frame_of_an_enhanced_object_has_its_own_rescale_and_window(tmp_path: Path) -> None:
    shared = item(
        PixelValueTransformationSequence=[item(RescaleSlope=1, RescaleIntercept=0, RescaleType="US")],
        FrameVOILUTSequence=[item(WindowCenter=0, WindowWidth=10)],
    )
    second = item(
        PixelValueTransformationSequence=[item(RescaleSlope=1, RescaleIntercept=1000, RescaleType="US")],
        FrameVOILUTSequence=[item(WindowCenter=1300, WindowWidth=10, VOILUTFunction="LINEAR_EXACT")],
    )
    path = ramp_file(
        tmp_path,
        NumberOfFrames=2,
        SharedFunctionalGroupsSequence=[shared],
        PerFrameFunctionalGroupsSequence=[item(), second],
    )
    # Frame 1: shared rescale and window (everything above 5 white); frame 2: its own (1000..1255 below 1295).
    assert (render_png(path, 1).ravel()[6:] == 255).all()
    assert (render_png(path, 2) == 0).all()
    # A requested window applies to each frame's own modality values.
    window = parse_window("1128,100,linear-exact")
    assert (render_png(path, 1, window=window) == 0).all()
    plain = render_png(ramp_file(tmp_path), window=parse_window("128,100,linear-exact"))
    assert np.array_equal(render_png(path, 2, window=window), plain)


@pytest.mark.parametrize(
    "text", ["40", "40,0", "a,b", "40,400,cubic", "40,400,linear,x", "nan,10", "40,0,linear-exact", "40,0,sigmoid"]
)
def test_malformed_window_is_invalid(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_window(text)


@pytest.mark.parametrize(
    "text", ["64", "0,64", "64,64,1,2", "64,64,-1,0,10,10", "a,64", "64,64,0,0,x,1", "4097,64", "99999,99999"]
)
def test_malformed_or_oversized_viewport_is_invalid(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_viewport(text, MAX_SIDE)


@pytest.mark.parametrize("text", ["0", "101", "high", "-5", ""])
def test_quality_outside_1_to_100_is_invalid(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_quality(text)


@pytest.mark.parametrize("media_type", [JPEG, PNG, GIF])
@pytest.mark.parametrize("path", DECODABLE, ids=lambda p: p.name)
def test_every_pixel_layout_pydicom_decodes_renders(path: Path, media_type: str) -> None:
    header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    rendered = render(path, frames_in(path), RenderOptions(media_type=media_type))  # the last frame
    image = decode(rendered, media_type.split("/")[1].upper())
    assert image.size == (header.Columns, header.Rows)


def test_pixels_taller_than_wide_are_shown_in_the_patients_proportions(tmp_path: Path) -> None:
    assert decode(render(ramp_file(tmp_path, PixelSpacing=[1.0, 0.5]), 1, RenderOptions()), "JPEG").size == (16, 32)
    assert decode(render(ramp_file(tmp_path, PixelAspectRatio=[1, 2]), 1, RenderOptions()), "JPEG").size == (32, 16)
    per_frame = ramp_file(
        tmp_path,
        NumberOfFrames=2,
        PixelSpacing=[1.0, 1.0],
        SharedFunctionalGroupsSequence=[item(PixelMeasuresSequence=[item(PixelSpacing=[1.0, 1.0])])],
        PerFrameFunctionalGroupsSequence=[item(), item(PixelMeasuresSequence=[item(PixelSpacing=[3.0, 1.0])])],
    )
    assert decode(render(per_frame, 1, RenderOptions()), "JPEG").size == (16, 16)
    assert decode(render(per_frame, 2, RenderOptions()), "JPEG").size == (16, 48)


@pytest.mark.parametrize("spacing", [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1e6, 1.0], [-1.0, 1.0], [float("nan"), 1.0]])
def test_a_pixel_spacing_that_cannot_be_true_draws_square_pixels(tmp_path: Path, spacing: list[float]) -> None:
    assert decode(render(ramp_file(tmp_path, PixelSpacing=spacing), 1, RenderOptions()), "JPEG").size == (16, 16)
