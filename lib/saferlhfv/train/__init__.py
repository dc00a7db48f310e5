"""saferlhfv.train."""
