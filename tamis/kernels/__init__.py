"""Hand-written CuPy kernels, each next to the NumPy reference with the same signature.

Every module here keeps its CUDA source as a module-level string, compiles it lazily on
first use (so importing the module never imports CuPy) and caches the compiled module.
"""
