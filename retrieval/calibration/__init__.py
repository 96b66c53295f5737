"""Choices made on the val split and stored with the gallery: the decision rule, the confidence
calibrator and the thresholds. Serving (:mod:`retrieval.serving`) only reads what this writes.
"""
