"""Small shared pieces: seeding and RNG state, atomic file writes."""
