"""Code that only the benchmarks use (run ``python benchmarks/<name>.py`` from the repository root)."""
