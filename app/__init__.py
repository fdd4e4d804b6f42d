"""gamma-lab app."""
