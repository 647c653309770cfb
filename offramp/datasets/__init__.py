"""Task data vendored with offramp (see each folder's README.md for source, licence and citation)."""
