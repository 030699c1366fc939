"""Benchmarks behind ``evdit bench``: kernels (attention alone) and denoising steps (full transformers).

They are scripts, not tests: each prints a table and writes JSON with the device, torch version and date.
"""
