"""The GPU data path's pixel half: letterbox and TAO's augmentation as batched tensor ops on the batch's device.

Why: on the CPU path these run per image in a loader worker (OpenCV + albumentations), which caps one GPU at a few
hundred images/s. Here they run on decoded device tensors:

* :func:`letterbox_batch` follows the CPU path's rule exactly (:func:`gridface.data.transforms.letterbox_geometry`:
  scale = min(tw/w, th/h), centred padding, pad value 0; bilinear at scale >= 0.5, area averaging below) and rounds
  to whole 8-bit levels as OpenCV's uint8 resize does, so validation sees the same pixels (within 1/255 mean) as on
  the CPU path.
* :class:`DeviceAugment` reads the same ``augment`` config group (albumentations ``HorizontalFlip``, ``Affine``
  with zoom + translate + ``keep_ratio``, ``ColorJitter``), draws per-image parameters from the same ranges and
  applies them to the whole batch: one ``grid_sample`` for flip + zoom + translate, per-image blend factors for
  brightness/contrast/saturation and an HSV hue rotation. A transform or an option it cannot reproduce is an
  error naming its key, never silently dropped.

Boxes move with the image (:meth:`DeviceAugment.transform_boxes`); clipping, dropping and the ``min_box_size`` ignore
rule are applied by the caller (:mod:`gridface.data.device_batch`) as ``dataset.py`` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from gridface.data.transforms import AREA_BELOW_SCALE, PAD_VALUE, Letterbox, letterbox_geometry

# ----------------------------------------------------------------------------------------------------- letterbox


def letterbox_batch(images: Sequence[torch.Tensor], input_hw: tuple[int, int]
                    ) -> tuple[torch.Tensor, list[Letterbox]]:
    """RGB uint8 ``[3, h, w]`` images (any sizes, one device) -> float32 ``[B, 3, H, W]`` in [0, 1] and each
    image's :class:`Letterbox`, by the CPU path's rule. Images of one size are resized together (one resize per
    size, not per image: on a GPU each op is a kernel launch from the training loop's thread)."""
    th, tw = input_hw
    device = images[0].device if images else torch.device("cpu")
    out = torch.full((len(images), 3, th, tw), float(PAD_VALUE), dtype=torch.float32, device=device)
    sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, hw in enumerate(sizes):
        by_size.setdefault(hw, []).append(i)
    geometry = {(h, w): letterbox_geometry(w, h, input_hw) for h, w in by_size}
    for hw, index in by_size.items():
        nw, nh, lb = geometry[hw]
        px, py = int(lb.pad_x), int(lb.pad_y)
        group = images[index[0]][None] if len(index) == 1 else torch.stack([images[i] for i in index])
        resized = resize_levels(group, nh, nw, lb.scale)
        window = out[:, :, py:py + nh, px:px + nw]
        if index == list(range(index[0], index[-1] + 1)):  # a run of the batch: one copy
            window[index[0]:index[-1] + 1] = resized
        else:
            for j, i in enumerate(index):
                window[i] = resized[j]
    return out.div_(255.0), [geometry[hw][2] for hw in sizes]


def resize_levels(image: torch.Tensor, nh: int, nw: int, scale: float) -> torch.Tensor:
    """uint8 ``[N, 3, h, w]`` -> float32 ``[N, 3, nh, nw]`` in whole levels 0-255, as OpenCV's uint8 resize gives:
    bilinear (half-pixel centres, edge clamped: ``INTER_LINEAR``) at ``scale >= 0.5``, exact area averaging
    (``INTER_AREA``) below."""
    h, w = int(image.shape[-2]), int(image.shape[-1])
    if (nh, nw) == (h, w):
        return image.float()
    if scale < AREA_BELOW_SCALE:
        out = _area_axis(_area_axis(image.double(), nw).transpose(-1, -2), nh).transpose(-1, -2).float()
    else:
        out = F.interpolate(image.float(), size=(nh, nw), mode="bilinear", align_corners=False, antialias=False)
    return out.round_().clamp_(0, 255)


def _area_axis(x: torch.Tensor, out_size: int) -> torch.Tensor:
    """Area-average the last axis of ``x`` (float64) from n to ``out_size`` samples: output i is the mean of the
    input over [i*n/out, (i+1)*n/out), fractional pixels weighted by their overlap (what ``INTER_AREA`` computes).
    From a running sum, so it costs O(n) per row whatever the ratio. Not torch's ``area`` mode: that is adaptive
    average pooling over whole pixels, which differs from OpenCV's at non-integer ratios."""
    n = x.shape[-1]
    ratio = n / out_size
    edges = torch.arange(out_size + 1, dtype=torch.float64, device=x.device) * ratio
    edges[-1] = n
    csum = F.pad(x.cumsum(-1), (1, 0))  # csum[j] = sum of x[:j]
    base = edges.floor().long().clamp_(max=n - 1)
    frac = edges - base
    at = csum.index_select(-1, base) + frac * x.index_select(-1, base)  # running sum at each (fractional) edge
    return (at[..., 1:] - at[..., :-1]) / ratio


# --------------------------------------------------------------------------------------------------- augmentation

_NEUTRAL = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0}


