"""Executes experiments/quickstart.ipynb headless (nbclient, a real IPython kernel) with the smoke preset.

Any error in any cell fails the test; the notebook's own asserts check the interrupt (exit status 75), the
bit-identical resume and the comparison; this test checks what the notebook showed.
"""

import os

from absl.testing import absltest
import nbclient
import nbformat

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NOTEBOOK = os.path.join(_REPO_ROOT, "experiments", "quickstart.ipynb")


def _text(output) -> str:
  if output.output_type == "stream":
    return output.text
  return output.get("data", {}).get("text/markdown", "") + output.get("data", {}).get("text/plain", "")


class QuickstartNotebookTest(absltest.TestCase):

  def test_notebook_runs_headless_on_synthetic_data(self):
    root = self.create_tempdir().full_path
    notebook = nbformat.read(_NOTEBOOK, as_version=4)
    environment = {"QUICKSTART_ROOT": root, "QUICKSTART_PRESET": "smoke", "PYTHONPATH": _REPO_ROOT}
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)  # The kernel, and the runners it starts, inherit these.
    try:
      nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
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
    self.assertIn("exit status 75", text)
    self.assertIn("The resumed run is bit-identical to the uninterrupted one.", text)
    self.assertIn("| fedavg |", text)
    self.assertIn("| compression |", text)
    pngs = [output for output in outputs if "image/png" in output.get("data", {})]
    self.assertLen(pngs, 2)
    self.assertEqual(sorted(os.listdir(root)),
                     ["comparison", "compression", "fedavg", "fedavg_uninterrupted"])
    self.assertEqual(sorted(os.listdir(os.path.join(root, "comparison"))),
                     ["accuracy_vs_aggregated_bits.png", "accuracy_vs_round.png", "comparison.md"])


if __name__ == "__main__":
  absltest.main()
