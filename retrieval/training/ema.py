"""The exponential moving average of a model's weights, for validation and the saved model."""

from __future__ import annotations

import torch


def build_ema(model: torch.nn.Module, decay: float):
    """An exponential moving average of ``model``'s weights (None when ``decay`` is 0).

    Validation and the saved best model use the average: it smooths the noise of small P x K
    batches. Buffers are averaged too (frozen BatchNorm statistics stay as they are).
    """
    if decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
