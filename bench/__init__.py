"""Benchmarks: run.py (speed), fairness.py (a flood), slowclients.py (slow connections)."""
