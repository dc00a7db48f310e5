"""saferlhfv.algorithms."""
