"""Tissue detection on a low-resolution image of a slide.

The mask is computed in four steps, on an RGB image at about ``TissueParams.mask_mpp``
micrometres per pixel:

1. **Saturation threshold.** Stained tissue is coloured, glass and white background are
   not: pixels whose (box-blurred) HSV saturation exceeds a threshold are tissue. The
   threshold is Otsu's on the saturation histogram, clipped to
   ``[min_saturation, max_saturation]`` so that a slide with almost no background (Otsu then
   splits the tissue itself) or almost no tissue (Otsu then splits glass noise) stays sane.
2. **Exclusions.** Bright low-saturation pixels (white background), very dark pixels (black
   marker, folds filled with debris) and pen ink (green, cyan and blue hues, 60-235 degrees,
   that H&E does not produce, at high saturation) are removed.
3. **Morphology.** A closing joins fragments of loose tissue, an opening removes specks.
4. **Areas.** Connected components smaller than ``min_tissue_area_um2`` are dropped, and
   holes smaller than ``max_hole_area_um2`` are filled; larger holes (lumens, fat, tears)
   stay out of the mask.

All sizes are physical (micrometres), converted with the mask image's resolution, so the
same parameters work for 20x and 40x scans.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TissueParams:
    """Parameters of :func:`tissue_mask`; the defaults suit H&E at any magnification.

    Saturation values are on the 0-255 scale; ``white_value``/``dark_value`` on HSV value 0-1.
    """

    saturation_threshold: float | None = None  # None: Otsu, clipped as below
    min_saturation: float = 12.0
    max_saturation: float = 40.0
    white_value: float = 0.9
    white_saturation: float = 20.0
    dark_value: float = 0.12
    pen_filter: bool = True
    pen_saturation: float = 60.0
    blur_um: float = 24.0
    close_um: float = 24.0
    open_um: float = 16.0
    min_tissue_area_um2: float = 20_000.0
    max_hole_area_um2: float = 5_000.0
    mask_mpp: float = 8.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TissueMask:
    """A boolean tissue mask (H, W) and how it was made.

    ``threshold`` is the saturation threshold used; ``pen_fraction`` the fraction of pixels
    removed as pen ink; ``mpp`` the mask's micrometres per pixel (None if unknown).
    """

    mask: np.ndarray
    threshold: float
    pen_fraction: float
    mpp: float | None

    @property
    def fraction(self) -> float:
        """Fraction of the image covered by tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0


def saturation_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation (0-255) and value (0-1) of an (..., 3) uint8 image as float32."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    mx = np.maximum(np.maximum(r, g), b)
    delta = mx - np.minimum(np.minimum(r, g), b)
    sat = np.divide(delta * 255.0, mx, out=np.zeros_like(mx), where=mx > 0)
    return sat, mx / 255.0


def hue(rgb: np.ndarray) -> np.ndarray:
    """HSV hue in degrees (0-360; 0 for greys) of an (..., 3) uint8 image."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    mx = np.maximum(np.maximum(r, g), b)
    delta = mx - np.minimum(np.minimum(r, g), b)
    safe = np.maximum(delta, 1e-6)
    h = np.where(
        mx == r,
        np.mod((g - b) / safe, 6.0),
        np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    h *= 60.0
    h[delta == 0] = 0.0
    return h


def otsu_threshold(values: np.ndarray, bins: int = 256, value_range: tuple[float, float] = (0, 256)) -> float:
    """Otsu's threshold of ``values`` from a histogram (maximizes between-class variance)."""
    hist, edges = np.histogram(values, bins=bins, range=value_range)
    hist = hist.astype(np.float64)
    if hist.sum() == 0:
        return float(value_range[0])
    centers = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1e-12)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def pen_mask(rgb: np.ndarray, sat: np.ndarray, val: np.ndarray, params: TissueParams) -> np.ndarray:
    """Pixels of green, cyan or blue marker ink.

    H&E occupies the purple-magenta-pink hues (about 240-360 and 0-30 degrees at the mask's
    resolution, where averaging has removed the per-pixel noise of dark nuclei). Ink is
    strongly saturated and lies at 60-235 degrees (green, teal, cyan, blue). Hue is computed
    only for the saturated pixels.
    """
    out = (sat >= params.pen_saturation) & (val > params.dark_value)
    h = hue(rgb[out])
    out[out] = (h >= 60.0) & (h <= 235.0)
    return out


