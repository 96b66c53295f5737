"""The query side that answers: evidence from one search, decision rules, calibrated confidence
and the one ``decide``.

Nothing here chooses a setting: rules, calibrators and thresholds arrive as plain stored values
(chosen on the val split by :mod:`retrieval.calibration`) and are only applied.
"""
