"""Tests of the kernels package (references, Triton under the interpreter, GPU)."""
