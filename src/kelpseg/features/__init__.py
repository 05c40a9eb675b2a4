"""Band order helpers, the spectral-index registry, masking and normalisation."""
