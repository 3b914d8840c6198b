"""A deterministic simulator around unmodified consensus cores: one seed, a simulated clock, a
lossy network, in-memory ledgers and checkers. A plain loop, not Trio (Trio's scheduler is
randomised)."""
