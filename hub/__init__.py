"""edgefleet hub."""
