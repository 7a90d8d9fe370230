"""Infrastructure shared by every stage: atomic file writes, logging, configfile validation."""
