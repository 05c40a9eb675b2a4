"""Whole Landsat scenes: reading C2 L2 products, sliding-window inference, georeferenced outputs.

``sensors`` names the Landsat sensors and their band numbers, ``c2l2`` reads scenes, ``dem``
reprojects a DEM per window, ``windows`` lays the window grid and its blending weights, ``stitch``
accumulates window predictions strip by strip, ``outputs`` writes the COGs, polygons and summary,
``mapping`` ties them to a trained run, ``timeseries`` runs many scenes and ``synthetic`` writes
C2 L2-style test scenes.
"""
