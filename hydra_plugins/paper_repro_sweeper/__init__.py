"""Hydra plugin of this repository: the ``list`` sweeper (see ``list_sweeper.py``)."""
