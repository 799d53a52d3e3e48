"""Readers, writers and generators of gaze data (the only place h5py is imported)."""
