"""Data on disk: cohort tables, gene families, MRI manifests (``mri``), WSI bags, splits,
preprocessing, the demo cohorts (``synthetic``: genomics + WSI; ``synthetic_mri``: MRI + WSI)."""
