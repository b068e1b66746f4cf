"""Debugging aids that are off unless asked for (no daemon imports this on its normal path)."""
