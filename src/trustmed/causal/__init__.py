"""trustmed.causal."""
