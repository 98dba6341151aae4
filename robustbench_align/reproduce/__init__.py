"""Reproductions of published claims with the suite's own models, losses and metrics."""
