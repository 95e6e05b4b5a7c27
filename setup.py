"""bert_rec: Chinese-BERT behaviour understanding and recommendation.

install_requires comes from requirements.txt. TensorFlow is an extra, so that `pip install .`
keeps a TensorFlow already installed (e.g. a GPU build): `pip install ".[cpu]"` adds
tensorflow-cpu, `".[gpu]"` tensorflow[and-cuda] (requirements-cpu.txt / -gpu.txt). bert4keras and
tf-keras (requirements-nodeps.txt) must be installed with --no-deps (their declared requirements
conflict with TensorFlow 2.21), so they cannot be listed here; without them `import bert_rec`
stops with one line saying what to run. `make install` installs all of it.
"""
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_requirements(name):
    """Requirement lines of a requirements file, comments stripped."""
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        lines = (line.split("#", 1)[0].strip() for line in f)
        return [line for line in lines if line]


setup(
    name="bert_rec",
    version="0.1.0",
    description="Understand users' behaviour with a Chinese BERT and turn it into recommendations",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["bert_rec", "bert_rec.*"]),
    package_data={"bert_rec": ["resources/*"]},
    install_requires=[r for r in read_requirements("requirements.txt") if not r.startswith("pytest")],
    extras_require={"cpu": read_requirements("requirements-cpu.txt"),
                    "gpu": read_requirements("requirements-gpu.txt"), "test": ["pytest"]},
    entry_points={"console_scripts": ["bert-rec=bert_rec.cli:main"]},
)
