"""edgefleet simulator."""
