"""`export` (a checkpoint as a self-checked ONNX model) and `serve` (a web page and an HTTP API), with the predictors
they share."""
