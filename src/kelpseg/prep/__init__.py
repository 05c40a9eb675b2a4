"""Data preparation stages: sample plots, AOI grouping, EDA, band statistics, CV split."""
