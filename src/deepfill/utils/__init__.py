"""Shared helpers: one-line user errors, atomic files, checkpoint reading, config checks, devices."""
