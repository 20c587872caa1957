"""Analyses of a run: metrics, the UMAP map, nearest neighbours, attention maps, comparison of two runs."""
