"""saferlhfv.models."""
