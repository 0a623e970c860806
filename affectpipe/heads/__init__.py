"""heads stage."""
