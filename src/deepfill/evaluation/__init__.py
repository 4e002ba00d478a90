"""Scoring: per-image metrics, the evaluation against the classical baselines, result tables."""
