"""gamma-lab storage."""
