"""Model weights: preparation (download, convert) and bundled chat templates."""
