"""Pictures of a run (SPEC 6): embedding map, per-class AP, retrieval grid, confusion pairs.

Kept apart from evaluation so that computing metrics never needs matplotlib, and the figures
can be redrawn from saved results.
"""
