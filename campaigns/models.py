"""Campaign records (filled in by the campaigns issue)."""