@dataclass
class AugmentParams:
    """Per-image parameters of one batch (CPU or device tensors): ``flip`` bool [B], ``scale`` [B] (zoom, both
    axes), ``tx``/``ty`` [B] pixels, colour factors [B] (neutral where not drawn) and the colour ops' order."""

    flip: torch.Tensor
    scale: torch.Tensor
    tx: torch.Tensor
    ty: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    color_order: tuple[str, ...]

    def to(self, device: torch.device) -> AugmentParams:
        t = {k: getattr(self, k).to(device, non_blocking=True)
             for k in ("flip", "scale", "tx", "ty", "brightness", "contrast", "saturation", "hue")}
        return AugmentParams(**t, color_order=self.color_order)


@dataclass(frozen=True)
class DeviceAugment:
    """TAO's augmentation (flip, zoom with kept ratio, translate, colour jitter) for the device path.

    Build it from the ``augment`` config group with :meth:`from_transforms`; probabilities and ranges mean what
    they mean in albumentations (``translate_px`` a whole number of pixels drawn from the range, both ends in).
    """

    flip_p: float = 0.0
    affine_p: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    translate_x: tuple[int, int] = (0, 0)
    translate_y: tuple[int, int] = (0, 0)
    color_p: float = 0.0
    brightness: tuple[float, float] = (1.0, 1.0)
    contrast: tuple[float, float] = (1.0, 1.0)
    saturation: tuple[float, float] = (1.0, 1.0)
    hue: tuple[float, float] = (0.0, 0.0)

    @property
    def geometric(self) -> bool:
        return self.flip_p > 0 or (self.affine_p > 0 and (self.scale != (1.0, 1.0) or self.translate_x != (0, 0)
                                                          or self.translate_y != (0, 0)))

    @property
    def color_ops(self) -> tuple[str, ...]:
        """The colour ops that can change a pixel (a range that is only the neutral value is left out)."""
        if self.color_p <= 0:
            return ()
        return tuple(k for k in ("brightness", "contrast", "saturation", "hue")
                     if getattr(self, k) != (_NEUTRAL[k], _NEUTRAL[k]))

    @classmethod
    def from_transforms(cls, transforms: Mapping[str, Any] | Sequence[Any] | None) -> DeviceAugment | None:
        """From the ``augment`` group as the datamodule gets it (albumentations objects by config key; ``None``
        entries are disabled ones). None when nothing is left. Anything not reproducible is a ``ValueError``
        naming the key: ``augment.<key>``."""
        if transforms is None:
            return None
        items = list(transforms.items()) if isinstance(transforms, Mapping) else \
            [(str(i), t) for i, t in enumerate(transforms)]
        fields: dict[str, Any] = {}
        for key, t in items:
            if t is None:
                continue
            if isinstance(t, Mapping) and "_target_" in t:  # a config entry: the object, with its own defaults
                from hydra.utils import instantiate

                t = instantiate(t)
            kind = type(t).__name__
            args = _init_args(t)
            where = f"augment.{key} ({kind})"
            p = float(args.get("p", 1.0))
            if kind == "HorizontalFlip":
                _only(where, args, {"p"})
                _once(fields, "flip_p", p, where)
            elif kind == "Affine":
                fields.update(_affine_fields(where, args, p, fields))
            elif kind == "ColorJitter":
                _only(where, args, {"p", "brightness", "contrast", "saturation", "hue"})
                _once(fields, "color_p", p, where)
                for name in ("brightness", "contrast", "saturation", "hue"):
                    fields[name] = _range(where, name, args.get(name, (_NEUTRAL[name],) * 2))
            else:
                raise ValueError(f"{where}: the GPU data path (dataset.decode=gpu) supports HorizontalFlip, Affine "
                                 "(scale, translate_px, keep_ratio) and ColorJitter; disable this one with "
                                 f"augment.{key}=null or use dataset.decode=cpu")
        spec = cls(**fields)
        return spec if spec.geometric or spec.color_ops else None

    # ------------------------------------------------------------------------------------------- parameters
    def sample(self, n: int, generator: torch.Generator | None = None) -> AugmentParams:
        """Draw the parameters of ``n`` images on the CPU (torch's RNG, seeded by ``seed_everything``)."""
        def uniform(lo_hi: tuple[float, float]) -> torch.Tensor:
            lo, hi = lo_hi
            return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)

        def whole(lo_hi: tuple[int, int]) -> torch.Tensor:
            return torch.randint(lo_hi[0], lo_hi[1] + 1, (n,), generator=generator).double()

        flip = torch.rand(n, generator=generator) < self.flip_p
        geo = torch.rand(n, generator=generator) < self.affine_p
        scale = torch.where(geo, uniform(self.scale), 1.0)
        tx = torch.where(geo, whole(self.translate_x), 0.0)
        ty = torch.where(geo, whole(self.translate_y), 0.0)
        col = torch.rand(n, generator=generator) < self.color_p
        factors = {k: torch.where(col, uniform(getattr(self, k)), _NEUTRAL[k]).float()
                   for k in ("brightness", "contrast", "saturation", "hue")}
        ops = self.color_ops
        order = tuple(ops[i] for i in torch.randperm(len(ops), generator=generator).tolist())  # as ColorJitter
        return AugmentParams(flip, scale, tx, ty, color_order=order, **factors)

    # ------------------------------------------------------------------------------------------------ apply
    def apply_images(self, images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Augment a float ``[B, 3, H, W]`` batch in [0, 1] (``params`` on its device)."""
        if self.geometric:
            images = warp(images, params.flip, params.scale, params.tx, params.ty)
        for op in params.color_order:
            images = COLOR_OPS[op](images, getattr(params, op))
        return images

    def transform_boxes(self, boxes: torch.Tensor, image_index: torch.Tensor, params: AugmentParams,
                        input_hw: tuple[int, int]) -> torch.Tensor:
        """Boxes ``[M, 4]`` (network input pixels, float64) of images ``image_index`` moved as :func:`warp` moves
        the pixels; not clipped (the caller clips and drops)."""
        if not self.geometric or boxes.numel() == 0:
            return boxes
        th, tw = input_hw
        s = params.scale.to(boxes.dtype)[image_index]
        a = torch.where(params.flip[image_index], -s, s)
        tx = params.tx.to(boxes.dtype)[image_index]
        ty = params.ty.to(boxes.dtype)[image_index]
        xa = a[:, None] * (boxes[:, 0::2] - tw / 2) + tw / 2 + tx[:, None]
        y = s[:, None] * (boxes[:, 1::2] - th / 2) + th / 2 + ty[:, None]
        x1, x2 = torch.minimum(xa[:, 0], xa[:, 1]), torch.maximum(xa[:, 0], xa[:, 1])
        return torch.stack([x1, y[:, 0], x2, y[:, 1]], dim=1)


def warp(images: torch.Tensor, flip: torch.Tensor, scale: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor
         ) -> torch.Tensor:
    """Flip, zoom about the image centre and translate a ``[B, C, H, W]`` batch in one bilinear resampling, the
    outside filled with 0 (albumentations: flip, then ``Affine`` with ``fill=0``). In continuous pixel
    coordinates: ``x' = a (x - W/2) + W/2 + tx`` with ``a = -scale`` when flipped, ``y' = scale (y - H/2) + H/2 +
    ty``."""
    b, _, h, w = images.shape
    s = scale.to(torch.float64)
    a = torch.where(flip, -s, s)
    theta = torch.zeros((b, 2, 3), dtype=torch.float64, device=images.device)
    theta[:, 0, 0] = 1 / a
    theta[:, 0, 2] = -2 * tx.to(torch.float64) / (w * a)
    theta[:, 1, 1] = 1 / s
    theta[:, 1, 2] = -2 * ty.to(torch.float64) / (h * s)
    grid = F.affine_grid(theta.to(images.dtype), [b, images.shape[1], h, w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _per_image(factor: torch.Tensor) -> torch.Tensor:
    return factor.to(torch.float32).reshape(-1, 1, 1, 1)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = _per_image(factor)
    return (images * f + other * (1 - f)).clamp_(0, 1)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (images * _per_image(factor)).clamp_(0, 1)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_contrast`` with one factor per image: blend with the image's mean grey."""
    from torchvision.transforms.v2.functional import rgb_to_grayscale

    return _blend(images, rgb_to_grayscale(images).mean(dim=(-3, -2, -1), keepdim=True), factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_saturation`` with one factor per image: blend with the grey image."""
    from torchvision.transforms.v2.functional import rgb_to_grayscale

    return _blend(images, rgb_to_grayscale(images), factor)


def adjust_hue(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_hue`` with one factor (fraction of the hue circle) per image. Uses torchvision's
    own HSV conversions; where they are not importable (private in torchvision), one call per image."""
    try:
        from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv
    except ImportError:  # pragma: no cover - another torchvision layout
        from torchvision.transforms.v2.functional import adjust_hue as hue_one

        return torch.stack([hue_one(img, float(f)) for img, f in zip(images, factor.tolist(), strict=True)])
    h, s, v = _rgb_to_hsv(images).unbind(dim=-3)
    h = (h + factor.to(h.dtype).reshape(-1, 1, 1)).remainder(1.0)
    return _hsv_to_rgb(torch.stack((h, s, v), dim=-3))


COLOR_OPS = {"brightness": adjust_brightness, "contrast": adjust_contrast, "saturation": adjust_saturation,
             "hue": adjust_hue}


# ------------------------------------------------------------------------------------------ reading the config

def _init_args(transform: Any) -> dict[str, Any]:
    """An albumentations transform's init arguments, by their own names (albumentations normalises them: ranges
    as tuples, per-axis values as ``{"x": .., "y": ..}``)."""
    names = transform.get_transform_init_args_names() if hasattr(transform, "get_transform_init_args_names") else ()
    args = {n: getattr(transform, n) for n in names if hasattr(transform, n)}
    args["p"] = getattr(transform, "p", 1.0)
    return args


def _only(where: str, args: Mapping[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(args) - allowed)
    if extra:
        raise ValueError(f"{where}: the GPU data path does not support {', '.join(extra)}")


def _once(fields: dict[str, Any], name: str, value: Any, where: str) -> None:
    if name in fields:
        raise ValueError(f"{where}: a second transform of this kind; the GPU data path applies each once")
    fields[name] = value


def _range(where: str, name: str, value: Any) -> tuple[float, float]:
    if isinstance(value, int | float):
        return float(value), float(value)
    lo, hi = (float(v) for v in value)
    if not lo <= hi:
        raise ValueError(f"{where}: {name} range {value} is empty")
    return lo, hi


def _affine_fields(where: str, args: Mapping[str, Any], p: float, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Affine's zoom (``keep_ratio``) and ``translate_px``; rotation, shear, percent translation, non-zero fill,
    ``fit_output`` and ``balanced_scale`` are refused (the message names which)."""
    if "affine_p" in fields:
        raise ValueError(f"{where}: a second Affine; the GPU data path applies one")

    def axes(value: Any) -> tuple[tuple[float, float], tuple[float, float]]:
        if isinstance(value, Mapping):
            return _range(where, "x", value["x"]), _range(where, "y", value["y"])
        r = _range(where, "range", value)
        return r, r

    scale_x, scale_y = axes(args.get("scale", 1.0))
    if scale_x != scale_y or not (args.get("keep_ratio", False) or scale_x == (scale_x[0],) * 2):
        raise ValueError(f"{where}: the GPU data path zooms both axes by one factor: give one scale range and "
                         "keep_ratio: true")
    if scale_x[0] <= 0:
        raise ValueError(f"{where}: scale must be > 0, got {scale_x}")
    for name, neutral in (("rotate", 0.0), ("shear", 0.0)):
        value = args.get(name, neutral)
        ranges = axes(value) if isinstance(value, Mapping) else (_range(where, name, value),)
        if any(r != (neutral, neutral) for r in ranges):
            raise ValueError(f"{where}: {name} is not supported by the GPU data path (only zoom and translate)")
    if args.get("translate_percent") is not None:
        raise ValueError(f"{where}: translate_percent is not supported by the GPU data path; use translate_px")
    if args.get("fit_output", False) or args.get("balanced_scale", False):
        raise ValueError(f"{where}: fit_output and balanced_scale are not supported by the GPU data path")
    if int(args.get("interpolation", 1)) != 1 or int(args.get("border_mode", 0)) != 0:
        raise ValueError(f"{where}: the GPU data path resamples bilinearly (interpolation=1) with a constant border "
                         "(border_mode=0)")
    fill = args.get("fill", 0)
    if any(float(f) != 0 for f in (fill if isinstance(fill, Sequence) else [fill])):
        raise ValueError(f"{where}: fill={fill}: the GPU data path fills with 0 (the letterbox padding)")
    tx, ty = axes(args.get("translate_px") or 0)
    for r in (tx, ty):
        if any(not float(v).is_integer() for v in r):
            raise ValueError(f"{where}: translate_px must be whole pixels, got {r}")
    return {"affine_p": p, "scale": scale_x, "translate_x": (int(tx[0]), int(tx[1])),
            "translate_y": (int(ty[0]), int(ty[1]))}
