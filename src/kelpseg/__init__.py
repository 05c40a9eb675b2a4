"""kelpseg: map giant-kelp canopy in Landsat tiles (Kelp Wanted competition layout)."""

__version__ = "0.1.0"
