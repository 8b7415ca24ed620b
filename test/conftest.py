"""Test-wide settings. PyTorch's OpenMP threads spin-wait by default, which makes the suite many
times slower whenever anything else uses the two cores (see bisenet_ros.runtime); set before any
test module imports torch."""
from bisenet_ros.runtime import prefer_passive_openmp

prefer_passive_openmp()
