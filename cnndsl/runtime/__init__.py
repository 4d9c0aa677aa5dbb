"""The runtime: a shaped IR lowered to a plan and run forward and backward on a backend.

`lower` turns the IR into a flat `Plan` (kernel choices, fusion, liveness);
`executor` runs it (weights, buffers, gradients, freezing); `backends` are
numpy and cupy; `workers` spread chunked kernel work over threads.
"""
