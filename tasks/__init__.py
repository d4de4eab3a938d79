"""Pipeline steps: plain functions, each with a thin Prefect task as its entry point."""
