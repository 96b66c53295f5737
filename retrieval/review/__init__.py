"""The review page (``search.py --serve``): answers shown for a person to check, corrections
logged and applied to the gallery, and confirmed photos brought to the next training run."""
