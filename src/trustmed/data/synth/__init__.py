"""trustmed.data.synth."""
