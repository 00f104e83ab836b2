"""Loaders for the data the examples, tests and benchmarks use."""
