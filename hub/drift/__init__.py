"""hub/drift: fleet drift and label-free performance, the pure core (docs/drift.md)."""
