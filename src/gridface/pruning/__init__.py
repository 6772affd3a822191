"""Structured pruning: TAO-style importance on torch-pruning, reports and sweep charts."""
