"""Fixtures of the real-graph tests (defined in graph.py, which the tests also import helpers from)."""
from graph import demo_bag, demo_pairs, domain, probe, processes, torch_models  # noqa: F401
