"""Cambrian: evolve a small host LLM through small, gated, reversible generations."""
