"""Installation: without the stack pip cannot declare, import and commands stop with one line."""

import os
import re
import site
import subprocess
import sys

import pytest

import bert_rec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pins(name):
    """{distribution: version} pinned in a requirements file of the repository."""
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return dict(re.findall(r"^([A-Za-z0-9_.\[\]-]+)==([^\s#]+)", f.read(), re.M))


def test_the_message_names_the_pinned_versions():
    nodeps, cpu, gpu = (_pins(f"requirements-{n}.txt") for n in ("nodeps", "cpu", "gpu"))
    assert f"tf-keras=={nodeps['tf-keras']}" in bert_rec.NODEPS_INSTALL
    assert f"bert4keras=={nodeps['bert4keras']}" in bert_rec.NODEPS_INSTALL
    assert f"tensorflow-cpu=={cpu['tensorflow-cpu']}" in bert_rec.TENSORFLOW_INSTALL
    assert f"tensorflow[and-cuda]=={gpu['tensorflow[and-cuda]']}" in bert_rec.TENSORFLOW_INSTALL
    assert "tensorflow" not in " ".join(_pins("requirements.txt"))  # pip install . keeps yours


def _without(tmp_path, hidden):
    """A site-packages copy (symlinks) lacking the ``hidden`` top-level names."""
    packages = tmp_path / "site"
    packages.mkdir()
    for folder in site.getsitepackages():
        for entry in os.listdir(folder):
            stem = re.split(r"[-.]", entry)[0].lower()
            if stem in hidden or entry.endswith(".pth") or (packages / entry).exists():
                continue
            (packages / entry).symlink_to(os.path.join(folder, entry))
    return str(packages)


def _run(tmp_path, hidden, *argv):
    """Python without site-packages, seeing a copy of them without ``hidden``, and this repo."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, _without(tmp_path, hidden)])}
    return subprocess.run([sys.executable, "-S", *argv], capture_output=True, text=True,
                          env=env, timeout=300, cwd=str(tmp_path))


@pytest.mark.parametrize("argv", [
    ["-c", "import bert_rec"],
    ["-m", "bert_rec.cli", "recommend", "--help"],
    ["-c", "from bert_rec.cli import main; main()"],  # what the bert-rec console script runs
    [os.path.join(ROOT, "scripts", "train.py"), "--help"],
])
def test_missing_bert4keras_and_tf_keras_is_one_line(tmp_path, argv):
    result = _run(tmp_path, {"bert4keras", "tf_keras"}, *argv)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("bert_rec: error: tf_keras, bert4keras not installed; run: "
                                    "pip install --no-deps tf-keras==2.21.0 bert4keras==0.11.5 ")


def test_missing_tensorflow_too_and_the_error_is_an_import_error(tmp_path):
    code = ("try:\n    import bert_rec\nexcept ImportError as e:\n"
            "    print(type(e).__name__, e.name, str(e))")
    result = _run(tmp_path, {"bert4keras", "tf_keras", "tensorflow", "tensorflow_cpu"},
                  "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("MissingDependencyError tensorflow tensorflow, tf_keras, "
                                    "bert4keras not installed; run: pip install tensorflow-cpu")
    assert "&& pip install --no-deps tf-keras" in result.stdout


def test_with_the_stack_the_check_passes(tmp_path):
    result = _run(tmp_path, set(), "-c", "import bert_rec, sys; print('tensorflow' in "
                                         "sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"  # the check only looked, imported nothing
