"""Model plugins, the full-image pass and correctness at tile borders, on real images."""
