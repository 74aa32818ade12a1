"""trustmed.data."""
