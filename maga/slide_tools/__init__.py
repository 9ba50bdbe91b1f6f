"""Slide tools: per-magnification pyramidal TIFF writing, tiling (`maga tile`), test-slide generation."""
