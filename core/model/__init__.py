"""Models: the format registry (Keras, SavedModel, ONNX), safe loading, training recipes and the input check."""
