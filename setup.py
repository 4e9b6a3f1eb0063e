"""Packaging for tff_resume.

The pinned stack is installed from requirements.lock by `make install` (TFF 0.87.0's own pin on
jaxlib 0.4.14 cannot be resolved from the package index, so the lock is installed without resolution).
"""

import setuptools

setuptools.setup(
    name="tff_resume",
    version="0.1.0",
    description="Resumable, bit-exact federated learning experiments on TensorFlow Federated.",
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(include=["tff_resume", "tff_resume.*"]),
    install_requires=[
        "tensorflow==2.14.1",
        "tensorflow-federated==0.87.0",
        "tensorflow-model-optimization==0.7.5",
        "tensorboard==2.14.1",
        "numpy>=1.25,<1.26",
        "absl-py>=1,<2",
        "ml-collections==0.1.1",
    ],
    entry_points={"console_scripts": ["tff-resume=tff_resume.cli:main"]},
)
