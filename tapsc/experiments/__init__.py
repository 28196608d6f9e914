"""Experiments on top of the stages, never inside them: sweeps, margin analysis and plots."""
