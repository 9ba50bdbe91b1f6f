"""Experiments of the book: MIL on slides mosaicked from held-out real tiles (`tile_slides`, `mil`)."""
