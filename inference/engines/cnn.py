"""The CNN engine: a 2D U-Net applied slice by slice (background, lung, GGO, consolidation).

Weights ship in `inference/weights/` with their SHA-256 in `SHA256SUMS`; a file whose hash
does not match is refused (a corrupted or swapped model must never segment patients).
Slices are resampled to the training pixel size (~1.37 mm, i.e. 512 px at 0.68 mm -> 256),
segmented in batches, and the logits are upsampled back to the source matrix before argmax.
Channels-last memory layout everywhere (on our 2-core CPU a batch's forward pass took 0.15 s
instead of 0.23 s). On CUDA: bf16/fp16 autocast (code path present; untested on this CPU-only
host). On CPU: float32, deterministic, `num_threads` torch threads.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import structlog
import torch
from torch.nn import functional as F

from inference.engines import DEFAULT_WEIGHTS, Progress
from inference.unet import UNet2D, normalise_hu
from inference.volume import CTVolume
from inference.voxels import SlabComponents

log = structlog.get_logger(__name__)

CHECKSUM_FILE = "SHA256SUMS"
TRAINING_PIXEL_MM = 1.37
EXPORT_LONG_SIDE_PX = 256
#: Slices per forward pass when none is given. On the CPU a batch of 16 held ~0.9 GB of
#: activations and was slower than 4 (2 cores); the CPU labels are the same for any batch.
DEFAULT_BATCH_SIZE = {"cpu": 4, "cuda": 16}


def keep_lung_components(labels: np.ndarray, min_fraction: float = 0.1) -> np.ndarray:
    """Zero every 3D component of (labels > 0) smaller than `min_fraction` of the largest.

    Both lungs (joined or not) survive; isolated false positives outside them do not. Lesions
    are part of the lung components, so lesions inside the lungs are kept. In place; the
    components are found slab by slab (`SlabComponents`): no whole-volume label array.
    """
    components = SlabComponents(labels)
    if components.count <= 1:
        return labels
    sizes = components.sizes
    drop = sizes < min_fraction * sizes.max()
    drop[0] = False
    for part, numbers in components.slab_numbers():
        labels[part][drop[numbers]] = 0
    return labels


def clear_outside_body(labels: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float]) -> None:
    """Zero the labels outside the patient's body (with its cavities), slice by slice. In place.

    A slice whose body touches the image edge (a field of view narrower than the patient:
    arms, shoulders, or the chest wall cut off) has no closed outline to fill; there the
    body's convex hull is used instead: it still holds lungs that reach the edge, and not
    the table pad under the patient's back, which a slice-wise model may take for lung
    (it did on a Siemens CT of Lung-PET-CT-Dx: issue 14).
    """
    from inference.engines.threshold import (
        ThresholdSegmentationError,
        coarse_body_mask,
        convex_hull_2d,
        upsample_slice,
    )

    try:
        coarse, factor = coarse_body_mask(hu, spacing)
    except ThresholdSegmentationError:
        log.warning("no body found: labels outside the body not cleared")
        return
    for k in range(coarse.shape[0]):
        body = coarse[k]
        if body[0].any() or body[-1].any() or body[:, 0].any() or body[:, -1].any():
            body = convex_hull_2d(body)
        labels[k][~upsample_slice(body, factor, labels.shape[1:])] = 0


class WeightsError(RuntimeError):
    """Weights missing, unlisted in the checksum file, or not matching their checksum."""


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path: Path) -> str:
    """Check `path` against the SHA256SUMS next to it; return the hash or raise WeightsError."""
    if not path.is_file():
        raise WeightsError(f"model weights not found: {path}")
    sums = path.parent / CHECKSUM_FILE
    if not sums.is_file():
        raise WeightsError(f"no {CHECKSUM_FILE} next to {path}: cannot verify the weights")
    expected = None
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == path.name:
            expected = parts[0].lower()
    if expected is None:
        raise WeightsError(f"{path.name} is not listed in {sums}")
    actual = sha256_of(path)
    if actual != expected:
        raise WeightsError(
            f"checksum mismatch for {path}: expected {expected[:16]}..., found {actual[:16]}...;"
            " the file is corrupted or was replaced"
        )
    return actual


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise WeightsError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(device)


def _padded(size: int, divisor: int) -> int:
    return int(np.ceil(size / divisor) * divisor)


class CNNEngine:
    """Slice-wise U-Net segmentation; see the module docstring."""

    name = "cnn"

    def __init__(
        self,
        device: str = "auto",
        weights_path: Path | str | None = None,
        batch_size: int | None = None,
        num_threads: int | None = None,
        postprocess: bool = True,
        flip: bool = False,
    ) -> None:
        self.postprocess = postprocess
        #: Test-time augmentation: average the logits with those of the left-right mirrored
        #: slice (twice the model time). Off by default: not yet measured (MODEL_CARD.md).
        self.flip = flip
        path = Path(weights_path) if weights_path else DEFAULT_WEIGHTS
        self.checksum = verify_checksum(path)
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or "state_dict" not in payload:
            raise WeightsError(f"{path} is not an ldct-node U-Net weights file")
        self.model = UNet2D(**payload["architecture"])
        self.model.load_state_dict(payload["state_dict"])
        self.model.eval()
        # The version names the weights and, when on, the 3D post-processing: both shape the labels.
        weights_version = str(payload.get("version", "unknown"))
        self.version = weights_version + ("+body+lung-components" if postprocess else "")
        self.metadata = dict(payload.get("metadata", {}))
        #: The weight set's name ("ldct-unet-open-1.0.0" -> "ldct-unet-open"): each set has its
        #: own algorithm name in the SEG and SR, beside the version.
        self.model_name = weights_version.rsplit("-", 1)[0] if "-" in weights_version else weights_version
        self.algorithm_name = f"ldct-node cnn {self.model_name}"
        self.licence = str(self.metadata.get("licence", "not recorded in the weights"))
        self.device = _pick_device(device)
        self.batch_size = batch_size or DEFAULT_BATCH_SIZE.get(self.device.type, 16)
        if self.device.type == "cpu":
            torch.set_num_threads(num_threads or max(1, min(os.cpu_count() or 1, 8)))
        self.model = self.model.to(self.device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        log.info(
            "cnn.loaded",
            weights=path.name,
            version=self.version,
            device=str(self.device),
            sha256=self.checksum[:16],
            licence=self.licence,
        )

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits (float32) for a normalised (N, 1, H, W) batch (with `flip`, averaged with the mirror's)."""
        logits = self._forward(batch)
        if self.flip:
            logits = (logits + self._forward(batch.flip(-1)).flip(-1)) / 2
        return logits

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            batch = batch.to(self.device, memory_format=torch.channels_last)
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            with torch.autocast("cuda", dtype=dtype):
                return self.model(batch).float()
        return self.model(batch.contiguous(memory_format=torch.channels_last))

    def predict_slices(
        self,
        hu: np.ndarray,
        work_size: tuple[int, int],
        progress: Progress | None = None,
    ) -> np.ndarray:
        """Labels (uint8, like `hu`) for (n, H, W) HU slices resampled to `work_size` for the net.

        `work_size` is the (rows, cols) the network sees; it is padded to the U-Net's size
        divisor with air (-1024 HU) and the padding cropped from the logits afterwards.
        """
        n, rows, cols = hu.shape
        divisor = self.model.size_divisor
        work_rows, work_cols = work_size
        pad_rows = _padded(work_rows, divisor) - work_rows
        pad_cols = _padded(work_cols, divisor) - work_cols
        labels = np.empty((n, rows, cols), np.uint8)
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                chunk = torch.from_numpy(np.ascontiguousarray(hu[start : start + self.batch_size], dtype=np.float32))[
                    :, None
                ]
                if (work_rows, work_cols) != (rows, cols):
                    chunk = F.interpolate(
                        chunk, size=(work_rows, work_cols), mode="area" if work_rows <= rows else "bilinear"
                    )
                chunk = F.pad(chunk, (0, pad_cols, 0, pad_rows), value=-1024.0)
                logits = self._logits(normalise_hu(chunk))[..., :work_rows, :work_cols]
                # channels-last: argmax over 4 adjacent values per pixel. Over the channels of
                # an NCHW tensor it took 0.19 s per 4 slices of 512 x 512 on our CPU, vs 0.008 s.
                logits = F.interpolate(
                    logits.float().cpu().contiguous(memory_format=torch.channels_last),
                    size=(rows, cols),
                    mode="bilinear",
                    align_corners=False,
                )
                labels[start : start + len(chunk)] = logits.argmax(1).to(torch.uint8).numpy()
                if progress:
                    progress(min(start + self.batch_size, n), n)
        return labels

    def segment(self, volume: CTVolume, progress: Progress | None = None) -> np.ndarray:
        """Label map (uint8 0 bg, 1 lung, 2 GGO, 3 consolidation) shaped like `volume.hu`.

        Slice-wise predictions, then two clean-ups a 2D model needs: nothing outside the
        patient's body (`clear_outside_body`: the air between back and table looks like lung
        to it), and only the lungs' 3D connected components (`keep_lung_components`: air in
        the bowel does too).
        """
        _, row_mm, col_mm = volume.spacing
        rows, cols = volume.hu.shape[1:]
        work = (max(16, round(rows * row_mm / TRAINING_PIXEL_MM)), max(16, round(cols * col_mm / TRAINING_PIXEL_MM)))
        labels = self.predict_slices(volume.hu, work, progress)
        if not self.postprocess:
            return labels
        clear_outside_body(labels, volume.hu, volume.spacing)
        return keep_lung_components(labels)

    def segment_image(self, hu: np.ndarray) -> np.ndarray:
        """Labels for one 2D image of unknown pixel size (a thorax-cropped export).

        Such images are scaled so that their longer side is 256 px, the size a
        thorax-tight field of view has at the training pixel size.
        """
        rows, cols = hu.shape
        scale = EXPORT_LONG_SIDE_PX / max(rows, cols)
        work = (max(16, round(rows * scale)), max(16, round(cols * scale)))
        return self.predict_slices(hu[None].astype(np.float32), work)[0]
