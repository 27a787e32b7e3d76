"""Rendered images (PS3.18 8.3.5, 10.4.1.1.3): one frame of a stored instance as JPEG, PNG or GIF.

The grayscale pipeline is PS3.4 N.2's: Modality LUT (Rescale Slope/Intercept or Modality LUT
Sequence), then the VOI transformation (the requested window, else the object's VOI LUT Sequence,
else its first Window Center/Width, else the minimum and maximum of the modality values), then
MONOCHROME1 inverted. An enhanced multi-frame object's rescale and window are the frame's own: its
Pixel Value Transformation and Frame VOI LUT functional groups, per frame over shared (PS3.3 C.7.6.16). Pixels
that are not square (Pixel Spacing, or the frame's Pixel Measures, else Pixel Aspect Ratio) are stretched to the
patient's proportions, as a viewer shows them.
Windows follow PS3.3 C.11.2.1.2-3 exactly (LINEAR, LINEAR_EXACT, SIGMOID). Colour objects come out as RGB:
YBR converted by pydicom's decoder (which also undoes JPEG 2000's colour transforms), PALETTE COLOR looked up;
a window does not apply to them. The source region and viewport come last, keeping the aspect ratio: the image
is scaled to fit inside the viewport.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from io import BytesIO
from typing import BinaryIO

import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import Image
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut

from dicomcloud.dicom.codecs import check_decoded_size, frame_array
from dicomcloud.errors import InvalidInput, NotFound

JPEG = "image/jpeg"
PNG = "image/png"
GIF = "image/gif"
RENDERED_MEDIA_TYPES = (JPEG, PNG, GIF)
DEFAULT_JPEG_QUALITY = 90
THUMBNAIL_SIZE = 128
# PS3.18 window functions -> PS3.3 C.11.2.1.3 VOI LUT Function values.
WINDOW_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: str = "LINEAR"  # a VOI LUT Function (0028,1056) value

    def __post_init__(self) -> None:
        # PS3.3 C.11.2.1.2.1: LINEAR needs a width of at least 1; C.11.2.1.3: LINEAR_EXACT and SIGMOID more than 0.
        wide_enough = self.width >= 1 if self.function == "LINEAR" else self.width > 0
        if not math.isfinite(self.center) or not math.isfinite(self.width) or not wide_enough:
            least = ">= 1" if self.function == "LINEAR" else "> 0"
            raise InvalidInput(f"window width must be a number {least} for {self.function}, center finite")


@dataclass(frozen=True)
class Viewport:
    """The output size (vw, vh) and optionally the source region (sx, sy, sw, sh); a negative sw or
    sh flips the region horizontally or vertically."""

    width: int
    height: int
    region: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class RenderOptions:
    media_type: str = JPEG
    window: Window | None = None
    viewport: Viewport | None = None
    quality: int | None = None


def _numbers(text: str, name: str) -> list[float]:
    try:
        values = [float(item) for item in text.split(",")]
    except ValueError:
        raise InvalidInput(f"{name}={text[:80]!r}: comma-separated numbers expected") from None
    if not all(math.isfinite(value) for value in values):
        raise InvalidInput(f"{name}={text[:80]!r}: finite numbers expected")
    return values


def parse_window(text: str) -> Window:
    """`center,width[,function]`, function one of linear (default), linear-exact, sigmoid."""
    items = text.split(",")
    if len(items) not in (2, 3):
        raise InvalidInput(f"window={text[:80]!r}: expected center,width[,function]")
    function = items[2].strip().lower() if len(items) == 3 else "linear"
    if function not in WINDOW_FUNCTIONS:
        raise InvalidInput(f"window function {function[:20]!r}: one of {', '.join(WINDOW_FUNCTIONS)}")
    center, width = _numbers(",".join(items[:2]), "window")
    return Window(center, width, WINDOW_FUNCTIONS[function])


def parse_viewport(text: str, max_side: int) -> Viewport:
    """`vw,vh` or `vw,vh,sx,sy,sw,sh`; empty sx/sy mean 0, empty sw/sh the rest of the image. An output
    wider or taller than `max_side` is refused: its pixels are what a request makes the archive allocate."""
    items = [item.strip() for item in text.split(",")]
    if len(items) not in (2, 6) or not all(item.lstrip("-").isdigit() for item in items[:2]):
        raise InvalidInput(f"viewport={text[:80]!r}: expected vw,vh[,sx,sy,sw,sh] integers")
    width, height = int(items[0]), int(items[1])
    if width < 1 or height < 1:
        raise InvalidInput(f"viewport={text[:80]!r}: vw and vh must be positive")
    if width > max_side or height > max_side:
        raise InvalidInput(f"viewport={text[:80]!r}: vw and vh may be at most {max_side}")
    if len(items) == 2:
        return Viewport(width, height)
    region = []
    for item in items[2:]:
        if item and not item.lstrip("-").isdigit():
            raise InvalidInput(f"viewport={text[:80]!r}: source region values must be integers")
        region.append(int(item) if item else 0)
    sx, sy, sw, sh = region
    if sx < 0 or sy < 0:
        raise InvalidInput(f"viewport={text[:80]!r}: sx and sy must not be negative")
    return Viewport(width, height, (sx, sy, sw, sh))


def parse_quality(text: str) -> int:
    """An integer from 1 (worst) to 100 (best); PNG is lossless and ignores it."""
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 100:
        raise InvalidInput(f"quality={text[:20]!r}: an integer from 1 to 100 expected")
    return int(text)


def number_of_frames(stream: BinaryIO) -> int:
    """How many frames the instance's image has; 0 when it is not an image (no Rows)."""
    stream.seek(0)
    return _frames(pydicom.dcmread(stream, stop_before_pixels=True))


