"""Pure Flax model definitions (no I/O, no globals)."""
