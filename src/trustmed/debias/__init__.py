"""trustmed.debias."""
