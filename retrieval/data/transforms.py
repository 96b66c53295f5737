"""The train and eval image transforms of SPEC 1.7, built in one place.

Training, evaluation and search must agree on resizing and normalisation, or embeddings of the
same image drift between them; every caller gets its transform from here.

Split in two on purpose: the PIL part runs in data-loader workers and ends in a uint8 tensor;
the model's normalisation (``retrieval.input_norm``) runs on the batch, on the model's device
(``to_model_input``). Moving
uint8 instead of float32 through shared memory, pinning and the host-to-device copy cuts those
bytes by four, which is what keeps a fast GPU fed (bench/train_throughput.py).
"""

from __future__ import annotations

import torch
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from retrieval.data.images import NEUTRAL_BACKGROUND
from retrieval.errors import InputError
from retrieval.input_norm import InputNorm


def _check_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise InputError(f"--image_size must be a positive integer, got {image_size!r}")
    return image_size


def build_train_transform(
    image_size: int = 480, *, hflip: bool = True, random_erasing: float = 0.0
) -> T.Compose:
    """PIL RGB image -> (3, image_size, image_size) uint8 tensor, randomly augmented.

    No vertical flip; ``hflip=False`` for animals whose left and right flanks differ. Rotation
    corners are filled with ``NEUTRAL_BACKGROUND``, one fixed neutral colour.
    ``random_erasing``: the probability of blanking one random rectangle (2-33% of the image)
    with the same colour, so that no single patch can carry an identity (person re-ID's
    random erasing, Zhong et al. 2020); 0 (the default) leaves it out.
    """
    size = _check_size(image_size)
    if not 0.0 <= random_erasing <= 1.0:
        raise InputError(f"--random_erasing is a probability in 0..1, got {random_erasing!r}")
    steps = [T.RandomResizedCrop(size, scale=(0.8, 1.0), interpolation=InterpolationMode.BICUBIC)]
    if hflip:
        steps.append(T.RandomHorizontalFlip(0.5))
    steps += [
        T.RandomRotation(15, interpolation=InterpolationMode.BILINEAR, fill=NEUTRAL_BACKGROUND),
        T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.1, hue=0.05),
        T.PILToTensor(),
    ]
    if random_erasing:
        steps.append(T.RandomErasing(random_erasing, value=NEUTRAL_BACKGROUND))
    return T.Compose(steps)


def build_eval_transform(image_size: int = 480) -> T.Compose:
    """PIL RGB image -> (3, image_size, image_size) uint8 tensor, deterministic.

    The shorter side is resized to ``image_size`` (aspect kept), then centre-cropped.
    """
    size = _check_size(image_size)
    return T.Compose(
        [
            T.Resize(size, interpolation=InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.PILToTensor(),
        ]
    )


def to_model_input(
    images: torch.Tensor, *, device: torch.device, channels_last: bool, norm: InputNorm
) -> torch.Tensor:
    """A uint8 batch from a data loader -> the model's normalised float32 input."""
    images = norm.apply(images.to(device, non_blocking=True))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return images.contiguous(memory_format=memory_format)
