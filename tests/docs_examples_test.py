"""Runs every example of the docs that is marked runnable, so that the docs stay true.

A fenced `bash` or `python` block is runnable when the line before it is `<!-- runnable -->`, or
`<!-- runnable: expect "TEXT" -->` when its output must also contain TEXT. The runnable blocks of one
page run in order in one temporary folder that looks like a checkout (`.venv`, `configs/` and
`experiments/` linked into it), so that they run as written: bash blocks with `bash -euo pipefail`,
python blocks with the venv's Python. Each must exit with status 0. Only cheap examples on the smoke
preset are marked: this file's budget is 60 s.
"""

import glob
import os
import re
import subprocess
import sys

from absl.testing import absltest

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PAGES = sorted(glob.glob(os.path.join(_REPO_ROOT, "docs", "*.md")))
_MARKER = re.compile(r'^<!-- runnable(?:: expect "(?P<expect>[^"]*)")? -->$')
_FENCE = re.compile(r"^```(?P<language>\w*)$")
_LANGUAGES = ("bash", "python")
_TIMEOUT_SECONDS = 120


def runnable_blocks(markdown: str) -> list[tuple[int, str, str, str]]:
  """(line of the marker, language, code, expected text or "") of every block marked runnable.

  Raises:
    ValueError: a marker not followed by a fenced bash or python block, or a block left open.
  """
  lines = markdown.split("\n")
  blocks = []
  for index, line in enumerate(lines):
    marker = _MARKER.match(line.strip())
    if not marker:
      continue
    fence = _FENCE.match(lines[index + 1]) if index + 1 < len(lines) else None
    if not fence or fence["language"] not in _LANGUAGES:
      raise ValueError(f"line {index + 1}: a runnable marker must precede a ```bash or ```python "
                       "block.")
    try:
      end = lines.index("```", index + 2)
    except ValueError:
      raise ValueError(f"line {index + 1}: the runnable block is never closed.") from None
    blocks.append((index + 1, fence["language"], "\n".join(lines[index + 2:end]) + "\n",
                   marker["expect"] or ""))
  return blocks


def _checkout_like_folder(folder: str) -> None:
  """Links what the examples name (`.venv`, `configs`, `experiments`) into `folder`."""
  # sys.prefix is the venv whose Python runs this test (pytest from .venv, or Bazel's python3 with
  # .venv/bin first on PATH), so `.venv/bin/python` in an example is the one under test.
  os.symlink(sys.prefix, os.path.join(folder, ".venv"))
  for name in ("configs", "experiments"):
    os.symlink(os.path.join(_REPO_ROOT, name), os.path.join(folder, name))


class RunnableBlocksTest(absltest.TestCase):

  def test_finds_marked_blocks_only_with_their_expected_text(self):
    markdown = "\n".join([
        "```bash", "echo not marked", "```",
        "<!-- runnable -->", "```bash", "echo one", "echo two", "```",
        '<!-- runnable: expect "3" -->', "```python", "print(1 + 2)", "```"])
    self.assertEqual(runnable_blocks(markdown), [
        (4, "bash", "echo one\necho two\n", ""), (9, "python", "print(1 + 2)\n", "3")])

  def test_marker_before_another_block_is_refused(self):
    with self.assertRaisesRegex(ValueError, "line 1: a runnable marker must precede"):
      runnable_blocks("<!-- runnable -->\n```text\nhello\n```")

  def test_unclosed_block_is_refused(self):
    with self.assertRaisesRegex(ValueError, "line 1: the runnable block is never closed"):
      runnable_blocks("<!-- runnable -->\n```bash\necho hello")


class DocsExamplesTest(absltest.TestCase):

  def test_every_runnable_example_exits_0_with_its_expected_output(self):
    ran = 0
    for page in _PAGES:
      with open(page) as page_file:
        blocks = runnable_blocks(page_file.read())
      if not blocks:
        continue
      folder = self.create_tempdir().full_path
      _checkout_like_folder(folder)
      environment = {**os.environ, "PYTHONPATH": _REPO_ROOT,
                     "PATH": f"{os.path.join(sys.prefix, 'bin')}{os.pathsep}{os.environ['PATH']}"}
      for line, language, code, expect in blocks:
        where = f"{os.path.relpath(page, _REPO_ROOT)}:{line}"
        command = (["bash", "-euo", "pipefail", "-c", code] if language == "bash"
                   else [os.path.join(sys.prefix, "bin", "python"), "-c", code])
        result = subprocess.run(command, cwd=folder, env=environment, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, timeout=_TIMEOUT_SECONDS,
                                check=False)
        self.assertEqual(result.returncode, 0, f"{where} exited {result.returncode}:\n{result.stdout}")
        self.assertIn(expect, result.stdout, f"{where} did not print {expect!r}:\n{result.stdout}")
        ran += 1
    self.assertGreater(ran, 0, "no runnable example found in docs/*.md")


if __name__ == "__main__":
  absltest.main()
