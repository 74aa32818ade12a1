"""trustmed.distill."""
