"""Evaluate candidates vs the API baseline with confidence intervals and a gate."""
