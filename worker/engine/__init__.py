"""The segmentation engine: pre/post-processing, OpenVINO runtime, embedding cache, strategies, routing."""
