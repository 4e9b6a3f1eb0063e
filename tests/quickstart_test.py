"""Executes experiments/quickstart.ipynb headless (nbclient, real IPython kernels) with the smoke preset,
on both of its paths: in-process on the project's Python 3.11 kernel, and through the command line on a
Python 3.12 kernel that cannot import TensorFlow Federated (hosted Colab's situation), pointed at this
machine's Python 3.11 with the project instead of downloading one.

Any error in any cell fails the test; the notebook's own asserts check the interrupt, the bit-identical
resume and the comparison; this test checks what the notebook showed.
"""

import glob
import os
import subprocess
import sys

from absl.testing import absltest
import nbclient
import nbformat

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NOTEBOOK = os.path.join(_REPO_ROOT, "experiments", "quickstart.ipynb")
# A real interpreter, not pyenv's shim (which runs only the versions pyenv has selected).
_PYTHON_312 = (sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")))
               or ["/usr/bin/python3.12"])[-1]


def _text(output) -> str:
  if output.output_type == "stream":
    return output.text
  return output.get("data", {}).get("text/markdown", "") + output.get("data", {}).get("text/plain", "")


class QuickstartNotebookTest(absltest.TestCase):

  def _execute(self, kernel_name, environment):
    """Runs the notebook on `kernel_name` with `environment` added; returns (its text, its root)."""
    root = self.create_tempdir().full_path
    notebook = nbformat.read(_NOTEBOOK, as_version=4)
    environment = {"QUICKSTART_ROOT": root, "QUICKSTART_PRESET": "smoke", **environment}
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)  # The kernel, and the runners it starts, inherit these.
    try:
      nbclient.NotebookClient(notebook, timeout=600, kernel_name=kernel_name,
                              resources={"metadata": {"path": os.path.join(_REPO_ROOT, "experiments")}}
                              ).execute()
    finally:
      for key, value in saved.items():
        if value is None:
          os.environ.pop(key)
        else:
          os.environ[key] = value
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    self.assertEmpty([output for output in outputs if output.output_type == "error"])
    text = "".join(_text(output) for output in outputs)
    self.assertIn("The resumed run is bit-identical to the uninterrupted one.", text)
    self.assertIn("| fedavg |", text)
    self.assertIn("| compression |", text)
    self.assertLen([output for output in outputs if "image/png" in output.get("data", {})], 2)
    self.assertEqual(sorted(os.listdir(root)),
                     ["comparison", "compression", "fedavg", "fedavg_uninterrupted"])
    self.assertEqual(sorted(os.listdir(os.path.join(root, "comparison"))),
                     ["accuracy_vs_aggregated_bits.png", "accuracy_vs_round.png", "comparison.md"])
    return text

  def test_in_process_on_the_projects_python_311_kernel(self):
    text = self._execute("python3", {"PYTHONPATH": _REPO_ROOT})
    self.assertIn("Path: in-process (this kernel is Python 3.11", text)
    self.assertRegex(text, r"Interrupted: stopped by SIGINT after round [23] \(saved\)\.")
    self.assertNotIn("exit status", text)  # No runner was started.

  def test_command_line_on_a_python_312_kernel_without_tensorflow_federated(self):
    if not os.path.exists(_PYTHON_312):
      self.skipTest(f"no Python 3.12 at {_PYTHON_312} to make the kernel with")
    folder = self.create_tempdir().full_path
    kernel_env = os.path.join(folder, "py312")
    subprocess.run([_PYTHON_312, "-m", "venv", kernel_env], check=True)
    kernel_python = os.path.join(kernel_env, "bin", "python")
    subprocess.run([kernel_python, "-m", "pip", "install", "--quiet", "ipykernel"], check=True,
                   capture_output=True)
    self.assertNotEqual(subprocess.run([kernel_python, "-c", "import tensorflow_federated"],
                                       capture_output=True).returncode, 0)
    subprocess.run([kernel_python, "-m", "ipykernel", "install", "--prefix", folder,
                    "--name", "py312"], check=True, capture_output=True)
    text = self._execute("py312", {"JUPYTER_PATH": os.path.join(folder, "share", "jupyter"),
                                   "TFF_RESUME_PYTHON": sys.executable, "PYTHONPATH": ""})
    self.assertIn(f"Path: command line through {sys.executable} (this kernel is Python 3.12", text)
    self.assertIn("exit status 75", text)


if __name__ == "__main__":
  absltest.main()
