"""Screenshots TensorBoard as a user sees it: the real server on loopback, drawn by headless Chromium.

    python -m experiments.tensorboard_screenshot --logdir=runs --out=docs/tensorboard.png

Starts `tensorboard --logdir LOGDIR` (default flags, 127.0.0.1, a free port), waits until it serves
the runs' scalars, renders its scalars dashboard filtered to `--tag_filter` with Chromium, and stops
the server (and its data server). Needs Debian's `chromium`: on a Debian machine where it is missing
and this runs as root, it is installed with apt-get first; elsewhere the script says what to install.
Exit status: 0 written, 2 bad input (no runs under --logdir, no Chromium).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse

from absl import app
from absl import flags

from experiments import tensorboard_server

_LOGDIR = flags.DEFINE_string("logdir", "runs", "The study root: one folder per run.")
_OUT = flags.DEFINE_string("out", "docs/tensorboard.png", "The PNG to write.")
_TAG_FILTER = flags.DEFINE_string(
    "tag_filter", "evaluation/sparse_categorical_accuracy|train/sparse_categorical_accuracy|"
    "communication/aggregated_mibit$",
    "A regular expression over tags: the charts to show.")
_WIDTH = flags.DEFINE_integer("width", 1600, "Window width in pixels.")
_HEIGHT = flags.DEFINE_integer("height", 460, "Window height in pixels.")

_CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                   "--no-first-run", "--disable-background-networking",
                   "--disable-component-update", "--disable-sync", "--hide-scrollbars")


class ScreenshotError(Exception):
  """Something the user can fix: no runs, no browser."""


def _chromium() -> str:
  """Returns Chromium's path, installing Debian's package when possible."""
  found = shutil.which("chromium")
  if found:
    return found
  if os.geteuid() == 0 and shutil.which("apt-get"):
    print("Installing Debian's chromium (once)...", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True,
                   stdout=subprocess.DEVNULL, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    found = shutil.which("chromium")
  if not found:
    raise ScreenshotError("Chromium is not installed: run `sudo apt-get install chromium` (Debian) "
                          "and try again.")
  return found


def screenshot(logdir: str, out: str, tag_filter: str, width: int, height: int) -> list[str]:
  """Renders TensorBoard over `logdir` into `out`; returns the runs it showed."""
  if not os.path.isdir(logdir):
    raise ScreenshotError(f"{logdir} is not a folder; pass the study root as --logdir.")
  chromium = _chromium()
  server = tensorboard_server.TensorBoardServer(logdir)
  try:
    try:
      tags = server.wait_for(
          lambda s: (lambda tags: tags if tags and all(tags.values()) else None)(
              s.get("data/plugin/scalars/tags")), "the runs' scalars")
    except tensorboard_server.TensorBoardNotReadyError:
      raise ScreenshotError(f"TensorBoard showed no scalars under {logdir}: is it a study root "
                            "holding run folders?") from None
    fragment = urllib.parse.urlencode({"tagFilter": tag_filter, "_smoothingWeight": "0"})
    url = f"http://127.0.0.1:{server.port}/?darkMode=false&forceSvg=true#scalars&{fragment}"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
      subprocess.run(
          [chromium, *_CHROMIUM_FLAGS, f"--user-data-dir={profile}",
           f"--window-size={width},{height}", "--virtual-time-budget=20000",
           f"--screenshot={os.path.abspath(out)}", url],
          check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180)
  finally:
    server.stop()
  return sorted(tags)


def main(argv):
  del argv
  try:
    runs = screenshot(_LOGDIR.value, _OUT.value, _TAG_FILTER.value, _WIDTH.value, _HEIGHT.value)
  except ScreenshotError as error:
    print(f"tensorboard_screenshot: error: {error}", file=sys.stderr)
    return 2
  print(f"Wrote {_OUT.value}: TensorBoard over {_LOGDIR.value} (runs {', '.join(runs)}).")
  return 0


if __name__ == "__main__":
  app.run(main)
