"""Benchmarks for condor_annex: `python -m bench` (see docs/PERFORMANCE.md).

Every benchmark compares against a baseline measured in the same run and prints the ratio.
"""
