"""Installs `skipinit`: a JAX/Flax framework reproducing De & Smith 2020 (SkipInit)."""
from setuptools import find_packages, setup

setup(
    name="skipinit",
    version="0.1.0",
    description="Reproduce 'Batch Normalization Biases Residual Blocks Towards the Identity "
    "Function in Deep Networks' (SkipInit) and its follow-ups in JAX/Flax.",
    packages=find_packages(include=["skipinit", "skipinit.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.8",
        "ml-collections>=1.0",
        "absl-py",
        "orbax-checkpoint>=0.12",
        "numpy",
        "pillow",
        "matplotlib",
        # Pure-Python TensorBoard event writer: gives TensorBoard logs without TensorFlow.
        "tensorboardX",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-xdist", "submitit"],  # submitit: the SLURM executor test
        "imagenet": ["tensorflow-cpu", "tensorflow-datasets", "importlib_resources"],
        "slurm": ["submitit"],
    },
)
