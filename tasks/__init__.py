"""Pipeline steps as plain functions (no Prefect needed to run or test them); flows/ wraps
them as Prefect tasks."""
