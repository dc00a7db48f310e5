"""BeaverTails-V data: schema and validation, the hub loader, and the BeaverTails-V-mini world."""
