"""Core of the image-classifier error-analysis tool: data sets, models, analysis runs.

Nothing here imports streamlit; TensorFlow, Keras and umap are imported only
inside the functions that need them, so reading runs stays fast.
"""

__version__ = "0.1.0"
