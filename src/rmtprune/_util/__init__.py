"""Plumbing shared by every package: error types and messages, parameter checks, atomic file
writes and output checks, progress bars.  Nothing here knows about spectra or layers."""
