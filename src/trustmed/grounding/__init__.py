"""trustmed.grounding."""
