"""Training: Phase 1 (fixed-point contexts), context caches, Phase 2 (next token), one run end to end."""
