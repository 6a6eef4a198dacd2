"""Small helpers shared by data, training and the CLI."""
