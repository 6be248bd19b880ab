"""Image banks: sources, features, kNN graphs and coresets (ImageBeagle)."""
