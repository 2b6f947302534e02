"""Data on disk: cohort tables, gene families, WSI bags, splits, preprocessing, the demo cohort."""
