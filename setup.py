"""node-transformer: a fairseq plugin (--user-dir node_transformer) and the generic odeint_ext."""

from setuptools import find_packages, setup

setup(
    name="node-transformer",
    version="0.1.0",
    description="Transformer encoder/decoder as Neural ODE blocks, as a fairseq plugin",
    packages=find_packages(include=["node_transformer", "node_transformer.*", "odeint_ext", "odeint_ext.*",
                                    "experiments", "experiments.*"]),
    python_requires=">=3.8",
    # torch and fairseq are installed by scripts/setup.sh in the right order (see docs/install.md):
    # fairseq's sdist imports torch at build time, so pip must not resolve them here.
    install_requires=["torchdiffeq==0.2.5", "numpy"],
    extras_require={"test": ["pytest"]},
)
