"""Data manifests, the local cache, tile collections and feature files."""
