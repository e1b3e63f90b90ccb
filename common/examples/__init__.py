"""Worked examples of the core; `digits` is the template for a new supervised package."""
