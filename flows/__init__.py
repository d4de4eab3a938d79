"""The top floor: Prefect flows that wire the tasks/ steps, their cached steps, and the `cambrian` command line."""
