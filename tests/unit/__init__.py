"""Tests that need no FUSE kernel."""
