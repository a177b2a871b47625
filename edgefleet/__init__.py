"""edgefleet: the command, and what agent/ and hub/ share with the OS."""
