"""Metrics: classification fairness (with bootstrap CIs), robustness, grounding and causal metrics."""
