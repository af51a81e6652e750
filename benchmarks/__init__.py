"""Benchmarks that print measured numbers; each compares against a baseline in the same run."""
