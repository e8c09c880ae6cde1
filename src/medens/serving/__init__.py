"""Serving: the KServe predictor and its deployment."""
