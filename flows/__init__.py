"""Prefect flows: wiring of the tasks/ steps, nothing else."""