def _disk(radius: int) -> np.ndarray:
    r = int(radius)
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y) <= r * r


def _um_to_px(um: float, mpp: float | None, default_mpp: float) -> float:
    return um / (mpp if mpp else default_mpp)


def fill_small_holes(mask: np.ndarray, max_hole_px: float) -> np.ndarray:
    """Fill background components of ``mask`` smaller than ``max_hole_px`` that do not touch
    the image border (those are background, not holes)."""
    if max_hole_px <= 0:
        return mask
    labels, n = ndi.label(~mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = sizes < max_hole_px
    fill[0] = False
    fill[border] = False
    return mask | fill[labels]


def remove_small_components(mask: np.ndarray, min_px: float) -> np.ndarray:
    """Drop connected components (8-connected) of ``mask`` smaller than ``min_px`` pixels."""
    if min_px <= 1:
        return mask
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]


def tissue_mask(rgb: np.ndarray, mpp: float | None = None, params: TissueParams | None = None) -> TissueMask:
    """Tissue mask of an (H, W, 3) uint8 image at ``mpp`` micrometres per pixel.

    When ``mpp`` is None, physical sizes are converted as if the image were at
    ``params.mask_mpp``. See the module docstring for the steps.
    """
    params = params or TissueParams()
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {rgb.shape}")
    sat, val = saturation_value(rgb)
    blur = max(1, int(round(_um_to_px(params.blur_um, mpp, params.mask_mpp))))
    sat_blur = ndi.uniform_filter(sat, size=blur) if blur > 1 else sat
    if params.saturation_threshold is not None:
        thr = float(params.saturation_threshold)
    else:
        thr = float(np.clip(otsu_threshold(sat_blur), params.min_saturation, params.max_saturation))
    mask = sat_blur > thr
    mask &= ~((val >= params.white_value) & (sat < params.white_saturation))
    mask &= val > params.dark_value
    pen_frac = 0.0
    if params.pen_filter:
        pen = pen_mask(rgb, sat, val, params)
        # Ink strokes have soft edges whose saturation falls below the ink test; grow the
        # stroke by the blur size so its rim does not survive as thin tissue.
        if pen.any():
            pen = ndi.binary_dilation(pen, structure=_disk(max(1, blur // 2)))
        pen_frac = float(pen.mean())
        mask &= ~pen
    r_close = int(round(_um_to_px(params.close_um, mpp, params.mask_mpp) / 2))
    r_open = int(round(_um_to_px(params.open_um, mpp, params.mask_mpp) / 2))
    if r_close >= 1:
        pad = r_close + 1  # pad so that closing does not eat tissue touching the border
        padded = np.pad(mask, pad, mode="edge")
        mask = ndi.binary_closing(padded, structure=_disk(r_close))[pad:-pad, pad:-pad]
    if r_open >= 1:
        mask = ndi.binary_opening(mask, structure=_disk(r_open))
    px_area = (mpp if mpp else params.mask_mpp) ** 2
    mask = remove_small_components(mask, params.min_tissue_area_um2 / px_area)
    mask = fill_small_holes(mask, params.max_hole_area_um2 / px_area)
    log.debug("tissue mask: threshold %.1f, tissue %.3f, pen %.3f", thr, mask.mean(), pen_frac)
    return TissueMask(mask=mask, threshold=thr, pen_fraction=pen_frac, mpp=mpp)


def overlay(rgb: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (0, 200, 0)) -> np.ndarray:
    """A quality-control picture: background dimmed, tissue outlined in ``color``.

    ``mask`` may be at another size than ``rgb``; it is resized by nearest neighbour.
    """
    if mask.shape != rgb.shape[:2]:
        yi = (np.arange(rgb.shape[0]) * mask.shape[0] // rgb.shape[0]).clip(0, mask.shape[0] - 1)
        xi = (np.arange(rgb.shape[1]) * mask.shape[1] // rgb.shape[1]).clip(0, mask.shape[1] - 1)
        mask = mask[yi][:, xi]
    out = rgb.astype(np.float32)
    out[~mask] = out[~mask] * 0.35 + 255 * 0.65 * np.array([0.2, 0.2, 0.25])
    edge = mask & ~ndi.binary_erosion(mask, structure=np.ones((3, 3), bool), border_value=0)
    edge = ndi.binary_dilation(edge)
    out[edge] = color
    return out.clip(0, 255).astype(np.uint8)