def _frames(ds: pydicom.Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1) if "Rows" in ds else 0


def render_frame(
    stream: BinaryIO, frame: int, options: RenderOptions, *, max_decoded_bytes: int | None = None
) -> bytes:
    """Frame `frame` (1-based) of the instance, rendered per `options`, as encoded image bytes."""
    stream.seek(0)
    ds = pydicom.dcmread(stream, stop_before_pixels=True)
    frames = _frames(ds)
    if not 1 <= frame <= frames:
        raise NotFound(f"frame {frame} is out of range 1-{frames}" if frames else "the instance is not an image")
    check_decoded_size(ds, max_decoded_bytes)
    arr = frame_array(stream, ds, frame)  # YBR_FULL* comes out as RGB (pydicom's as_rgb)
    photometric = str(ds.PhotometricInterpretation)
    view = frame_attributes(ds, frame)
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        image = Image.fromarray(_grayscale(arr, view, options.window, invert=photometric == "MONOCHROME1"), "L")
    else:
        image = Image.fromarray(_color(arr, ds, photometric), "RGB")
    image = _square_pixels(image, view)
    if options.viewport is not None:
        image = _apply_viewport(image, options.viewport)
    return _encode(image, options)


# Functional group sequences (PS3.3 C.7.6.16.2) whose attributes transform a frame's values, and those attributes.
_FRAME_GROUPS: dict[str, tuple[str, ...]] = {
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence"),
    "PixelMeasuresSequence": ("PixelSpacing",),
}
# A pixel's height over its width beyond which the image is stretched to show it as a viewer does.
_ASPECT_TOLERANCE = 1e-3
# Beyond this the spacing is a mistake, not a detector (RG1_UNCR in pydicom-data says 0\\0): drawn square, never
# stretched into an image too large to make.
_MAX_ASPECT = 8.0


def frame_attributes(ds: pydicom.Dataset, frame: int) -> pydicom.Dataset:
    """`ds` as it applies to frame `frame` (1-based): the rescale and window of an enhanced object's Shared, then
    this frame's Per-frame Functional Groups replace the top-level ones (a frame's own group wins)."""
    groups = [ds.get("SharedFunctionalGroupsSequence"), ds.get("PerFrameFunctionalGroupsSequence")]
    items = [
        sequence[0 if position == 0 else frame - 1]
        for position, sequence in enumerate(groups)
        if sequence and len(sequence) >= (1 if position == 0 else frame)
    ]
    if not items:
        return ds
    view = ds.copy()
    for item in items:
        for sequence_keyword, keywords in _FRAME_GROUPS.items():
            values = item.get(sequence_keyword)
            if not values:
                continue
            if sequence_keyword == "FrameVOILUTSequence":
                for keyword in keywords:  # one VOI description replaces another whole
                    if keyword in view:
                        delattr(view, keyword)
            for keyword in keywords:
                if keyword in values[0]:
                    setattr(view, keyword, values[0][keyword].value)
    return view


def _square_pixels(image: Image.Image, ds: pydicom.Dataset) -> Image.Image:
    """The image in the patient's proportions: where pixels are not square (Pixel Spacing row\\column, else Pixel
    Aspect Ratio vertical\\horizontal), it is stretched along the direction of the larger spacing, as viewers do."""
    ratio = None
    with contextlib.suppress(TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError):
        if "PixelSpacing" in ds:
            ratio = float(ds.PixelSpacing[0]) / float(ds.PixelSpacing[1])
        elif "PixelAspectRatio" in ds:
            ratio = float(ds.PixelAspectRatio[0]) / float(ds.PixelAspectRatio[1])
    if ratio is None or not 1 / _MAX_ASPECT <= ratio <= _MAX_ASPECT or abs(ratio - 1) < _ASPECT_TOLERANCE:
        return image
    width, height = image.size
    size = (width, round(height * ratio)) if ratio > 1 else (round(width / ratio), height)
    return image.resize(size, Image.Resampling.LANCZOS)


