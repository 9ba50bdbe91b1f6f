"""Telepathology: an upload-and-diagnose HTTP service, its client, and the timing study."""
