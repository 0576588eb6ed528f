"""builders: the fused model -> ONNX, its int8/fp16 variants, FLOPs, and the bundle export that ties them."""