def _grayscale(arr: NDArray[np.generic], ds: pydicom.Dataset, window: Window | None, invert: bool) -> NDArray[np.uint8]:
    modality = apply_modality_lut(arr, ds)
    if window is None and "VOILUTSequence" in ds:
        # A LUT is indexed by integer modality values; pydicom's lookup is wrong on floats.
        if not np.issubdtype(modality.dtype, np.integer):
            modality = np.rint(modality).astype(np.int64)
        lut_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        unit = apply_voi_lut(modality, ds, prefer_lut=True).astype(np.float64) / float(2**lut_bits - 1)
    else:
        values = modality.astype(np.float64)
        unit = _window(values, window or _default_window(values, ds))
    unit = np.clip(unit, 0.0, 1.0)
    if invert:
        unit = 1.0 - unit
    return np.round(unit * 255).astype(np.uint8)


def _default_window(values: NDArray[np.float64], ds: pydicom.Dataset) -> Window:
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center = ds.WindowCenter[0] if ds["WindowCenter"].VM > 1 else ds.WindowCenter
        width = ds.WindowWidth[0] if ds["WindowWidth"].VM > 1 else ds.WindowWidth
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        if function in WINDOW_FUNCTIONS.values():
            with contextlib.suppress(InvalidInput, TypeError, ValueError):  # a stored window no function takes
                return Window(float(center), float(width), function)
    low, high = float(values.min()), float(values.max())
    return Window((low + high) / 2, max(high - low, 1.0), "LINEAR_EXACT")


def _window(values: NDArray[np.float64], window: Window) -> NDArray[np.float64]:
    """PS3.3 C.11.2.1.2.1 and C.11.2.1.3 onto [0, 1]."""
    center, width = window.center, window.width
    if window.function == "SIGMOID":
        return np.asarray(1.0 / (1.0 + np.exp(-4.0 * (values - center) / width)))
    if window.function == "LINEAR_EXACT":
        return np.asarray((values - center) / width + 0.5)
    if width == 1:  # the formula's limit: everything above c - 0.5 is white
        return np.asarray(values > center - 0.5, np.float64)
    return np.asarray((values - (center - 0.5)) / (width - 1) + 0.5)


def _color(arr: NDArray[np.generic], ds: pydicom.Dataset, photometric: str) -> NDArray[np.uint8]:
    if photometric == "PALETTE COLOR":
        lut_bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        rgb = apply_color_lut(arr, ds).astype(np.float64)
        top = float(2 ** (16 if lut_bits > 8 else 8) - 1)
    else:
        rgb = np.asarray(arr, np.float64)
        top = float(2 ** int(ds.get("BitsStored", 8)) - 1)
    return np.round(np.clip(rgb / top, 0.0, 1.0) * 255).astype(np.uint8)


def _apply_viewport(image: Image.Image, viewport: Viewport) -> Image.Image:
    if viewport.region is not None:
        image = _source_region(image, viewport.region)
    scale = min(viewport.width / image.width, viewport.height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def _source_region(image: Image.Image, region: tuple[int, int, int, int]) -> Image.Image:
    sx, sy, sw, sh = region
    left, right = (sx, image.width if sw == 0 else sx + sw) if sw >= 0 else (sx + sw, sx)
    top, bottom = (sy, image.height if sh == 0 else sy + sh) if sh >= 0 else (sy + sh, sy)
    left, top = max(left, 0), max(top, 0)
    right, bottom = min(right, image.width), min(bottom, image.height)
    if right <= left or bottom <= top:
        raise InvalidInput(f"viewport source region {region} lies outside the {image.width}x{image.height} image")
    image = image.crop((left, top, right, bottom))
    if sw < 0:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if sh < 0:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return image


def _encode(image: Image.Image, options: RenderOptions) -> bytes:
    out = BytesIO()
    if options.media_type == PNG:
        image.save(out, "PNG")
    elif options.media_type == JPEG:
        image.save(out, "JPEG", quality=options.quality or DEFAULT_JPEG_QUALITY)
    elif options.media_type == GIF:
        image.save(out, "GIF")  # 256 grays exactly; colour is quantised to a 256-colour palette
    else:
        raise InvalidInput(f"cannot render as {options.media_type}; one of {', '.join(RENDERED_MEDIA_TYPES)}")
    return out.getvalue()
