"""Model layer: the embedding network, where its pretrained weights come from, the ArcFace head.

Import the submodules directly (``retrieval.model.embedder`` ...): this file stays empty so
that importing the package loads no torch.
"""
