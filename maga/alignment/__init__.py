"""Cached MAGA students and what measures them: the feature-quality probe, the selection of defaults,
slide similarity."""
