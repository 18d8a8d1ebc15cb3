"""The residualized temporal SAE: linear dynamics, input encodings, the TopK SAE and its trainer. Imports no diffusers."""
