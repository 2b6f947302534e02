"""Explanations: per-patch / per-gene-family attributions and how they are drawn.

Modules (imported explicitly, so that importing this package stays cheap):

- ``deref.explain.heatmap`` -- ``render_heatmap`` (patch scores over a WSI thumbnail or a blank
  canvas, with the pixel -> patch map), ``pixel_to_patch``, ``read_thumbnail``.
- ``deref.explain.patches`` -- ``top_k_patches`` (read at full resolution through OpenSlide)
  and ``patch_gallery_image``.
"""
