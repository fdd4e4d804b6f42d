"""gamma-lab tasks."""
