"""The data stage's filter chain: one small module per filter (`data.filters`, pipeline/config/filters.py)."""
