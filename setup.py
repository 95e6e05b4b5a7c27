"""bert_rec: Chinese-BERT behaviour understanding and recommendation.

install_requires comes from requirements.txt. bert4keras and tf-keras (requirements-nodeps.txt)
must be installed with --no-deps (their declared requirements conflict with TensorFlow 2.21), so
they are not listed here: `make install` installs both files, then this package.
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
    extras_require={"test": ["pytest"]},
    entry_points={"console_scripts": ["bert-rec=bert_rec.cli:main"]},
)
