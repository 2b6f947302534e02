"""Explanations: per-patch / per-gene-family attributions, cohort views, and how they are drawn.

Modules (imported explicitly, so that importing this package stays cheap):

- ``deref.explain.attribution`` -- ``explain_patient`` (one patient's attributions of the risk
  and of each decoupled feature, over patches and gene families: ``PatientAttribution``) and
  ``attribute_inputs`` (the same on raw tensors).
- ``deref.explain.cache`` -- ``ExplanationCache``, the on-disk cache in ``RUN/explanations/``,
  and ``safe_name``, the one file-name-safe form of a case id.
- ``deref.explain.cohort_views`` -- decoupled features and gates of a cohort, gate summaries,
  t-SNE, linear CKA, the top patches across patients.
- ``deref.explain.heatmap`` -- ``render_heatmap`` (patch scores over a WSI thumbnail or a blank
  canvas, with the pixel -> patch map), ``pixel_to_patch`` (the thumbnail comes from
  ``deref.slides.read_thumbnail``).
- ``deref.explain.mri`` -- ``explain_voxels`` (an MRI run's voxel attributions of the risk and
  of each decoupled feature through the frozen 3D backbone: ``VoxelAttribution``), ``mri_inputs``.
- ``deref.explain.patches`` -- ``patch_geometry``, ``top_k_patches`` (read at full resolution
  through OpenSlide) and ``patch_gallery_image``.
"""
