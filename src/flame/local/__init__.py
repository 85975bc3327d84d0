"""Local federations on emulated FLAME nodes."""
